"""Resolve a `GenerateRequest` into the `RenderSpec` a worker renders: model, engine, size, steps,
cfg and seed all fixed at submit time, a preset's template and quality level applied, so the stored
spec alone reproduces the image (and a re-run enqueues it as it is)."""

from __future__ import annotations

import secrets

from services.contracts import MAX_SEED, GenerateRequest, RenderSpec

from .engines.descriptors import descriptor_for, engines_with
from .errors import ValidationFailed
from .guidance import resolve_guidance
from .models import FALLBACK_DEFAULTS, ModelEntry, ModelRegistry
from .presets import apply_preset, preset_book
from .refiner import wants_refiner
from .settings import Settings
from .storage import Store
from .uploads import resolve_inputs
from .video.requests import refuse_video_model, resolve_video_spec
from .webhooks import check_webhook_url


def resolve_spec(
    request: GenerateRequest, registry: ModelRegistry, settings: Settings, store: Store | None = None
) -> RenderSpec:
    """`store` is where `image`/`mask` keys are looked up (404 when missing) and the input's size
    is read; without one they are checked for shape only and the size comes from the model. A video
    request resolves through `video.requests`."""
    if request.kind == "video":
        return resolve_video_spec(request, registry, settings, store)
    descriptor = descriptor_for(request.engine or settings.image_engine)
    engine = descriptor.name
    if request.workflow is not None and not descriptor.capabilities.raw_workflow:
        takers = engines_with("raw_workflow")
        raise ValidationFailed(
            f"a raw workflow runs only on the {' or '.join(takers)} engine",
            remediation=[f'Add "engine": "{takers[0]}", or drop "workflow" to use the built-in template.'],
        )
    model: str | None
    entry: ModelEntry | None
    if descriptor.is_local:
        # A local engine loads its models from models.yaml.
        model = request.model or registry.default_name()
        entry = registry.get(model)
        refuse_video_model(entry)
    else:
        # A server engine renders with its own checkpoints: `model` names one of them, or none
        # for whatever it has loaded. A models.yaml entry of that name still lends its defaults.
        model = request.model
        entry = registry.entries().get(model) if model else None
    refiner = wants_refiner(request.refiner, entry, request.model, registry)
    styled = apply_preset(request, preset_book(settings.presets_file))
    inputs = resolve_inputs(request, engine, registry, settings, store)
    guidance = resolve_guidance(request, descriptor, entry, registry, settings, store)
    defaults = entry.resolved_defaults if entry else FALLBACK_DEFAULTS
    return RenderSpec(
        prompt=styled.prompt,
        negative_prompt=styled.negative_prompt,
        model=model,
        width=inputs.width or styled.width or defaults.width,
        height=inputs.height or styled.height or defaults.height,
        steps=styled.steps or defaults.steps,
        cfg=styled.cfg if styled.cfg is not None else defaults.cfg,
        seed=request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 1),
        scheduler=request.scheduler or defaults.scheduler,
        refiner=refiner,
        num_images=request.num_images,
        engine=engine,
        workflow=request.workflow,
        image=inputs.image,
        mask=inputs.mask,
        strength=inputs.strength,
        loras=inputs.loras,
        preset=styled.preset,
        quality=styled.quality,
        webhook=request.webhook and check_webhook_url(request.webhook, settings),
        controls=guidance.controls,
        reference_image=guidance.reference_image,
        reference_weight=request.reference_weight,
        reference_model=guidance.reference_model,
        consent=request.consent,
        hires=guidance.hires,
    )
