"""Logging for every KITTY process: JSON lines on stderr, configured once, each line carrying the
request id and job id of the work it belongs to (from context variables), secrets never logged."""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
"""The X-Request-ID of the HTTP request (or job) being handled."""

job_id_var: ContextVar[str | None] = ContextVar("job_id", default=None)
"""The job being run (worker) or addressed (API)."""

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "color_message",
}

QUERY_API_KEY = re.compile(r"([?&]api_key=)[^&\s\"'\\]+", re.IGNORECASE)
"""An API key in a URL's query string (event streams accept one); scrubbed from every line written,
whatever logged it: a safety net behind never logging query strings in the first place."""

NOISY_LOGGERS = {"httpx": logging.WARNING, "httpcore": logging.WARNING}
"""At INFO httpx logs every URL, including download signatures in query strings."""


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name, var in (("request_id", request_id_var), ("job_id", job_id_var)):
            value = var.get()
            if value is not None:
                entry[name] = value
        entry.update({k: v for k, v in record.__dict__.items() if k not in _RESERVED})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return QUERY_API_KEY.sub(r"\1[redacted]", json.dumps(entry, default=str))


def configure_logging(level: str = "INFO") -> None:
    root = logging.getLogger()
    for name, noisy_level in NOISY_LOGGERS.items():
        logging.getLogger(name).setLevel(noisy_level)
    if getattr(root, "_kitty_configured", False):
        root.setLevel(level.upper())
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root._kitty_configured = True  # type: ignore[attr-defined]


@contextmanager
def log_context(*, request_id: str | None = None, job_id: str | None = None) -> Iterator[None]:
    """Tag every log line inside with these ids."""
    tokens = [(request_id_var, request_id_var.set(request_id)), (job_id_var, job_id_var.set(job_id))]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)
