"""The model registry: `models.yaml` maps a name to a local diffusers folder or a hub id.

Read by the API (to validate and resolve defaults) and by workers (to load); no torch here.
Both shapes are accepted: the seed's flat ``name: /path/or/hub-id`` and the richer

    models:
      sdxl_base:
        repo: stabilityai/stable-diffusion-xl-base-1.0   # or path: /models/sdxl
        refiner: sdxl_refiner
        defaults: {width: 1024, height: 1024, steps: 30, cfg: 7.0}
    loras:
      film_grain:
        path: /models/loras/film_grain.safetensors   # a file, or a folder holding one
        base: sdxl                                   # the family it was trained for
        description: subtle 35 mm grain

LoRAs live only in the richer shape (beside ``models:``); a request names them in ``loras``. So do
the guided-generation add-ons (`ADDON_SECTIONS`), each with ``path``, ``base`` and the provenance
fields below:

    controlnets:
      canny_sd15: {path: /models/controlnet/canny-sd15, base: sd15, type: canny}
    ip_adapters:
      ip_sd15: {path: /models/ip-adapter/ip-adapter_sd15.safetensors, base: sd15,
                image_encoder: /models/ip-adapter/image_encoder}
    upscalers:
      realesrgan_x4: {path: /models/upscale/RealESRGAN_x4plus.safetensors, scale: 4}

An entry may also carry what `kitty-images models add` records (see `catalog.py`): ``source`` (the
URL or path it came from, when ``path``/``repo`` says where it is now; alone, ``source`` is still the
location, as before), ``license``, ``family`` (sd15, sdxl, ...), ``sha256`` (relative weight-file path
→ hex digest for a folder, one digest for a single file) and ``allow_pickle`` (load pickle weights).

A single-file checkpoint (the original Stable Diffusion layout: ``path: /models/dreamy.safetensors``)
is loaded with the configs of a diffusers folder of its family: its ``config`` (that folder, or the
name of a registered model whose folder to use), else the first registered local diffusers folder of
the same ``family``:

    models:
      dreamy: {path: /models/dreamy.safetensors, family: sd15, config: sd15_base}
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from services.common.api_keys import TIER_NAMES

from .errors import ModelNotFound, ValidationFailed
from .video.families import VideoFamily, is_video_family

CATALOG: dict[str, dict[str, Any]] = {
    "sdxl_base": {
        "repo": "stabilityai/stable-diffusion-xl-base-1.0",
        "family": "sdxl",
        "refiner": "sdxl_refiner",
    },
    "sdxl_refiner": {"repo": "stabilityai/stable-diffusion-xl-refiner-1.0", "family": "sdxl"},
    "sd15_base": {
        "repo": "stable-diffusion-v1-5/stable-diffusion-v1-5",
        "family": "sd15",
        "defaults": {"width": 512, "height": 512, "steps": 30, "cfg": 7.0, "scheduler": "euler_a"},
    },
    "sd35_medium": {
        "repo": "stabilityai/stable-diffusion-3.5-medium",
        "family": "sd3",
        "defaults": {"steps": 28, "cfg": 4.5},
    },
    "flux_schnell": {
        "repo": "black-forest-labs/FLUX.1-schnell",
        "family": "flux",
        "defaults": {"steps": 4, "cfg": 0.0},
    },
}
"""Names `kitty-images models pull NAME` knows without being told a repo id, with the `family` a
single-file checkpoint and the add-ons (ControlNets, IP-Adapters) are matched by."""


@dataclass(frozen=True)
class ModelDefaults:
    """What a request gets for a field it leaves out: a models.yaml entry's ``defaults:`` over the
    seed's SDXL ones. Values are taken as written; `RenderSpec` validates them at submit time."""

    width: int = 1024
    height: int = 1024
    steps: int = 30
    cfg: float = 7.0
    scheduler: str | None = None

    @classmethod
    def over_fallbacks(cls, written: Mapping[str, Any]) -> ModelDefaults:
        """`written` (an entry's ``defaults:``) over `FALLBACK_DEFAULTS`; other keys are left out."""
        return cls(**{f.name: written[f.name] for f in fields(cls) if f.name in written})


