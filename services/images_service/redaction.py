"""Secrets out of diagnostics: settings shown by their environment names with secret values
replaced, credentials inside URLs hidden, and literal secrets scrubbed from free text."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import BaseModel

REDACTED = "[redacted]"

SECRET_NAME = re.compile(r"key|secret|token|password|passwd|auth|credential", re.IGNORECASE)
"""A setting (or URL query parameter) whose name matches holds a secret; its value is never shown."""

MIN_SCRUB_CHARS = 4
"""Secret values shorter than this are not scrubbed from free text (they would mangle ordinary words);
they are still redacted wherever they appear as a setting's value."""


FIELD_SECRET_NAME = re.compile(
    r"api[_-]?key|token|passw(or)?d|secret|authorization|credential", re.IGNORECASE
)
"""A request field named like this is blanked in sidecars. Narrower than SECRET_NAME: a stored
request has fields such as `png_key` that are not secrets."""


URL_FIELDS = frozenset({"webhook"})
"""Request fields holding a URL that may carry a credential in its user info or query (a webhook's
`?token=`): kept, for diagnostics, with every query value and the user info hidden."""


def redact(value: Any) -> Any:
    """A copy of `value` with every field named like a secret blanked, at any depth."""
    if isinstance(value, dict):
        return {key: _redact_field(key, item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact(item) for item in value]
    return value


def _redact_field(key: Any, item: Any) -> Any:
    if isinstance(key, str) and FIELD_SECRET_NAME.search(key):
        return REDACTED
    if key in URL_FIELDS and isinstance(item, str):
        return redact_url(item, all_query=True)
    return redact(item)


def is_secret_name(name: str) -> bool:
    return bool(SECRET_NAME.search(name))


def redact_url(value: str, *, all_query: bool = False) -> str:
    """Hide the password (or a lone token) in a URL's userinfo and secret-named query parameters
    (every query value with `all_query`); anything that is not a URL with such parts comes back
    unchanged."""
    try:
        parts = urlsplit(value)
    except ValueError:
        return value
    if not parts.scheme or not parts.netloc and not parts.query:
        return value
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, has_password, _ = userinfo.partition(":")
        # `user:pass@` keeps the user name (an ACL user is not a secret); a lone `token@` is the secret.
        netloc = f"{user}:{REDACTED}@{hostport}" if has_password else f"{REDACTED}@{hostport}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if all_query or any(is_secret_name(name) for name, _ in pairs):
            query = urlencode(
                [(name, REDACTED if all_query or is_secret_name(name) else val) for name, val in pairs]
            )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_value(name: str, value: Any) -> Any:
    if value is None or value == "":
        return value
    if is_secret_name(name):
        return REDACTED
    if isinstance(value, str):
        return redact_url(value)
    return value


def settings_summary(*models: BaseModel) -> dict[str, Any]:
    """Every setting by its environment name (the alias), secrets redacted."""
    summary: dict[str, Any] = {}
    for model in models:
        for attr, info in type(model).model_fields.items():
            name = info.alias or attr.upper()
            value = getattr(model, attr)
            summary[name] = redact_value(name, str(value) if isinstance(value, Path) else value)
    return summary


def secret_values(*models: BaseModel) -> set[str]:
    """The literal secrets these settings hold, so they can be scrubbed from any free text
    (error messages quote URLs and sometimes more)."""
    found: set[str] = set()
    for model in models:
        for attr, info in type(model).model_fields.items():
            name = info.alias or attr.upper()
            value = getattr(model, attr)
            if not isinstance(value, str) or not value:
                continue
            if is_secret_name(name):
                found.add(value)
                # A `user:password` auth string: the password alone may turn up in an error text.
                found.add(value.partition(":")[2])
            found.update(_url_secrets(value))
    return {value for value in found if len(value) >= MIN_SCRUB_CHARS}


def _url_secrets(value: str) -> set[str]:
    try:
        parts = urlsplit(value)
    except ValueError:
        return set()
    found = set()
    if parts.password:
        found.add(parts.password)
    elif parts.username and "@" in parts.netloc and ":" not in parts.netloc.rpartition("@")[0]:
        found.add(parts.username)
    found.update(val for name, val in parse_qsl(parts.query) if is_secret_name(name) and val)
    return found


def scrub(text: str, secrets: Iterable[str]) -> str:
    # Longest first, so a secret that contains another is replaced whole.
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text
