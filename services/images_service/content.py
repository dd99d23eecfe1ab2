"""What happens to rendered images between the engine and storage: the content gate (safety.py),
then the watermark (watermark.py). The worker calls `finish_render` right before storing a job's
images and copies `sidecar_fields` of each image into its sidecar (and the PNG's ``kitty`` chunk).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from services.contracts import RenderSpec

from .engines import RenderedImage, RenderResult
from .safety import checker_for, gate, policy_for
from .watermark import mark

if TYPE_CHECKING:
    from .models import ModelRegistry
    from .settings import Settings


@dataclass
class FinishedImage(RenderedImage):
    """A rendered image after the gate and the watermark, with what they recorded."""

    record: dict[str, Any] = field(default_factory=dict)
    """Top-level sidecar fields: ``safety`` (when the gate ran), ``watermark`` (when one was made)."""


def sidecar_fields(rendered: RenderedImage) -> dict[str, Any]:
    """What the gate and the watermark add to an image's sidecar (nothing for an unfinished one)."""
    return dict(rendered.record) if isinstance(rendered, FinishedImage) else {}


def finish_render(
    settings: Settings,
    registry: ModelRegistry,
    spec: RenderSpec,
    result: RenderResult,
    *,
    tier: str | None,
    key_id: str | None = None,
) -> RenderResult:
    """`result` with its images checked under the job's policy (blurred where flagged) and
    watermarked when IMAGES_WATERMARK is set. Raises `SafetyFiltered` when the policy is ``block``
    and an image is flagged: the job then stores nothing. `tier` is the submitting key's (None with
    keys off)."""
    policy = policy_for(settings, tier, key_id)
    if policy == "off" and not settings.watermark:
        return result
    images = [rendered.image for rendered in result.images]
    records: list[dict[str, Any]] = [{} for _ in images]
    timings = dict(result.timings)
    if policy != "off":
        started = time.perf_counter()
        outcomes = gate(images, checker_for(settings, registry, spec), policy)
        timings["safety_s"] = round(time.perf_counter() - started, 4)
        images = [outcome.image for outcome in outcomes]
        for record, outcome in zip(records, outcomes, strict=True):
            record["safety"] = outcome.record
    if settings.watermark:
        started = time.perf_counter()
        for position, image in enumerate(images):
            images[position], made = mark(image, settings.watermark)
            if made is not None:
                records[position]["watermark"] = made
        timings["watermark_s"] = round(time.perf_counter() - started, 4)
    finished: list[RenderedImage] = [
        FinishedImage(image=image, seed=rendered.seed, text_chunks=rendered.text_chunks, record=record)
        for image, rendered, record in zip(images, result.images, records, strict=True)
    ]
    return replace(result, images=finished, timings=timings)