FALLBACK_DEFAULTS = ModelDefaults()
"""The seed's SDXL defaults, used for anything an entry does not set."""


LORA_BASES = ("sd15", "sdxl", "sd3", "flux")
"""Model families a LoRA's `base` may name; a LoRA is refused on a pipeline of another family."""

LORAS_KEY = "loras"
"""The models.yaml section of LoRAs, beside ``models:``."""

LORA_HOWTO = (
    "Register it in models.yaml under `loras:`, e.g. `my_style: {path: /models/loras/my_style.safetensors, "
    "base: sdxl}`; GET /api/images/models lists the registered ones."
)


@dataclass(frozen=True)
class LoraEntry:
    """A LoRA registered in models.yaml: a local ``.safetensors`` file or a folder holding one."""

    name: str
    path: str
    """Absolute."""
    base: str | None = None
    """The model family it was trained for (`LORA_BASES`); None: not checked."""
    description: str | None = None

    @property
    def is_present(self) -> bool:
        return Path(self.path).exists()


@dataclass(frozen=True)
class ModelEntry:
    name: str
    source: str
    """An absolute local folder, or a hub repo id."""
    is_local: bool
    refiner: str | None = None
    defaults: dict[str, Any] = field(default_factory=dict)
    """As written in models.yaml (what GET /api/images/models lists); see `resolved_defaults`."""
    extra: dict[str, Any] = field(default_factory=dict)
    origin: str | None = None
    """Where it came from (models.yaml's ``source`` beside ``path``): a URL or a path; never listed."""
    license: str | None = None
    family: str | None = None
    sha256: dict[str, str] | str | None = None
    """Weight-file digests: relative path → hex for a folder, one hex for a single file."""
    allow_pickle: bool = False
    """Whether its pickle weights (.ckpt, .bin, .pt) may be loaded; otherwise only safetensors are."""
    tiers: tuple[str, ...] | None = None
    """The key tiers that may use it (``tiers: [pro, enterprise]``); None: every tier."""
    config: str | None = None
    """A single-file checkpoint's diffusers configs: an absolute diffusers folder (or the hub id of a
    registered hub model), from its ``config:`` (a folder, or a registered model's name) or else the
    first registered local diffusers folder of its ``family``; None: none found (`resolve_configs`)."""
    motion_adapter: str | None = None
    """An AnimateDiff model's motion adapter folder (absolute), beside its SD1.5 ``path``."""
    motion_adapter_sha256: dict[str, str] | None = None
    """The adapter folder's weight digests, as ``sha256`` is the model's."""

    @property
    def kind(self) -> Literal["image", "video"]:
        """``video`` for a video family (svd, animatediff), else ``image``: what a request's `kind` is."""
        return "video" if is_video_family(self.family) else "image"

    @property
    def resolved_defaults(self) -> ModelDefaults:
        return ModelDefaults.over_fallbacks(self.defaults)

    def default(self, key: str) -> Any:
        """One default by name (None for a name that is not one); `resolved_defaults` is typed."""
        return self.defaults.get(key, getattr(FALLBACK_DEFAULTS, key, None))

    def fetch_hint(self) -> str:
        if self.is_local:
            return (
                f"kitty-images models pull {self.name}  (or build the demo models: kitty-images models tiny)"
            )
        return f"kitty-images models pull {self.name}"


def not_found(name: str, known: list[str]) -> ModelNotFound:
    hints = [f"Fetch it: kitty-images models pull {name}"]
    if known:
        hints.append(f"Or use one of: {', '.join(known)} (kitty-images models list)")
    else:
        hints.append("Or build small demo models with: kitty-images models tiny")
    return ModelNotFound(f"model '{name}' is not registered in models.yaml", remediation=hints)


