"""The verified model catalog: `kitty-images models add` and `models verify`.

A model is registered with its license, family and the SHA-256 of every weight file, so what a
worker loads can be checked against what its publisher named. Downloads are http(s) only, land in a
temporary file beside their destination and are renamed into place only once their digest matches;
a mismatch deletes the file. Pickle weights (.ckpt, .bin, .pt, .pth) can run code when loaded, so
they are refused unless the operator says ``--allow-pickle``; nothing here ever loads or runs a
file, it only reads bytes. No torch here.

A folder's ``--sha256`` is its *manifest digest*: the SHA-256 of the ``sha256sum`` lines
(``HEX  RELPATH\\n``) of its weight files, sorted by path — what

    cd FOLDER && find . -name '*.safetensors' | sed 's|^\\./||' | LC_ALL=C sort | xargs sha256sum | sha256sum

prints, so one published digest pins a whole diffusers folder.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx

from .errors import ChecksumMismatch, DownloadFailed, ValidationFailed
from .models import (
    ADDON_SECTIONS,
    LORA_BASES,
    AddonEntry,
    ModelEntry,
    parse_addon,
    parse_models_yaml,
    register_addon,
    register_model,
)

SAFE_SUFFIX = ".safetensors"
PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth")
"""Weight formats that are Python pickles: loading one can execute code it carries."""

MODEL_FAMILIES = LORA_BASES
"""What an entry's `family` may name."""

CHUNK_BYTES = 1 << 20
DOWNLOAD_TIMEOUT_S = 60.0
"""Per read, not in total: a multi-gigabyte model takes as long as it takes."""

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
PICKLE_HINT = (
    "Pickle weights can run code when loaded; use a .safetensors file, or pass --allow-pickle "
    "if you trust where it came from."
)


def normalize_digest(value: str) -> str:
    digest = value.strip().lower()
    if not _HEX64.match(digest):
        raise ValidationFailed(
            f"'{value}' is not a SHA-256 digest", remediation=["Give 64 hex digits, as sha256sum prints."]
        )
    return digest


def sha256_file(path: Path) -> str:
    """The hex SHA-256 of `path`, read in chunks (weights are gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def is_pickle(path: Path | str) -> bool:
    return str(path).lower().endswith(PICKLE_SUFFIXES)


def check_weight_name(name: str, *, allow_pickle: bool) -> None:
    """A single weight file must be ``.safetensors``, or a pickle format when allowed."""
    if is_pickle(name):
        if not allow_pickle:
            raise ValidationFailed(f"'{name}' is a pickle weight file; refused", remediation=[PICKLE_HINT])
        return
    if not name.lower().endswith(SAFE_SUFFIX):
        raise ValidationFailed(
            f"'{name}' is not a weight file this catalog accepts",
            remediation=[
                f"Give a diffusers folder or a {SAFE_SUFFIX} file ({', '.join(PICKLE_SUFFIXES)} "
                "with --allow-pickle)."
            ],
        )


def weight_files(folder: Path, *, allow_pickle: bool) -> list[Path]:
    """The weight files under `folder`, sorted; a pickle one is refused unless `allow_pickle`."""
    found = sorted(p for p in folder.rglob("*") if p.is_file() and (p.suffix == SAFE_SUFFIX or is_pickle(p)))
    pickles = [p for p in found if is_pickle(p)]
    if pickles and not allow_pickle:
        listed = ", ".join(p.relative_to(folder).as_posix() for p in pickles[:5])
        raise ValidationFailed(
            f"{folder} holds pickle weight files ({listed}); refused",
            remediation=[PICKLE_HINT, "Or delete them if the folder also has .safetensors versions."],
        )
    return found


def folder_digests(folder: Path, *, allow_pickle: bool = False) -> dict[str, str]:
    """Relative posix path → hex SHA-256 of every weight file under `folder`."""
    return {
        p.relative_to(folder).as_posix(): sha256_file(p)
        for p in weight_files(folder, allow_pickle=allow_pickle)
    }


def manifest_digest(digests: Mapping[str, str]) -> str:
    """One digest for a folder: SHA-256 of its ``sha256sum`` lines sorted by path (module docstring)."""
    lines = "".join(f"{digests[path]}  {path}\n" for path in sorted(digests))
    return hashlib.sha256(lines.encode()).hexdigest()


def mismatch(what: str, expected: str, got: str) -> ChecksumMismatch:
    return ChecksumMismatch(
        f"the SHA-256 of {what} did not match: expected {expected}, got {got}",
        detail={"expected": expected, "got": got},
    )


def check_url(url: str) -> str:
    """`url` if it is http(s); anything else (file://, ftp://, a bare word) is refused. Returns the
    file name its path ends in."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise ValidationFailed(
            f"'{url}' is not an http(s) URL; models are downloaded over http or https only",
            remediation=["Give an https:// URL, or a local path to a folder or .safetensors file."],
        )
    filename = unquote(parts.path.rsplit("/", 1)[-1])
    if not filename:
        raise ValidationFailed(
            f"'{url}' does not end in a file name", remediation=["Link the weight file itself."]
        )
    return filename


