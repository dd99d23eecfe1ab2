"""Shell completion: the `completion` command that prints click's script for bash, zsh or fish, and the
completers that offer image numbers, keys, model and preset names from the gateway while a user types."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import click
from click.shell_completion import CompletionItem, get_completion_class

from services.contracts import ImagesClient

from .context import DEFAULT_GATEWAY_URL, PROG_NAME, CliState
from .render import excerpt

COMPLETE_VAR = "_KITTY_CLI_COMPLETE"
"""The variable click's completion protocol reads (``_{PROG_NAME}_COMPLETE``, upper-cased)."""

SHELLS = ("bash", "zsh", "fish")
"""Shells click writes completion scripts for."""

COMPLETION_TIMEOUT_S = 2.0
"""A completer asks the gateway at most this long: a slow answer is worse than no suggestions."""

COMPLETION_LIMIT = 36
"""How many of the newest images a completer offers (the gallery's first page)."""


def completion_client(ctx: click.Context) -> ImagesClient:
    """A client for the gateway named on the command line being completed.

    The group's callback does not run while completing, so the URL and key come from the parsed
    root parameters; a `CliState` handed in as ``obj`` (tests) brings its own factory.
    """
    params = ctx.find_root().params
    url = params.get("url") or DEFAULT_GATEWAY_URL
    api_key = params.get("api_key") or None
    state = ctx.find_object(CliState)
    if state is not None:
        return state.make_client(url, api_key)
    return ImagesClient(url, api_key, timeout=COMPLETION_TIMEOUT_S)


def _offered(
    ctx: click.Context, suggest: Callable[[ImagesClient], list[CompletionItem]]
) -> list[CompletionItem]:
    # Completion must never print an error into the user's prompt line: no gateway means no hints.
    try:
        with completion_client(ctx) as client:
            return suggest(client)
    except Exception:
        return []


def complete_image_ref(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Numbers of the newest images (with their prompts as help) when the word is a number so far,
    otherwise their keys."""

    def suggest(client: ImagesClient) -> list[CompletionItem]:
        items = client.latest(limit=COMPLETION_LIMIT).items
        if incomplete.isdigit() or not incomplete:
            numbered = [(str(i), item) for i, item in enumerate(items, 1)]
            return [
                CompletionItem(n, help=excerpt(item.prompt))
                for n, item in numbered
                if n.startswith(incomplete)
            ]
        return [
            CompletionItem(item.key, help=excerpt(item.prompt))
            for item in items
            if item.key.startswith(incomplete)
        ]

    return _offered(ctx, suggest)


def complete_model(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Registered model names, the default one marked in the help text."""

    def suggest(client: ImagesClient) -> list[CompletionItem]:
        view = client.models()
        return [
            CompletionItem(m.name, help="default" if m.name == view.default else (m.description or ""))
            for m in view.models
            if m.name.startswith(incomplete)
        ]

    return _offered(ctx, suggest)


def complete_preset(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """The service's preset names, their titles as help."""

    def suggest(client: ImagesClient) -> list[CompletionItem]:
        return [
            CompletionItem(p.name, help=p.title)
            for p in client.presets().presets
            if p.name.startswith(incomplete)
        ]

    return _offered(ctx, suggest)


def shell_of_environment() -> str:
    """The login shell's name from ``$SHELL`` when click supports it, else bash."""
    name = Path(os.environ.get("SHELL", "")).name
    return name if name in SHELLS else "bash"


@click.command("completion", short_help="Print the shell completion script (bash, zsh, fish).")
@click.argument("shell", type=click.Choice(SHELLS), required=False)
@click.pass_context
def completion(ctx: click.Context, shell: str | None) -> None:
    """Print the completion script for SHELL (default: the one in $SHELL). Commands, options,
    image numbers and keys, model and preset names then complete with Tab.

    \b
    Examples:
      eval "$(kitty-cli completion bash)"          # add to ~/.bashrc
      eval "$(kitty-cli completion zsh)"           # add to ~/.zshrc
      kitty-cli completion fish > ~/.config/fish/completions/kitty-cli.fish

    \b
    The same script straight from click's protocol:
      eval "$(_KITTY_CLI_COMPLETE=bash_source kitty-cli)"
    """
    shell = shell or shell_of_environment()
    completer_class = get_completion_class(shell)
    assert completer_class is not None  # every name in SHELLS is one of click's built-ins
    root = ctx.find_root().command
    click.echo(completer_class(root, {}, PROG_NAME, COMPLETE_VAR).source())