def _parse_entry(name: str, raw: Any, base_dir: Path) -> ModelEntry:
    if isinstance(raw, str):
        raw = {"source": raw}
    if not isinstance(raw, dict):
        raise ValidationFailed(f"models.yaml entry '{name}' must be a path, a hub id or a mapping")
    raw = dict(raw)
    path = raw.pop("path", None)
    repo = raw.pop("repo", None)
    written_source = raw.pop("source", None)
    # Beside `path`/`repo`, `source` is provenance (a download URL); alone it is the location.
    origin = str(written_source) if written_source and (path or repo) else None
    source = path or repo or written_source
    if not source:
        raise ValidationFailed(f"models.yaml entry '{name}' needs 'path' or 'repo'")
    source = str(source)
    candidate = Path(os.path.expanduser(source))
    if not candidate.is_absolute():
        candidate = base_dir / candidate
    # A hub id looks like "org/name"; anything that exists on disk, or was given as `path`, is local.
    is_local = path is not None or candidate.exists() or source.startswith((".", "/", "~"))
    family = _optional_str(raw.pop("family", None))
    return ModelEntry(
        name=name,
        source=str(candidate.resolve()) if is_local else source,
        is_local=is_local,
        refiner=raw.pop("refiner", None),
        defaults=dict(raw.pop("defaults", {}) or {}),
        origin=origin,
        license=_optional_str(raw.pop("license", None)),
        family=family,
        sha256=_parse_digests(name, raw.pop("sha256", None)),
        allow_pickle=bool(raw.pop("allow_pickle", False)),
        tiers=_parse_tiers(name, raw.pop("tiers", None)),
        config=_optional_str(raw.pop("config", None)),
        motion_adapter=_motion_adapter(name, family, raw.pop("motion_adapter", None), base_dir),
        motion_adapter_sha256=_encoder_digests(name, raw.pop("motion_adapter_sha256", None)),
        extra=raw,
    )


def _motion_adapter(name: str, family: str | None, adapter: Any, base_dir: Path) -> str | None:
    """An entry's ``motion_adapter`` folder: required by, and only taken by, the animatediff family."""
    if family == VideoFamily.ANIMATEDIFF and not adapter:
        raise ValidationFailed(
            f"models.yaml entry '{name}' (family animatediff) needs 'motion_adapter': the motion "
            "adapter's diffusers folder beside its SD1.5 'path'"
        )
    if adapter and family != VideoFamily.ANIMATEDIFF:
        raise ValidationFailed(f"models.yaml entry '{name}': only family animatediff takes 'motion_adapter'")
    return _absolute(adapter, base_dir) if adapter else None


def resolve_configs(entries: dict[str, ModelEntry], base_dir: Path) -> dict[str, ModelEntry]:
    """`entries` with each ``config`` as written turned into where the configs are (`ModelEntry.config`):
    a registered model's name into its folder (or hub id), a path into an absolute one; a single file
    without one gets the first local diffusers folder (``model_index.json``) of its ``family``."""
    folders = [e for e in entries.values() if e.is_local and (Path(e.source) / "model_index.json").is_file()]
    resolved = {}
    for name, entry in entries.items():
        config = entry.config
        if config is not None and config in entries:
            config = entries[config].source
        elif config is not None:
            config = _absolute(config, base_dir)
        elif entry.is_local and Path(entry.source).is_file() and entry.family is not None:
            config = next((e.source for e in folders if e.family == entry.family), None)
        resolved[name] = replace(entry, config=config)
    return resolved


def _parse_tiers(name: str, raw: Any) -> tuple[str, ...] | None:
    """An entry's ``tiers``: a list of tier names (or one name); absent means every tier."""
    if raw is None:
        return None
    tiers = [raw] if isinstance(raw, str) else raw
    if not isinstance(tiers, list) or not all(tier in TIER_NAMES for tier in tiers):
        raise ValidationFailed(f"models.yaml entry '{name}': tiers must be a list of {', '.join(TIER_NAMES)}")
    return tuple(tiers)