def download(url: str, dest: Path, expected: str, *, timeout: float = DOWNLOAD_TIMEOUT_S) -> str:
    """Stream `url` into a temporary file beside `dest`, hashing as it goes; rename it to `dest` only
    if its SHA-256 is `expected`. On a mismatch or a failure the temporary file is deleted and
    `dest` is left as it was."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".partial")
    temp = Path(temp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(handle, "wb") as out:
            try:
                with httpx.stream("GET", url, follow_redirects=True, timeout=timeout) as response:
                    response.raise_for_status()
                    for chunk in response.iter_bytes(CHUNK_BYTES):
                        digest.update(chunk)
                        out.write(chunk)
            except httpx.HTTPError as exc:
                raise DownloadFailed(f"could not download {url}: {type(exc).__name__}: {exc}") from exc
        got = digest.hexdigest()
        if got != expected:
            raise mismatch(f"the download from {url}", expected, got)
        temp.replace(dest)
        return got
    finally:
        temp.unlink(missing_ok=True)


@dataclass(frozen=True)
class Added:
    """What `add_model` registered."""

    name: str
    path: Path
    entry: dict[str, Any]


def add_model(
    models_yaml: Path,
    models_dir: Path,
    name: str,
    location: str,
    *,
    license: str,
    sha256: str | None = None,
    family: str | None = None,
    allow_pickle: bool = False,
    config: str | None = None,
) -> Added:
    """Register `location` (a diffusers folder, a weight file or an http(s) URL) as model `name`,
    with its digests; raises a KittyError (nothing registered) when it cannot be verified. `config`
    (a single file's: a diffusers folder, or a registered model's name) is recorded as ``config``."""
    if family is not None and family not in MODEL_FAMILIES:
        raise ValidationFailed(f"family '{family}' is not one of {', '.join(MODEL_FAMILIES)}")
    if config is not None:
        config = check_config(models_yaml, location, config)
    path, digests = fetch_and_hash(
        models_dir, name, location, sha256, allow_pickle=allow_pickle, marker="model_index.json"
    )
    entry: dict[str, Any] = {"path": str(path), "source": location, "license": license}
    if family:
        entry["family"] = family
    entry["sha256"] = digests
    if allow_pickle:
        entry["allow_pickle"] = True
    if config is not None:
        entry["config"] = config
    register_model(models_yaml, name, entry)
    return Added(name=name, path=path, entry=entry)


def check_config(models_yaml: Path, location: str, config: str) -> str:
    """A single file's ``config`` as models.yaml will record it: a registered model's name as given,
    a diffusers folder as an absolute path; anything else (or a folder `location`) is refused."""
    if "://" not in location and Path(os.path.expanduser(location)).is_dir():
        raise ValidationFailed(
            "--config is for a single-file checkpoint; a diffusers folder brings its own configs"
        )
    if models_yaml.exists() and config in parse_models_yaml(models_yaml.read_text(), models_yaml.parent):
        return config
    folder = Path(os.path.expanduser(config)).resolve()
    if not (folder / "model_index.json").is_file():
        raise ValidationFailed(
            f"--config {config} is neither a registered model nor a diffusers folder (no model_index.json)",
            remediation=[
                "Give a diffusers folder of the checkpoint's family, or the name of a registered one "
                "(kitty-images models list); e.g. kitty-images models pull sd15_base first."
            ],
        )
    return str(folder)


def add_addon(
    models_yaml: Path,
    models_dir: Path,
    kind: str,
    name: str,
    location: str,
    *,
    license: str,
    sha256: str | None = None,
    base: str | None = None,
    fields: Mapping[str, Any] | None = None,
) -> Added:
    """Register a ControlNet, IP-Adapter or upscaler (`kind`, one of `ADDON_SECTIONS`) as `add_model`
    does a model: a folder (its ``config.json`` beside safetensors weights), a .safetensors file or a
    verified download. `fields` are the section's own (``type``, ``image_encoder``, ``scale``); the
    entry is checked like models.yaml's before it is written."""
    if kind not in ADDON_SECTIONS:
        raise ValidationFailed(f"kind '{kind}' is not one of {', '.join(ADDON_SECTIONS)}")
    path, digests = fetch_and_hash(
        models_dir / kind, name, location, sha256, allow_pickle=False, marker="config.json"
    )
    entry: dict[str, Any] = {"path": str(path), "source": location, "license": license}
    if base:
        entry["base"] = base
    entry.update({key: value for key, value in (fields or {}).items() if value is not None})
    entry["sha256"] = digests
    encoder = entry.get("image_encoder")
    if encoder:  # an IP-Adapter's CLIP vision encoder is weights too: hashed like any model
        folder = Path(os.path.expanduser(str(encoder))).resolve()
        if not (folder / "config.json").is_file():
            raise ValidationFailed(
                f"image encoder {folder} is not a model folder (no config.json)",
                remediation=["Give the folder of a CLIPVisionModelWithProjection saved by transformers."],
            )
        entry["image_encoder"] = str(folder)
        entry["image_encoder_sha256"] = folder_digests(folder)
    parse_addon(kind, name, entry, models_yaml.parent)  # refuses what models.yaml would refuse
    register_addon(models_yaml, kind, name, entry)
    return Added(name=name, path=path, entry=entry)


