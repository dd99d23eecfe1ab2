"""Resolve a `GenerateRequest` into the `RenderSpec` a worker renders: model, engine, size, steps,
cfg and seed all fixed at submit time, so the stored spec alone reproduces the image."""

from __future__ import annotations

import secrets

from services.contracts import MAX_SEED, GenerateRequest, RenderSpec

from .engines import check_engine_name
from .errors import ValidationFailed
from .models import ModelRegistry
from .settings import Settings


def resolve_spec(request: GenerateRequest, registry: ModelRegistry, settings: Settings) -> RenderSpec:
    engine = check_engine_name(request.engine or settings.image_engine)
    model_name = request.model or registry.default_name()
    entry = registry.get(model_name)
    if request.refiner and not entry.refiner:
        raise ValidationFailed(
            f"model '{model_name}' has no refiner configured",
            remediation=[
                f"Add 'refiner: <model name>' to the '{model_name}' entry of models.yaml,",
                "or send the request without refiner.",
            ],
        )
    if request.refiner:
        registry.get(entry.refiner)  # type: ignore[arg-type]
    return RenderSpec(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        model=model_name,
        width=request.width or entry.default("width"),
        height=request.height or entry.default("height"),
        steps=request.steps or entry.default("steps"),
        cfg=request.cfg if request.cfg is not None else entry.default("cfg"),
        seed=request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 1),
        scheduler=request.scheduler or entry.default("scheduler"),
        refiner=request.refiner,
        num_images=request.num_images,
        engine=engine,
    )