def _optional_str(value: Any) -> str | None:
    return str(value) if value is not None else None


def _parse_digests(name: str, raw: Any) -> dict[str, str] | str | None:
    """An entry's ``sha256``: one hex digest, or relative weight-file path → hex digest."""
    if raw is None:
        return None
    if isinstance(raw, str):
        return raw.lower()
    if isinstance(raw, dict) and all(isinstance(v, str) for v in raw.values()):
        return {str(k): v.lower() for k, v in raw.items()}
    raise ValidationFailed(
        f"models.yaml entry '{name}': sha256 must be a hex digest or a mapping of file → hex digest"
    )


def _parse_lora(name: str, raw: Any, base_dir: Path) -> LoraEntry:
    if isinstance(raw, str):
        raw = {"path": raw}
    if not isinstance(raw, dict) or not raw.get("path"):
        raise ValidationFailed(f"models.yaml LoRA '{name}' needs a 'path' (a .safetensors file or folder)")
    path = Path(os.path.expanduser(str(raw["path"])))
    base = raw.get("base")
    if base is not None and base not in LORA_BASES:
        raise ValidationFailed(
            f"models.yaml LoRA '{name}': base '{base}' is not one of {', '.join(LORA_BASES)}"
        )
    description = raw.get("description")
    return LoraEntry(
        name=name,
        path=str((path if path.is_absolute() else base_dir / path).resolve()),
        base=base,
        description=str(description) if description is not None else None,
    )


ADDON_SECTIONS = ("controlnets", "ip_adapters", "upscalers")
"""models.yaml sections of the guided-generation add-ons, beside ``models:`` and ``loras:``."""

AddonKind = str
"""One of `ADDON_SECTIONS`."""

ADDON_HOWTO = {
    "controlnets": "Register one under `controlnets:` in models.yaml, e.g. `canny_sd15: {path: "
    "/models/controlnet/canny, base: sd15, type: canny}` (`kitty-images models tiny` registers demo ones).",
    "ip_adapters": "Register one under `ip_adapters:` in models.yaml, e.g. `ip_sd15: {path: "
    "/models/ip-adapter/ip-adapter_sd15.safetensors, base: sd15, image_encoder: /models/ip-adapter/"
    "image_encoder}`.",
    "upscalers": "Register one under `upscalers:` in models.yaml, e.g. `realesrgan_x4: {path: "
    "/models/upscale/RealESRGAN_x4plus.safetensors, scale: 4}`; without one, Lanczos resampling is used.",
}


@dataclass(frozen=True)
class AddonEntry:
    """A ControlNet, IP-Adapter or upscaler registered in models.yaml (`ADDON_SECTIONS`)."""

    name: str
    kind: AddonKind
    path: str
    """Absolute: a diffusers folder or a single ``.safetensors`` file."""
    base: str | None = None
    """The model family it works with (`LORA_BASES`); None: not checked (upscalers have none)."""
    type: str | None = None
    """controlnets: the control type it reads (`CONTROL_TYPES`)."""
    image_encoder: str | None = None
    """ip_adapters: the CLIP vision encoder folder (absolute)."""
    image_encoder_sha256: dict[str, str] | None = None
    """ip_adapters: the encoder folder's weight digests (`models add` records them)."""
    scale: int | None = None
    """upscalers: its factor (2 or 4), when written."""
    license: str | None = None
    source: str | None = None
    sha256: dict[str, str] | str | None = None
    description: str | None = None

    @property
    def is_present(self) -> bool:
        return Path(self.path).exists()


def _absolute(raw: Any, base_dir: Path) -> str:
    path = Path(os.path.expanduser(str(raw)))
    return str((path if path.is_absolute() else base_dir / path).resolve())


