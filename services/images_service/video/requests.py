"""Admitting a video request (``kind: "video"`` on ``POST /api/images/generate``): the model must be a
video model, the inputs those of its family (SVD: a start image, no prompt; AnimateDiff: a prompt, no
image), the clip no longer than the family takes; every default resolved into the `RenderSpec`."""

from __future__ import annotations

import secrets

from services.contracts import MAX_SEED, GenerateRequest, RenderSpec, VideoSettings

from ..engines.descriptors import descriptor_for, engines_with
from ..errors import ValidationFailed
from ..models import ModelEntry, ModelRegistry
from ..settings import Settings
from ..storage import Store
from ..uploads import check_input_key, require_stored
from ..webhooks import check_webhook_url
from .families import (
    CLIP_DEFAULTS,
    DECODE_CHUNK_FRAMES,
    SVD_MOTION_BUCKET,
    SVD_NOISE_AUG,
    VideoFamily,
    is_video_family,
    motion_adapter_frames,
)


def video_models(registry: ModelRegistry) -> list[str]:
    return [name for name, entry in registry.entries().items() if is_video_family(entry.family)]


def refuse_video_model(entry: ModelEntry | None) -> None:
    """An image request naming a video model: 400 saying to ask for a clip."""
    if entry is not None and is_video_family(entry.family):
        raise ValidationFailed(
            f"model '{entry.name}' ({entry.family}) renders video, not images",
            remediation=['Send "kind": "video" for a clip, or name an image model.'],
            detail={"model": entry.name, "kind": "video"},
        )


def resolve_video_spec(
    request: GenerateRequest, registry: ModelRegistry, settings: Settings, store: Store | None = None
) -> RenderSpec:
    """`request` (kind video) as the spec a worker renders; `ValidationFailed` (400) for a model that
    is not a video model, inputs its family does not take, or a clip longer than it animates."""
    engine = descriptor_for(request.engine or settings.image_engine).name
    if not descriptor_for(engine).capabilities.video:
        takers = engines_with("video")
        raise ValidationFailed(
            f"engine '{engine}' does not render video",
            remediation=[
                f'Send "engine": "{takers[0]}".' if takers else "No engine of this build renders video."
            ],
            detail={"engine": engine},
        )
    known = video_models(registry)
    if request.model is None:
        if not known:
            raise ValidationFailed(
                "no video model is registered",
                remediation=["Register one in models.yaml with `family: svd` or `family: animatediff`."],
            )
        model = known[0]
    else:
        model = request.model
    entry = registry.get(model)
    if not is_video_family(entry.family):
        raise ValidationFailed(
            f"model '{model}' renders images, not video",
            remediation=[f"Name a video model: {', '.join(known)}." if known else "Register a video model."],
            detail={"model": model, "kind": "image"},
        )
    family = VideoFamily(str(entry.family))
    check_family_inputs(request, family)
    if request.image is not None:
        check_input_key(request.image, settings, field="image", allow_gallery=True)
        if store is not None:
            require_stored(store, request.image, field="image")
    clip = CLIP_DEFAULTS[family]
    frames = request.frames or int(entry.defaults.get("frames", clip.frames))
    longest = motion_adapter_frames(entry.motion_adapter) if family is VideoFamily.ANIMATEDIFF else None
    if longest is not None and frames > longest:
        raise ValidationFailed(
            f"the motion adapter of model '{model}' animates at most {longest} frames; "
            f"this request asks for {frames}",
            remediation=[f"Set frames to {longest} or less."],
            detail={"limit": "frames", "allowed": longest, "requested": frames},
        )
    defaults = entry.resolved_defaults
    is_svd = family is VideoFamily.SVD
    motion = SVD_MOTION_BUCKET if request.motion_bucket_id is None else request.motion_bucket_id
    noise = SVD_NOISE_AUG if request.noise_aug_strength is None else request.noise_aug_strength
    return RenderSpec(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        model=model,
        width=request.width or defaults.width,
        height=request.height or defaults.height,
        steps=request.steps or defaults.steps,
        cfg=request.cfg if request.cfg is not None else defaults.cfg,
        seed=request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 1),
        engine=engine,
        image=request.image,
        webhook=request.webhook and check_webhook_url(request.webhook, settings),
        video=VideoSettings(
            family=family.value,
            frames=frames,
            fps=request.fps or int(entry.defaults.get("fps", clip.fps)),
            motion_bucket_id=motion if is_svd else None,
            noise_aug_strength=noise if is_svd else None,
            decode_chunk_size=DECODE_CHUNK_FRAMES,
        ),
    )


def check_family_inputs(request: GenerateRequest, family: VideoFamily) -> None:
    """What `family` animates from: SVD a start image alone, AnimateDiff a prompt alone."""
    if family is VideoFamily.SVD:
        if request.image is None:
            raise ValidationFailed(
                "Stable Video Diffusion animates a start image; none was given",
                remediation=["Send `image`: an upload's key (POST /api/images/uploads) or a stored image's."],
                detail={"family": family.value, "field": "image"},
            )
        given = [name for name in ("prompt", "negative_prompt") if getattr(request, name)]
        if given:
            raise ValidationFailed(
                f"Stable Video Diffusion takes no prompt ({', '.join(given)}): it animates the start "
                "image alone",
                remediation=["Drop `prompt` and `negative_prompt`, or name an AnimateDiff model."],
                detail={"family": family.value, "fields": given},
            )
        return
    if request.image is not None:
        raise ValidationFailed(
            "AnimateDiff renders from a prompt; a start image is not supported",
            remediation=["Drop `image`, or name a Stable Video Diffusion model to animate a picture."],
            detail={"family": family.value, "field": "image"},
        )
    if not request.prompt.strip():
        raise ValidationFailed(
            "AnimateDiff renders from a prompt; none was given",
            remediation=["Send `prompt`: what the clip shows."],
            detail={"family": family.value, "field": "prompt"},
        )
    given = [
        name for name in ("motion_bucket_id", "noise_aug_strength") if getattr(request, name) is not None
    ]
    if given:
        raise ValidationFailed(
            f"{', '.join(given)} are Stable Video Diffusion's; AnimateDiff has none",
            remediation=[f"Drop {', '.join(given)}."],
            detail={"family": family.value, "fields": given},
        )
