"""The API-key rules both processes share: the ``key:tier`` syntax, matching, exempt paths, and the
warning for a process exposed without keys."""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

import pytest

from services.common.api_keys import (
    ApiKey,
    KeyRing,
    can_see,
    is_exempt_path,
    key_id_of,
    parse_api_keys,
    presented_key,
    warn_if_exposed_without_keys,
    without_query_key,
)


def test_keys_parse_with_optional_tiers() -> None:
    keys = parse_api_keys(" alpha , beta:free,gamma:enterprise,,delta:pro ", default_tier="pro")
    assert [(k.key_id, k.tier) for k in keys] == [
        (key_id_of("alpha"), "pro"),
        (key_id_of("beta"), "free"),
        (key_id_of("gamma"), "enterprise"),
        (key_id_of("delta"), "pro"),
    ]
    assert parse_api_keys("x", default_tier="free")[0].tier == "free"
    assert parse_api_keys(None, default_tier="pro") == parse_api_keys("", default_tier="pro") == []


def test_a_key_with_a_colon_needs_an_explicit_tier() -> None:
    assert parse_api_keys("a:b:free", "pro")[0].key_id == key_id_of("a:b")
    with pytest.raises(ValueError, match="unknown tier"):
        parse_api_keys("a:b", "pro")


@pytest.mark.parametrize("value", ["ok,has space", "ok,caf\xe9", "same:free,same:pro"])
def test_bad_key_lists_are_refused_by_position_not_text(value: str) -> None:
    with pytest.raises(ValueError, match="#2") as caught:
        parse_api_keys(value, "pro")
    assert "space" not in str(caught.value).replace("spaces", "")
    assert "caf" not in str(caught.value)


def test_the_ring_matches_exactly_and_shows_no_key() -> None:
    ring = KeyRing.parse("alpha,beta:free")
    assert ring.match("beta") is not None and ring.match("beta").tier == "free"  # type: ignore[union-attr]
    for wrong in ("", "alph", "alphaa", "ALPHA", None, "x" * 10_000, "\u20ac", "caf\xe9", "\udcff"):
        assert ring.match(wrong) is None
    assert "alpha" not in repr(ring.keys) and key_id_of("alpha") in repr(ring.keys)
    assert len(key_id_of("alpha")) == 12


def test_the_ring_of_no_keys_is_open() -> None:
    assert not KeyRing.parse(None).is_enabled
    assert KeyRing.parse("k").is_enabled


def scope(headers: dict[str, str], query: str = "") -> dict[str, object]:
    return {
        "headers": [(k.lower().encode(), v.encode("latin-1")) for k, v in headers.items()],
        "query_string": query.encode(),
    }


def test_the_first_credential_present_is_the_one_judged() -> None:
    both = scope({"X-API-Key": "a", "Authorization": "Bearer b"}, "api_key=c")
    assert presented_key(both, allow_query=True) == "a"  # type: ignore[arg-type]
    assert presented_key(scope({"Authorization": "Bearer  b "}), allow_query=False) == "b"  # type: ignore[arg-type]
    assert presented_key(scope({}, "api_key=c"), allow_query=True) == "c"  # type: ignore[arg-type]
    assert presented_key(scope({}, "api_key=c"), allow_query=False) is None  # type: ignore[arg-type]
    assert presented_key(scope({"Authorization": "Token b"}), allow_query=False) is None  # type: ignore[arg-type]


def test_the_query_key_is_removed_and_nothing_else() -> None:
    assert without_query_key(b"a=1&api_key=k&b=x%20y") == b"a=1&b=x+y"
    assert without_query_key(b"a=1&b=2") == b"a=1&b=2"
    assert without_query_key(b"api_key=k") == b""


@pytest.mark.parametrize(
    ("path", "exempt"),
    [
        ("/healthz", True),
        ("/readyz", True),
        ("/metrics", True),
        ("/api/images/files/images/x.png", True),
        ("/api/images/files/../generate", False),
        ("/api/images/files/./x", False),
        ("/api/images/latest", False),
        ("/healthz/x", False),
        ("/openapi.json", False),
    ],
)
def test_exempt_paths(path: str, exempt: bool) -> None:
    assert is_exempt_path(path) is exempt