def parse_addon(kind: AddonKind, name: str, raw: Any, base_dir: Path) -> AddonEntry:
    from services.contracts.schema import CONTROL_TYPES, UPSCALE_FACTORS

    where = f"models.yaml {kind} entry '{name}'"
    if isinstance(raw, str):
        raw = {"path": raw}
    if not isinstance(raw, dict) or not raw.get("path"):
        raise ValidationFailed(f"{where} needs a 'path' (a .safetensors file or a diffusers folder)")
    base = raw.get("base")
    if base is not None and base not in LORA_BASES:
        raise ValidationFailed(f"{where}: base '{base}' is not one of {', '.join(LORA_BASES)}")
    control_type = raw.get("type")
    if kind == "controlnets" and control_type not in CONTROL_TYPES:
        raise ValidationFailed(f"{where} needs 'type', one of {', '.join(CONTROL_TYPES)}")
    encoder = raw.get("image_encoder")
    if kind == "ip_adapters" and not encoder:
        raise ValidationFailed(f"{where} needs 'image_encoder' (the CLIP vision encoder's folder)")
    scale = raw.get("scale")
    if scale is not None and scale not in UPSCALE_FACTORS:
        raise ValidationFailed(f"{where}: scale must be one of {', '.join(map(str, UPSCALE_FACTORS))}")
    return AddonEntry(
        name=name,
        kind=kind,
        path=_absolute(raw["path"], base_dir),
        base=base,
        type=control_type if kind == "controlnets" else None,
        image_encoder=_absolute(encoder, base_dir) if encoder else None,
        image_encoder_sha256=_encoder_digests(name, raw.get("image_encoder_sha256")),
        scale=scale,
        license=_optional_str(raw.get("license")),
        source=_optional_str(raw.get("source")),
        sha256=_parse_digests(name, raw.get("sha256")),
        description=_optional_str(raw.get("description")),
    )


def _encoder_digests(name: str, raw: Any) -> dict[str, str] | None:
    digests = _parse_digests(name, raw)
    if isinstance(digests, str):
        raise ValidationFailed(f"models.yaml entry '{name}': image_encoder_sha256 maps files to digests")
    return digests


def parse_addons_yaml(text: str, base_dir: Path) -> dict[AddonKind, dict[str, AddonEntry]]:
    data = _load_yaml(text)
    sectioned = _is_sectioned(data)
    return {
        kind: {
            str(name): parse_addon(kind, str(name), raw, base_dir)
            for name, raw in ((data.get(kind) or {}) if sectioned else {}).items()
        }
        for kind in ADDON_SECTIONS
    }


def _load_yaml(text: str) -> dict[str, Any]:
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValidationFailed("models.yaml must be a mapping of model names")
    return data


def _is_sectioned(data: dict[str, Any]) -> bool:
    """The richer shape (``models:``/``loras:`` sections) rather than the seed's flat name → path."""
    return any(isinstance(data.get(section), dict) for section in ("models", LORAS_KEY, *ADDON_SECTIONS))


def parse_models_yaml(text: str, base_dir: Path) -> dict[str, ModelEntry]:
    data = _load_yaml(text)
    models = (data.get("models") or {}) if _is_sectioned(data) else data
    entries = {str(name): _parse_entry(str(name), raw, base_dir) for name, raw in models.items()}
    return resolve_configs(entries, base_dir)


def parse_loras_yaml(text: str, base_dir: Path) -> dict[str, LoraEntry]:
    data = _load_yaml(text)
    loras = data.get(LORAS_KEY) if _is_sectioned(data) else None
    return {str(name): _parse_lora(str(name), raw, base_dir) for name, raw in (loras or {}).items()}


