"""Re-running a stored image: the resolved request its sidecar records, as it was (a preset's template
is already in its prompt, so nothing is applied twice), with the seed kept or replaced."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from services.contracts import MAX_SEED, RenderSpec, RerunRequest

from .engines.descriptors import descriptor_for
from .errors import KeyNotFound, KittyError, ValidationFailed
from .models import ModelRegistry
from .redaction import FIELD_SECRET_NAME
from .settings import Settings
from .storage import Store
from .storage.keys import meta_key_for, validate_image_key
from .uploads import require_stored


def _has_secret_fields(value: Any) -> bool:
    """Whether a stored request had fields blanked as secrets (see `redaction.redact`)."""
    if isinstance(value, dict):
        return any(
            (isinstance(key, str) and FIELD_SECRET_NAME.search(key)) or _has_secret_fields(item)
            for key, item in value.items()
        )
    if isinstance(value, list):
        return any(_has_secret_fields(item) for item in value)
    return False


def _not_rerunnable(key: str, why: str) -> ValidationFailed:
    return ValidationFailed(
        f"image '{key}' cannot be re-run: {why}",
        remediation=["Generate it anew with its settings: open it in the gallery and use Edit settings."],
        detail={"key": key},
    )


def recorded_sidecar(
    key: str, store: Store, refuse: Callable[[str, str], KittyError]
) -> dict[str, Any]:
    """The sidecar of the stored image `key` (already validated), with a `request` object: 404
    `KeyNotFound` when the image is not there, else `refuse(key, why)` when its sidecar is missing,
    not JSON or records no request (what a re-run or an upscale of it needs)."""
    if store.head(key) is None:
        raise KeyNotFound(f"no image with key '{key}'")
    try:
        sidecar = json.loads(store.get(meta_key_for(key)))
    except KeyNotFound:
        raise refuse(key, "it has no sidecar recording how it was made") from None
    except ValueError:
        raise refuse(key, "its sidecar is not JSON") from None
    if not isinstance(sidecar, dict) or not isinstance(sidecar.get("request"), dict):
        raise refuse(key, "its sidecar records no request")
    return sidecar


def stored_spec(key: str, store: Store, settings: Settings) -> RenderSpec:
    """The resolved request recorded beside the image `key`."""
    key = validate_image_key(key, settings.s3_prefix)
    request = recorded_sidecar(key, store, _not_rerunnable)["request"]
    # A re-run is a new job of whoever asks: the original's webhook (stored redacted) is not its.
    request = {name: value for name, value in request.items() if name != "webhook"}
    if _has_secret_fields(request):
        raise _not_rerunnable(key, "its stored request had secret fields blanked")
    try:
        return RenderSpec.model_validate(request)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'request'}: {e['msg']}" for e in exc.errors())
        raise _not_rerunnable(key, f"its stored request does not fit this version ({problems})") from None


def rerun_spec(body: RerunRequest, registry: ModelRegistry, settings: Settings, store: Store) -> RenderSpec:
    """The stored request of `body.key`, to enqueue again: same seed (the same pixels on the same
    device and versions), the given `seed`, or a fresh one with `new_seed`."""
    if body.seed is not None and body.new_seed:
        raise ValidationFailed(
            "give `seed` or `new_seed`, not both",
            remediation=["Send `seed` for a chosen seed, `new_seed: true` for a random one, or neither."],
            detail=[{"field": "new_seed", "message": "not with seed"}],
        )
    spec = stored_spec(body.key, store, settings)
    descriptor = descriptor_for(spec.engine)
    # What may have gone since the image was made is refused now, rather than failing the job later:
    # a model or LoRA removed from models.yaml, an input image deleted.
    if descriptor.is_local and spec.model is not None:
        registry.get(spec.model)
    for lora in spec.loras:
        registry.lora(lora.name)
    for field, input_key in (("image", spec.image), ("mask", spec.mask)):
        if input_key is not None:
            require_stored(store, input_key, field=field)
    if body.new_seed:
        return reseeded(spec, secrets.randbelow(MAX_SEED + 1))
    if body.seed is not None:
        return reseeded(spec, body.seed)
    return spec


def reseeded(spec: RenderSpec, seed: int) -> RenderSpec:
    """`spec` with another seed; a post-processing job's operations recorded their seed (the job's,
    resolved), so they take the new one too, else the grain would not change."""
    update: dict[str, object] = {"seed": seed}
    if spec.postprocess is not None:
        ops = [{key: value for key, value in op.items() if key != "seed"} for op in spec.postprocess.ops]
        update["postprocess"] = spec.postprocess.model_copy(update={"ops": ops})
    return spec.model_copy(update=update)
