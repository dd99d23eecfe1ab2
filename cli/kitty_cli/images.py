"""The `images.*` commands in one place, and the `images` group that offers the same command objects
under short names (`kitty-cli images generate` is `kitty-cli images.generate`)."""

from __future__ import annotations

import click

from .catalog import engines, models, presets
from .context import EXIT_FAILED, EXIT_INTERRUPTED
from .gallery import delete, latest, select
from .jobs import cancel, generate, jobs, rerun, retry, upscale
from .queue import front, pause, resume

__all__ = ["COMMANDS", "EXIT_FAILED", "EXIT_INTERRUPTED", "images"]

COMMANDS = (
    generate,
    rerun,
    upscale,
    latest,
    select,
    jobs,
    retry,
    cancel,
    pause,
    resume,
    front,
    models,
    presets,
    engines,
    delete,
)
"""Every images command, registered on the root group as ``images.NAME``."""

GROUP_PREFIX = "images."
"""What the dotted names start with; the group's names are the rest."""


@click.group(
    "images",
    short_help="Every images.NAME command as `images NAME`.",
)
def images() -> None:
    """The images commands, also spelled `kitty-cli images.NAME`.

    \b
    Examples:
      kitty-cli images generate "a lighthouse at dusk" --out lighthouse.png
      kitty-cli images latest --limit 5
      kitty-cli images select 1
      kitty-cli images rerun 1 --new-seed
      kitty-cli images upscale 1 --scale 4
    """


for command in COMMANDS:
    images.add_command(command, name=(command.name or "").removeprefix(GROUP_PREFIX))
