"""Gallery commands: `images.latest` (the numbered table), `images.select` (an imageRef on stdout) and
`images.delete`; an image is named by its number in the latest listing or by its storage key."""

from __future__ import annotations

import click

from services.contracts import (
    LATEST_DEFAULT,
    LATEST_MAX,
    ApiError,
    ErrorCode,
    ErrorInfo,
    ImagesClient,
    LatestItem,
)

from .completion import complete_image_ref
from .context import state_of
from .render import echo_json, latest_table


def position_of(which: str) -> int:
    position = int(which)
    if not 1 <= position <= LATEST_MAX:
        raise ApiError(
            400,
            ErrorInfo(
                code=ErrorCode.VALIDATION_ERROR,
                message=f"image number must be between 1 and {LATEST_MAX}, got {which}",
                remediation=["Pass a storage key instead to name an older image."],
            ),
        )
    return position


def key_at(items: list[LatestItem], position: int) -> str:
    """The key at 1-based ``position`` of a newest-first listing."""
    if position > len(items):
        raise ApiError(
            404,
            ErrorInfo(
                code=ErrorCode.KEY_NOT_FOUND,
                message=f"there is no image #{position}: the listing has {len(items)}",
                remediation=["See the numbers with `kitty-cli images.latest`."],
            ),
        )
    return items[position - 1].key


def resolve_key(client: ImagesClient, which: str) -> str:
    """The storage key of image ``N`` (1 = newest) of the latest listing, or ``KEY`` itself."""
    if not which.isdigit():
        return which
    # Keys are paths such as images/20240501_120000_ab12cd34.png, never bare numbers.
    position = position_of(which)
    return key_at(client.latest(limit=position).items, position)


@click.command("images.latest", short_help="List the newest images, numbered from 1.")
@click.option(
    "--limit",
    type=click.IntRange(1, LATEST_MAX),
    default=LATEST_DEFAULT,
    show_default=True,
    help="How many images, newest first.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the listing's JSON.")
@click.pass_context
def latest(ctx: click.Context, limit: int, as_json: bool) -> None:
    """List the newest images: number, creation time, model, size, prompt and key. The numbers are
    what `images.select N` and `images.delete N` take.

    \b
    Examples:
      kitty-cli images.latest
      kitty-cli images latest --limit 5
      kitty-cli images.latest --json | jq -r '.items[].key'
    """
    view = state_of(ctx).client().latest(limit=limit)
    if as_json:
        echo_json(view.model_dump(mode="json", exclude_none=True))
        return
    if not view.items:
        click.echo('No images yet; make one with `kitty-cli images.generate "a prompt"`.', err=True)
        return
    for line in latest_table(view.items):
        click.echo(line)


@click.command("images.select", short_help="Print the imageRef of image N (or KEY), or a clip's videoRef.")
@click.argument("which", metavar="N|KEY", shell_complete=complete_image_ref)
@click.option(
    "--format",
    "format_",
    type=click.Choice(["png", "jpeg", "webp"]),
    default="png",
    show_default=True,
    help="png is the stored original; jpeg and webp link a converted copy (infotext kept in EXIF).",
)
@click.option("--quality", type=click.IntRange(1, 100), help="JPEG/WebP quality (default 90).")
@click.pass_context
def select(ctx: click.Context, which: str, format_: str, quality: int | None) -> None:
    """Print the imageRef of image N of `images.latest` (1 = newest), or of the image with storage KEY:
    ``{"imageRef": {"downloadUrl", "storageUri"}}`` on stdout, for the tool that consumes it. A clip's
    KEY (``.mp4``) prints its ``{"videoRef": {"downloadUrl", "storageUri", "posterUrl"}}``.

    \b
    Examples:
      kitty-cli images.select 1
      kitty-cli images select images/20261121_101500_1a2b3c4d.png
      kitty-cli images.select 1 --format webp --quality 80
      curl -o out.png "$(kitty-cli images.select 1 | jq -r .imageRef.downloadUrl)"
      kitty-cli images.select images/20261121_101500_1a2b3c4d.mp4 | jq -r .videoRef.posterUrl
    """
    client = state_of(ctx).client()
    key = resolve_key(client, which)
    if key != which:
        click.echo(f"Selected #{which}: {key}", err=True)
    echo_json(client.select(key, format_, quality).model_dump(mode="json", exclude_none=True))


@click.command("images.delete", short_help="Delete image N (or KEY) with its sidecar and thumbnail.")
@click.argument("which", metavar="N|KEY", shell_complete=complete_image_ref)
@click.option("--yes", "-y", is_flag=True, help="Delete without asking.")
@click.pass_context
def delete(ctx: click.Context, which: str, yes: bool) -> None:
    """Delete image N of `images.latest` (1 = newest), or the image with storage KEY, from storage and
    the gallery, after asking (unless --yes).

    \b
    Examples:
      kitty-cli images.delete 3
      kitty-cli images delete images/20261121_101500_1a2b3c4d.png --yes
    """
    client = state_of(ctx).client()
    key = resolve_key(client, which)
    if not yes:
        click.confirm(f"Delete {key} with its sidecar and thumbnail?", abort=True, err=True)
    client.delete(key)
    click.echo(f"Deleted {key}", err=True)