class ModelRegistry:
    """models.yaml, re-read when the file changes (so `models tiny` needs no restart)."""

    def __init__(self, path: Path, default_model: str | None = None) -> None:
        self.path = Path(path)
        self.default_model = default_model
        self._lock = threading.Lock()
        self._stamp: tuple[float, int] | None = None
        self._entries: dict[str, ModelEntry] = {}
        self._loras: dict[str, LoraEntry] = {}
        self._addons: dict[AddonKind, dict[str, AddonEntry]] = {kind: {} for kind in ADDON_SECTIONS}

    def _refresh(
        self,
    ) -> tuple[dict[str, ModelEntry], dict[str, LoraEntry], dict[AddonKind, dict[str, AddonEntry]]]:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return {}, {}, {kind: {} for kind in ADDON_SECTIONS}
        stamp = (stat.st_mtime, stat.st_size)
        with self._lock:
            if stamp != self._stamp:
                text = self.path.read_text()
                self._entries = parse_models_yaml(text, self.path.parent)
                self._loras = parse_loras_yaml(text, self.path.parent)
                self._addons = parse_addons_yaml(text, self.path.parent)
                self._stamp = stamp
            return self._entries, self._loras, self._addons

    def addons(self, kind: AddonKind) -> dict[str, AddonEntry]:
        """The entries of one add-on section (`ADDON_SECTIONS`), by name."""
        return self._refresh()[2][kind]

    def addon(self, kind: AddonKind, name: str) -> AddonEntry:
        entries = self.addons(kind)
        if name not in entries:
            known = f"Registered: {', '.join(entries)}." if entries else "None is registered yet."
            raise ModelNotFound(
                f"{kind.rstrip('s').replace('_', '-')} '{name}' is not registered in models.yaml",
                remediation=[ADDON_HOWTO[kind], known],
                detail={kind: name},
            )
        return entries[name]

    def entries(self) -> dict[str, ModelEntry]:
        return self._refresh()[0]

    def loras(self) -> dict[str, LoraEntry]:
        """LoRAs registered under ``loras:``, by name."""
        return self._refresh()[1]

    def lora(self, name: str) -> LoraEntry:
        loras = self.loras()
        if name not in loras:
            known = f"Registered LoRAs: {', '.join(loras)}." if loras else "No LoRAs are registered yet."
            raise ModelNotFound(
                f"LoRA '{name}' is not registered in models.yaml",
                remediation=[LORA_HOWTO, known, "Demo: kitty-images models tiny registers tiny-lora."],
                detail={"lora": name},
            )
        return loras[name]

    def names(self) -> list[str]:
        return list(self.entries())

    def get(self, name: str) -> ModelEntry:
        entries = self.entries()
        if name not in entries:
            raise not_found(name, list(entries))
        return entries[name]

    def default_name(self) -> str:
        if self.default_model:
            return self.default_model
        names = self.names()
        if not names:
            raise ModelNotFound(
                f"no models are registered (looked in {self.path})",
                remediation=[
                    "Build small demo models: kitty-images models tiny",
                    "Or fetch a real one: kitty-images models pull sdxl_base",
                    "Or point MODELS_YAML at your models.yaml",
                ],
            )
        return names[0]


def _register(path: Path, section: str, name: str, entry: dict[str, Any]) -> None:
    """Add or replace `name` in `section` of the models.yaml at `path`, keeping everything else."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {}
    if path.exists():
        data = yaml.safe_load(path.read_text()) or {}
    if data and not _is_sectioned(data):
        if section == "models":  # the seed's flat file stays flat while it holds models only
            data[name] = entry
        else:  # a LoRA needs the sections: the flat models move under `models:`
            data = {"models": data, section: {name: entry}}
    else:
        data.setdefault(section, {})[name] = entry
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    tmp.replace(path)


def register_model(path: Path, name: str, entry: dict[str, Any]) -> None:
    """Add or replace `name` in the models.yaml at `path`, keeping the other entries."""
    _register(path, "models", name, entry)


def register_addon(path: Path, kind: AddonKind, name: str, entry: dict[str, Any]) -> None:
    """Add or replace `name` under the add-on section `kind` (`ADDON_SECTIONS`) of `path`."""
    _register(path, kind, name, entry)


def register_lora(path: Path, name: str, entry: dict[str, Any]) -> None:
    """Add or replace LoRA `name` (``{path, base, description}``) under ``loras:`` in `path`."""
    _register(path, LORAS_KEY, name, entry)
