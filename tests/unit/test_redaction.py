"""Diagnostics never show a secret: secret-named settings, passwords inside URLs (userinfo and
query), and the literal values wherever they turn up in free text."""

from __future__ import annotations

from services.images_service.redaction import (
    REDACTED,
    redact_url,
    scrub,
    secret_values,
    settings_summary,
)
from services.images_service.settings import Settings


def test_passwords_in_urls_are_hidden_and_the_rest_kept() -> None:
    assert redact_url("redis://:pw@redis:6379/0") == f"redis://:{REDACTED}@redis:6379/0"
    assert redact_url("redis://kitty:pw@redis:6379/0") == f"redis://kitty:{REDACTED}@redis:6379/0"
    assert redact_url("https://token@host/x") == f"https://{REDACTED}@host/x"
    assert redact_url("redis://redis:6379/0?password=pw&db=1") == (
        "redis://redis:6379/0?password=%5Bredacted%5D&db=1"
    )
    assert redact_url("http://127.0.0.1:8188") == "http://127.0.0.1:8188"
    assert redact_url("images/") == "images/"


def test_settings_are_shown_by_their_names_with_secrets_redacted() -> None:
    settings = Settings(  # type: ignore[call-arg]
        S3_ACCESS_KEY="AKIAEXAMPLE",
        S3_SECRET_KEY="supersecret",
        A1111_API_AUTH="kitty:a1111pass",
        IMAGES_SIGNING_KEY="signing-key",
        REDIS_URL="redis://:redispass@redis:6379/0",
        S3_BUCKET="kitty-artifacts",
        HF_HOME=None,
        _env_file=None,
    )
    summary = settings_summary(settings)
    for name in ("S3_ACCESS_KEY", "S3_SECRET_KEY", "A1111_API_AUTH", "IMAGES_SIGNING_KEY"):
        assert summary[name] == REDACTED
    assert summary["REDIS_URL"] == f"redis://:{REDACTED}@redis:6379/0"
    assert summary["S3_BUCKET"] == "kitty-artifacts"
    assert summary["IMAGES_S3_CREATE_BUCKET"] is True
    assert summary["HF_HOME"] is None  # unset stays visibly unset


def test_literal_secrets_are_scrubbed_from_free_text() -> None:
    settings = Settings(  # type: ignore[call-arg]
        S3_SECRET_KEY="supersecret",
        A1111_API_AUTH="kitty:a1111pass",
        REDIS_URL="redis://:redispass@r/0",
        _env_file=None,
    )
    secrets = secret_values(settings)
    assert {"supersecret", "kitty:a1111pass", "a1111pass", "redispass"} <= secrets
    assert "kitty" not in secrets  # a user name is not a secret, and scrubbing it would mangle text
    text = "login kitty:a1111pass failed; redis said redispass; key supersecret"
    assert scrub(text, secrets) == f"login {REDACTED} failed; redis said {REDACTED}; key {REDACTED}"
