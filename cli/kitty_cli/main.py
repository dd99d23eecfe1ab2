"""The `kitty-cli` click group: global options, the client's lifetime, and the one place errors are printed.

Any `ApiError` (or an unexpected exception) ends as ``Error [CODE]: message`` plus remediation lines on
stderr and exit code 1, never a traceback (set KITTY_DEBUG=1 to see one).
"""

from __future__ import annotations

import os
from typing import Any

import click

from services.contracts import ApiError, ErrorCode, ErrorInfo

from . import __version__
from .completion import completion
from .context import DEFAULT_GATEWAY_URL, EXIT_FAILED, PROG_NAME, CliState, state_of
from .images import COMMANDS, images
from .render import print_error

DEBUG_ENV = "KITTY_DEBUG"
"""Set to show the traceback of an unexpected error instead of its one-line summary."""


class KittyGroup(click.Group):
    """A group whose commands fail with one readable line, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ApiError as exc:
            print_error(exc.info)
            ctx.exit(EXIT_FAILED)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:
            if os.environ.get(DEBUG_ENV):
                raise
            print_error(
                ErrorInfo(
                    code=ErrorCode.INTERNAL_ERROR,
                    message=f"unexpected {type(exc).__name__}: {exc}",
                    remediation=[f"Run again with {DEBUG_ENV}=1 to see the traceback, and report it."],
                )
            )
            ctx.exit(EXIT_FAILED)


@click.group(cls=KittyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--url",
    envvar="KITTY_GATEWAY_URL",
    default=DEFAULT_GATEWAY_URL,
    show_default=True,
    help="The gateway's base URL (KITTY_GATEWAY_URL).",
)
@click.option("--api-key", envvar="KITTY_API_KEY", help="API key sent as X-API-Key (KITTY_API_KEY).")
@click.version_option(__version__, prog_name=PROG_NAME)
@click.pass_context
def cli(ctx: click.Context, url: str, api_key: str | None) -> None:
    """KITTY Images from the terminal: generate, list and select images through the gateway.

    Data (keys, tables, JSON, imageRefs) goes to stdout; progress and messages go to stderr.
    Every `images.NAME` command is also `images NAME`.

    
    Examples:
      kitty-cli images.generate "a watercolor fox in the snow" --out fox.png
      kitty-cli images.latest --limit 12
      kitty-cli images.select 1
      kitty-cli --url http://gpu-box:8080 images models
      eval "$(kitty-cli completion bash)"       # Tab completion
    """
    state: CliState = state_of(ctx)
    state.base_url = url
    state.api_key = api_key or None
    ctx.call_on_close(state.close)


for command in (*COMMANDS, images, completion):
    cli.add_command(command)


if __name__ == "__main__":
    cli()
