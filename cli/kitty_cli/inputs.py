"""Input pictures a command sends by key (`--image`, `--mask`, `--control-image`, `--reference-image`):
a local file, uploaded first; image N of the latest listing; or a stored key as it is."""

from __future__ import annotations

from pathlib import Path

import click

from services.contracts import ImagesClient

from .gallery import resolve_key

UPLOAD_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}
"""Local files an input option uploads, by extension: what the service's uploads route takes."""

GALLERY_NUMBER_OPTIONS = frozenset({"image", "control-image", "reference-image"})
"""Input options that also take image N of `images.latest`; a mask is never a gallery image."""


def input_file(value: str, option: str) -> tuple[Path, str] | None:
    """The local file (and its Content-Type) input option `--OPTION` names, None when `value` is image
    N or a stored key; refused here, before anything is uploaded, when it can be neither."""
    path = Path(value).expanduser()
    if path.is_file():
        content_type = UPLOAD_TYPES.get(path.suffix.lower())
        if content_type is None:
            raise click.BadParameter(
                f"'{value}' is not a PNG, JPEG or WebP file ({', '.join(UPLOAD_TYPES)})",
                param_hint=f"'--{option}'",
            )
        return path, content_type
    if value.isdigit() and option in GALLERY_NUMBER_OPTIONS:
        return None
    # Stored keys are relative paths with a folder (uploads/…, images/…): anything else meant a file.
    if "/" not in value or value.startswith(("/", "./", "../", "~")):
        raise click.BadParameter(
            f"no such file '{value}' (a stored key looks like uploads/….png or images/….png)",
            param_hint=f"'--{option}'",
        )
    return None


def input_key(client: ImagesClient, value: str, option: str) -> str:
    """The stored key input option `--OPTION` names: a local file, uploaded now; image N of the latest
    listing (where the option takes one); or a key as it is."""
    found = input_file(value, option)
    if found is None:
        return resolve_key(client, value) if value.isdigit() else value
    path, content_type = found
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise click.FileError(str(path), hint=exc.strerror or str(exc)) from exc
    key = client.upload(data, content_type).key
    click.echo(f"Uploaded {path} as {key}", err=True)
    return key