def fetch_and_hash(
    models_dir: Path, name: str, location: str, sha256: str | None, *, allow_pickle: bool, marker: str
) -> tuple[Path, dict[str, str] | str]:
    """Where `location` (a folder holding `marker`, a weight file or an http(s) URL, downloaded into
    `models_dir`) is, and its digests: one for a file, relative path → digest for a folder. A digest
    other than `sha256` raises `ChecksumMismatch` (a download is deleted first)."""
    expected = normalize_digest(sha256) if sha256 else None
    if "://" in location:
        filename = check_url(location)
        check_weight_name(filename, allow_pickle=allow_pickle)
        if expected is None:
            raise ValidationFailed(
                "a URL needs --sha256: a download is registered only once its digest is checked",
                remediation=["Pass the digest the publisher lists: --sha256 HEX"],
            )
        path = models_dir / f"{name}{Path(filename).suffix.lower()}"
        return path, download(location, path, expected)
    path = Path(os.path.expanduser(location)).resolve()
    if path.is_dir():
        if not (path / marker).is_file():
            raise ValidationFailed(
                f"{path} is not a diffusers folder (no {marker})",
                remediation=["Give a folder saved by diffusers' save_pretrained, or a .safetensors file."],
            )
        digests = folder_digests(path, allow_pickle=allow_pickle)
        if not digests:
            raise ValidationFailed(f"{path} holds no weight files ({SAFE_SUFFIX})")
        if expected is not None and (got := manifest_digest(digests)) != expected:
            raise mismatch(f"the folder {path} (manifest digest)", expected, got)
        return path, digests
    if path.is_file():
        check_weight_name(path.name, allow_pickle=allow_pickle)
        digest = sha256_file(path)
        if expected is not None and digest != expected:
            raise mismatch(str(path), expected, digest)
        return path, digest
    raise ValidationFailed(f"{location} does not exist", remediation=["Give a folder, a file or a URL."])


def verify_addon(entry: AddonEntry) -> list[str]:
    """`verify_entry` for a registered add-on (and an IP-Adapter's image encoder, when hashed)."""
    problems = verify_files(Path(entry.path), entry.sha256)
    if entry.image_encoder and entry.image_encoder_sha256 is not None:
        problems += [
            f"image encoder: {problem}"
            for problem in verify_files(Path(entry.image_encoder), entry.image_encoder_sha256)
        ]
    return problems


def verify_entry(entry: ModelEntry) -> list[str]:
    """What is wrong with `entry`'s files against its recorded ``sha256`` (empty: all match), and an
    AnimateDiff model's motion adapter against ``motion_adapter_sha256`` when recorded."""
    problems = verify_files(Path(entry.source), entry.sha256)
    if entry.motion_adapter and entry.motion_adapter_sha256 is not None:
        problems += [
            f"motion adapter: {problem}"
            for problem in verify_files(Path(entry.motion_adapter), entry.motion_adapter_sha256)
        ]
    return problems


def verify_files(path: Path, recorded_digests: dict[str, str] | str | None) -> list[str]:
    """What is wrong with the file or folder at `path` against its recorded digests."""
    if recorded_digests is None:
        return ["no sha256 recorded (kitty-images models add records them)"]
    if isinstance(recorded_digests, str):
        if not path.is_file():
            return [f"{path} is missing"]
        got = sha256_file(path)
        return [] if got == recorded_digests else [f"{path}: expected {recorded_digests}, got {got}"]
    if not path.is_dir():
        return [f"{path} is missing"]
    problems = []
    for relative, expected in sorted(recorded_digests.items()):
        file = path / relative
        if not file.is_file():
            problems.append(f"{relative}: missing")
        elif (got := sha256_file(file)) != expected:
            problems.append(f"{relative}: expected {expected}, got {got}")
    recorded = set(recorded_digests)
    for file in weight_files(path, allow_pickle=True):
        relative = file.relative_to(path).as_posix()
        if relative not in recorded:
            problems.append(f"{relative}: a weight file that is not recorded")
    return problems
