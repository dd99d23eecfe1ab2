"""The guided-generation options of `images.generate`: one ControlNet input (`--control-*`), an
IP-Adapter reference picture (`--reference-*`, `--consent`) and the hires fix (`--hires*`), and the
request fields they make (`controls`, `reference_image`, `reference_weight`, `consent`, `hires`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from services.contracts import CONTROL_TYPES
from services.contracts.schema import MAX_HIRES_SCALE

from .completion import complete_image_ref

Command = TypeVar("Command", bound=Callable[..., Any])

CONTROL_SETTINGS = ("control_weight", "control_start", "control_end")
"""Options that tune the control input: each is its `ControlInput` field without the prefix."""

HIRES_SETTINGS = ("hires_scale", "hires_strength")
"""Options that tune the hires fix: each is its `HiresFix` field without the prefix."""


OPTION_OF_FIELD = {
    "controls.0": "--control-start/--control-end",
    **{
        f"controls.0.{name.removeprefix('control_')}": f"--{name.replace('_', '-')}"
        for name in CONTROL_SETTINGS
    },
    **{f"hires.{name.removeprefix('hires_')}": f"--{name.replace('_', '-')}" for name in HIRES_SETTINGS},
    "reference_weight": "--reference-weight",
}
"""A refused request field (pydantic's location, dotted) → the option that set it, for error lines."""


def guide_options(command: Command) -> Command:
    """Add the guided-generation options to a command that builds a `GenerateRequest`."""
    for option in reversed(
        (
            click.option(
                "--control-image",
                metavar="FILE|N|KEY",
                shell_complete=complete_image_ref,
                help="Steer the composition with this picture (ControlNet): a PNG/JPEG/WebP file "
                "(uploaded first), image N of images.latest, or a stored key. Needs --control-type.",
            ),
            click.option(
                "--control-type",
                type=click.Choice(CONTROL_TYPES),
                help="What --control-image is: canny (edges, computed from a plain picture), depth "
                "(a depth map), pose (an OpenPose skeleton) or scribble (a line sketch).",
            ),
            click.option(
                "--control-weight",
                type=float,
                help="How strongly --control-image steers, 0-2 (default 1; 0 ignores it).",
            ),
            click.option(
                "--control-start",
                type=float,
                help="The fraction of the steps at which --control-image starts to act, 0-1 (default 0).",
            ),
            click.option(
                "--control-end",
                type=float,
                help="The fraction of the steps after which --control-image stops acting, 0-1 (default 1).",
            ),
            click.option(
                "--reference-image",
                metavar="FILE|N|KEY",
                shell_complete=complete_image_ref,
                help="A picture whose look (or face) the image takes after (IP-Adapter): a file "
                "(uploaded first), image N of images.latest, or a stored key.",
            ),
            click.option(
                "--reference-weight",
                type=float,
                help="How strongly --reference-image steers, 0-2 (default 0.6; 0 ignores it).",
            ),
            click.option(
                "--consent",
                is_flag=True,
                default=None,
                help="State that the person in --reference-image agreed to its use "
                "(the identity-lock preset refuses without it).",
            ),
            click.option(
                "--hires",
                is_flag=True,
                default=None,
                help="Hires fix: render at the size asked, upscale, then redraw the detail at the "
                "larger size (the image comes out --hires-scale times larger).",
            ),
            click.option(
                "--hires-scale",
                type=float,
                help=f"How much larger the hires fix makes the image, 1-{MAX_HIRES_SCALE:g} (default 2); "
                "implies --hires.",
            ),
            click.option(
                "--hires-strength",
                type=float,
                help="How much the hires fix redraws, 0-1 (default 0.5: 0 keeps the upscaled picture, "
                "1 ignores it); implies --hires.",
            ),
        )
    ):
        command = option(command)
    return command


def needs(option: str, needed: str, why: str = "") -> click.UsageError:
    return click.UsageError(f"--{option} needs --{needed}{why}.")


def guide_fields(options: dict[str, Any]) -> dict[str, Any]:
    """`options` with the guide options replaced by the request fields they make; an unset option is
    left out, so the service applies its default. A setting without its picture is refused here."""
    fields = dict(options)
    control_image = fields.pop("control_image", None)
    control_type = fields.pop("control_type", None)
    settings = {name: fields.pop(name, None) for name in CONTROL_SETTINGS}
    if control_image is None:
        named = {"control_type": control_type, **settings}
        given = [name for name, value in named.items() if value is not None]
        if given:
            raise needs(given[0].replace("_", "-"), "control-image", " (the picture that steers)")
    else:
        if control_type is None:
            raise needs("control-image", "control-type", f": one of {', '.join(CONTROL_TYPES)}")
        control = {"image": control_image, "type": control_type}
        control |= {
            name.removeprefix("control_"): value for name, value in settings.items() if value is not None
        }
        fields["controls"] = [control]
    if fields.get("reference_image") is None and fields.get("reference_weight") is not None:
        raise needs("reference-weight", "reference-image")
    hires = {name.removeprefix("hires_"): fields.pop(name, None) for name in HIRES_SETTINGS}
    hires = {name: value for name, value in hires.items() if value is not None}
    if fields.pop("hires", None) or hires:
        fields["hires"] = hires
    return fields
