"""What every command shares: where the gateway is, the API key, how the `ImagesClient` is made, and
the exit codes.

The factory lives in ``ctx.obj`` so tests hand in a client backed by ``httpx.MockTransport``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import click

from services.contracts import ImagesClient
from services.contracts.client import POLL_INTERVAL_S

DEFAULT_GATEWAY_URL = "http://127.0.0.1:8080"
"""The gateway's default bind (GATEWAY_HOST:GATEWAY_PORT)."""

PROG_NAME = "kitty-cli"
"""The installed command's name, which shell completion scripts are written for."""

EXIT_FAILED = 1
"""The job or the call failed; the reason is on stderr."""

EXIT_INTERRUPTED = 130
"""Ctrl-C while waiting (128 + SIGINT), as shells report it."""

ClientFactory = Callable[[str, str | None], ImagesClient]
"""Makes a client from (base URL, API key)."""


def make_client(base_url: str, api_key: str | None) -> ImagesClient:
    return ImagesClient(base_url, api_key)


@dataclass
class CliState:
    make_client: ClientFactory = make_client
    poll_interval: float = POLL_INTERVAL_S
    """Seconds between job polls while waiting (tests set 0)."""
    base_url: str = DEFAULT_GATEWAY_URL
    api_key: str | None = None
    _client: ImagesClient | None = field(default=None, repr=False)

    def client(self) -> ImagesClient:
        """The one client of this invocation, made on first use."""
        if self._client is None:
            self._client = self.make_client(self.base_url, self.api_key)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def state_of(ctx: click.Context) -> CliState:
    return ctx.ensure_object(CliState)
