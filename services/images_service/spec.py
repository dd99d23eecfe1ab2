"""Resolve a `GenerateRequest` into the `RenderSpec` a worker renders: model, engine, size, steps,
cfg and seed all fixed at submit time, a preset's template and quality level applied, so the stored
spec alone reproduces the image (and a re-run enqueues it as it is)."""

from __future__ import annotations

import secrets

from services.contracts import MAX_SEED, GenerateRequest, RenderSpec

from .engines.descriptors import descriptor_for, engines_with
from .errors import ValidationFailed
from .models import FALLBACK_DEFAULTS, ModelEntry, ModelRegistry
from .presets import apply_preset
from .settings import Settings
from .storage import Store
from .uploads import resolve_inputs


def _check_refiner(request: GenerateRequest, entry: ModelEntry | None, registry: ModelRegistry) -> None:
    if not request.refiner:
        return
    if entry is None or not entry.refiner:
        name = entry.name if entry else request.model
        raise ValidationFailed(
            f"model '{name}' has no refiner configured",
            remediation=[
                f"Add 'refiner: <model name>' to the '{name}' entry of models.yaml,",
                "or send the request without refiner.",
            ],
        )
    registry.get(entry.refiner)


def resolve_spec(
    request: GenerateRequest, registry: ModelRegistry, settings: Settings, store: Store | None = None
) -> RenderSpec:
    """`store` is where `image`/`mask` keys are looked up (404 when missing) and the input's size
    is read; without one they are checked for shape only and the size comes from the model."""
    descriptor = descriptor_for(request.engine or settings.image_engine)
    engine = descriptor.name
    if request.workflow is not None and not descriptor.capabilities.raw_workflow:
        takers = engines_with("raw_workflow")
        raise ValidationFailed(
            f"a raw workflow runs only on the {' or '.join(takers)} engine",
            remediation=[f'Add "engine": "{takers[0]}", or drop "workflow" to use the built-in template.'],
        )
    entry: ModelEntry | None
    if descriptor.is_local:
        # A local engine loads its models from models.yaml.
        model: str | None = request.model or registry.default_name()
        entry = registry.get(model)  # type: ignore[arg-type]
    else:
        # A server engine renders with its own checkpoints: `model` names one of them, or none
        # for whatever it has loaded. A models.yaml entry of that name still lends its defaults.
        model = request.model
        entry = registry.entries().get(model) if model else None
    _check_refiner(request, entry, registry)
    inputs = resolve_inputs(request, engine, registry, settings, store)
    styled = apply_preset(request)

    def default(key: str) -> object:
        return entry.default(key) if entry else FALLBACK_DEFAULTS[key]

    return RenderSpec(
        prompt=styled.prompt,
        negative_prompt=styled.negative_prompt,
        model=model,
        width=inputs.width or styled.width or default("width"),  # type: ignore[arg-type]
        height=inputs.height or styled.height or default("height"),  # type: ignore[arg-type]
        steps=styled.steps or default("steps"),  # type: ignore[arg-type]
        cfg=styled.cfg if styled.cfg is not None else default("cfg"),  # type: ignore[arg-type]
        seed=request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 1),
        scheduler=request.scheduler or default("scheduler"),  # type: ignore[arg-type]
        refiner=request.refiner,
        num_images=request.num_images,
        engine=engine,
        workflow=request.workflow,
        image=inputs.image,
        mask=inputs.mask,
        strength=inputs.strength,
        loras=inputs.loras,
        preset=styled.preset,
        quality=styled.quality,
    )
