"""Settings of the gateway: environment first, `.env` second.

``IMAGES_BASE`` is the seed's name for where the images-service listens; the rest start with GATEWAY_.
"""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_IMAGES_BASE = "http://127.0.0.1:8089"
"""The images-service's own default bind (the seed's port)."""

DEFAULT_UPSTREAM_TIMEOUT_S = 30.0
"""Read/write/pool timeout towards the images-service; its routes only enqueue and look up, so 30 s is
generous. Server-sent event streams are exempt (see ``proxy.upstream_timeout``)."""

DEFAULT_CONNECT_TIMEOUT_S = 3.0
"""A local service accepts a connection in milliseconds; waiting longer only delays the 502."""


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    images_base: str = Field(default=DEFAULT_IMAGES_BASE, alias="IMAGES_BASE")
    """Where the images-service listens: ``/api/images/x`` is forwarded to ``{IMAGES_BASE}/api/images/x``."""
    host: str = Field(default="127.0.0.1", alias="GATEWAY_HOST")
    port: int = Field(default=8080, ge=1, le=65535, alias="GATEWAY_PORT")
    upstream_timeout_s: float = Field(
        default=DEFAULT_UPSTREAM_TIMEOUT_S, gt=0, alias="GATEWAY_UPSTREAM_TIMEOUT"
    )
    connect_timeout_s: float = Field(default=DEFAULT_CONNECT_TIMEOUT_S, gt=0, alias="GATEWAY_CONNECT_TIMEOUT")
    log_level: str = Field(default="INFO", alias="GATEWAY_LOG_LEVEL")

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
