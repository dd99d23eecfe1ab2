"""Settings of the gateway: environment first, `.env` second.

``IMAGES_BASE`` is the seed's name for where the images-service listens; the rest start with GATEWAY_.
"""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.api_keys import KEY_PATTERN, parse_api_keys

DEFAULT_IMAGES_BASE = "http://127.0.0.1:8089"
"""The images-service's own default bind (the seed's port)."""

DEFAULT_UPSTREAM_TIMEOUT_S = 30.0
"""Read/write/pool timeout towards the images-service; its routes only enqueue and look up, so 30 s is
generous. Server-sent event streams are exempt (see ``proxy.upstream_timeout``)."""

DEFAULT_CONNECT_TIMEOUT_S = 3.0
"""A local service accepts a connection in milliseconds; waiting longer only delays the 502."""


class GatewaySettings(BaseSettings):
    # Inputs stay out of validation errors: a refused GATEWAY_API_KEYS must not be printed whole.
    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", populate_by_name=True, hide_input_in_errors=True
    )

    images_base: str = Field(default=DEFAULT_IMAGES_BASE, alias="IMAGES_BASE")
    """Where the images-service listens: ``/api/images/x`` is forwarded to ``{IMAGES_BASE}/api/images/x``."""
    host: str = Field(default="127.0.0.1", alias="GATEWAY_HOST")
    port: int = Field(default=8080, ge=1, le=65535, alias="GATEWAY_PORT")
    upstream_timeout_s: float = Field(
        default=DEFAULT_UPSTREAM_TIMEOUT_S, gt=0, alias="GATEWAY_UPSTREAM_TIMEOUT"
    )
    connect_timeout_s: float = Field(default=DEFAULT_CONNECT_TIMEOUT_S, gt=0, alias="GATEWAY_CONNECT_TIMEOUT")
    log_level: str = Field(default="INFO", alias="GATEWAY_LOG_LEVEL")
    api_keys: str | None = Field(default=None, alias="GATEWAY_API_KEYS")
    """Keys clients must send (``X-API-Key`` or ``Authorization: Bearer``), same syntax as
    IMAGES_API_KEYS; a ``:tier`` suffix is accepted and ignored here. Unset: the gateway is open."""
    images_api_key: str | None = Field(default=None, alias="IMAGES_API_KEY")
    """The gateway's own key for the images-service, sent instead of the client's credential. Unset:
    the client's ``X-API-Key``/``Authorization`` pass through unchanged (per-client quotas)."""

    @field_validator("api_keys")
    @classmethod
    def _keys_parse(cls, value: str | None) -> str | None:
        parse_api_keys(value, "pro")  # raises naming the bad entry by position, never by its text
        return value

    @field_validator("images_api_key")
    @classmethod
    def _one_key(cls, value: str | None) -> str | None:
        if value and not KEY_PATTERN.match(value):
            raise ValueError("IMAGES_API_KEY must be one key: printable ASCII without spaces or commas")
        return value or None

    @field_validator("images_base")
    @classmethod
    def _http_base(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("IMAGES_BASE must be an http(s) URL such as http://127.0.0.1:8089")
        # One canonical form so `{base}/api/images/...` never doubles the slash.
        return value.rstrip("/")

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"}:
            raise ValueError("GATEWAY_LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level
