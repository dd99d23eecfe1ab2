"""Resolving a request's guided-generation inputs at submit time: ControlNet `controls`, the
IP-Adapter `reference_image` and the hires fix. Each control gets the registered ControlNet that
renders it, the reference its IP-Adapter, and the picture keys are checked to exist, so the stored
spec alone re-renders the job. Torch-free: the API runs this.

On a local engine the add-ons come from models.yaml (`controlnets:`, `ip_adapters:`, `upscalers:`),
matched to the model's `family`; a server engine has its own, so a control names the server's model.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.contracts import ControlInput, GenerateRequest, HiresFix

from .engines.descriptors import EngineDescriptor
from .errors import ModelNotFound, ValidationFailed
from .models import ADDON_HOWTO, AddonEntry, ModelEntry, ModelRegistry
from .settings import Settings
from .storage import Store
from .uploads import check_input_key, require_stored


@dataclass(frozen=True)
class Guidance:
    controls: list[ControlInput]
    reference_image: str | None
    reference_model: str | None
    hires: HiresFix | None


def resolve_guidance(
    request: GenerateRequest,
    descriptor: EngineDescriptor,
    entry: ModelEntry | None,
    registry: ModelRegistry,
    settings: Settings,
    store: Store | None,
) -> Guidance:
    controls = [
        _resolve_control(control, descriptor, entry, registry, settings, store, index)
        for index, control in enumerate(request.controls)
    ]
    reference_model = None
    if request.reference_image is not None:
        _check_picture(request.reference_image, "reference_image", settings, store)
        if descriptor.is_local:
            reference_model = _pick_addon(
                "ip_adapters", request.reference_model, entry, registry, field="reference_model"
            ).name
        else:
            reference_model = request.reference_model
    hires = request.hires
    if hires is not None:
        if request.image is not None:
            raise ValidationFailed(
                "`hires` renders a new picture in two passes; it does not go with `image`",
                remediation=[
                    "Drop `hires`, or upscale the finished image: POST /api/images/upscale {key, scale}."
                ],
            )
        if hires.upscaler is not None and descriptor.is_local:
            registry.addon("upscalers", hires.upscaler)  # ModelNotFound, saying how to register one
    return Guidance(controls, request.reference_image, reference_model, hires)


def _check_picture(key: str, field: str, settings: Settings, store: Store | None) -> None:
    check_input_key(key, settings, field=field, allow_gallery=True)
    if store is not None:
        require_stored(store, key, field=field)


def _resolve_control(
    control: ControlInput,
    descriptor: EngineDescriptor,
    entry: ModelEntry | None,
    registry: ModelRegistry,
    settings: Settings,
    store: Store | None,
    index: int,
) -> ControlInput:
    field = f"controls[{index}]"
    _check_picture(control.image, f"{field}.image", settings, store)
    if not descriptor.is_local:
        if control.model is None:
            raise ValidationFailed(
                f"{field}: engine '{descriptor.name}' uses its own ControlNet models; name one in `model`",
                remediation=[
                    f"Add the {descriptor.name} server's ControlNet model name as `model` "
                    "(e.g. ComfyUI: the file under models/controlnet)."
                ],
            )
        return control
    picked = _pick_addon(
        "controlnets", control.model, entry, registry, field=f"{field}.model", type=control.type
    )
    if picked.type != control.type:
        raise ValidationFailed(
            f"{field}: ControlNet '{picked.name}' reads {picked.type} maps, not {control.type}",
            remediation=[f"Send `type: {picked.type}`, or name a {control.type} ControlNet as `model`."],
        )
    return control.model_copy(update={"model": picked.name})


def _pick_addon(
    kind: str,
    name: str | None,
    entry: ModelEntry | None,
    registry: ModelRegistry,
    *,
    field: str,
    type: str | None = None,  # noqa: A002 - the control type, as the wire names it
) -> AddonEntry:
    """The add-on named `name`, or the first registered one of `kind` for the model's family (and
    control `type`); a named one of another family is refused."""
    family = entry.family if entry is not None else None
    if name is not None:
        picked = registry.addon(kind, name)
        if family and picked.base and picked.base != family:
            raise ValidationFailed(
                f"{field}: '{name}' is for {picked.base} models, and '{entry.name if entry else ''}' is "
                f"{family}",
                remediation=[f"Name a {family} one (GET /api/images/models lists `{kind}` with `base`)."],
            )
        return picked
    for candidate in registry.addons(kind).values():
        if type is not None and candidate.type != type:
            continue
        if family and candidate.base and candidate.base != family:
            continue
        return candidate
    what = f"{type} " if type else ""
    raise ModelNotFound(
        f"{field}: no {what}{kind.rstrip('s').replace('_', '-')} is registered for {family or 'this'} models",
        remediation=[ADDON_HOWTO[kind], "Or name one in the request."],
        detail={"kind": kind, "type": type, "family": family},
    )