@pytest.mark.parametrize(
    ("host", "keys", "warned"),
    [
        ("0.0.0.0", None, True),
        ("192.168.1.5", None, True),
        ("::", None, True),
        ("127.0.0.1", None, False),
        ("localhost", None, False),
        ("::1", None, False),
        ("0.0.0.0", "k", False),
    ],
)
def test_an_exposed_process_without_keys_is_warned_about(
    caplog: pytest.LogCaptureFixture, host: str, keys: str | None, warned: bool
) -> None:
    logger = logging.getLogger("kitty.test")
    with caplog.at_level(logging.WARNING, logger="kitty.test"):
        assert warn_if_exposed_without_keys(logger, host, KeyRing.parse(keys), "IMAGES_API_KEYS") is warned
    assert bool(caplog.records) is warned
    if warned:
        assert "IMAGES_API_KEYS" in caplog.records[0].getMessage()


@pytest.mark.parametrize(
    ("module", "settings_env", "variable"),
    [
        ("services.gateway.app", {"GATEWAY_API_KEYS": "k"}, "GATEWAY_API_KEYS"),
        ("services.images_service.app", {"IMAGES_API_KEYS": "k"}, "IMAGES_API_KEYS"),
    ],
)
def test_each_process_warns_at_startup_when_exposed_without_keys(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    module: str,
    settings_env: dict[str, str],
    variable: str,
) -> None:
    served: list[tuple[str, int]] = []
    monkeypatch.setattr(f"{module}.serve_http", lambda app, host, port: served.append((host, port)))
    monkeypatch.setattr(f"{module}.configure_logging", lambda level: None)  # keep pytest's handlers
    for name in ("GATEWAY_API_KEYS", "IMAGES_API_KEYS", "IMAGES_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(Path(__file__).parent)  # no .env here
    main = importlib.import_module(module).main
    if module.endswith("images_service.app"):
        from services.images_service import settings as images_settings

        images_settings.get_settings.cache_clear()
        monkeypatch.setattr(f"{module}.get_settings", lambda: images_settings.Settings())

    with caplog.at_level(logging.WARNING):
        main(["--host", "0.0.0.0", "--port", "1"])
        main(["--host", "127.0.0.1", "--port", "1"])
    for name, value in settings_env.items():
        monkeypatch.setenv(name, value)
    with caplog.at_level(logging.WARNING):
        main(["--host", "0.0.0.0", "--port", "1"])

    warnings = [r.getMessage() for r in caplog.records if "without API keys" in r.getMessage()]
    assert len(warnings) == 1 and variable in warnings[0] and "0.0.0.0" in warnings[0]
    assert served == [("0.0.0.0", 1), ("127.0.0.1", 1), ("0.0.0.0", 1)]


def test_admin_is_a_role_with_the_enterprise_tiers_limits() -> None:
    [plain, admin] = parse_api_keys("k-plain-1:free,k-admin-1:admin", "pro")
    assert (plain.tier, plain.is_admin) == ("free", False)
    assert (admin.tier, admin.is_admin) == ("enterprise", True)
    with pytest.raises(ValueError, match="different tiers"):
        parse_api_keys("k-admin-1:admin,k-admin-1:enterprise", "pro")


def test_who_sees_what() -> None:
    alice, admin = ApiKey.of("alice-key", "pro"), ApiKey.of("root-key", "enterprise", is_admin=True)
    assert can_see(None, None) and can_see(None, alice.key_id)  # keys off: everything
    assert can_see(alice, alice.key_id)
    assert not can_see(alice, ApiKey.of("bob-key", "pro").key_id)
    assert not can_see(alice, None)  # made while keys were off: the admin's to see
    assert can_see(admin, alice.key_id) and can_see(admin, None)
