"""Tiny random-weight video pipelines built locally (no hub), for tests and the bench.

Owns `build_tiny_video_models`: a Stable Video Diffusion model, and for AnimateDiff an SD1.5 model and
a motion adapter, shaped as diffusers' own tests shape theirs (tests/pipelines/stable_video_diffusion,
tests/pipelines/animatediff) but smaller, seeded so every build holds the same weights. They load
through `video.pipelines.load_video_pipeline`, the code real models load through. Their frames are
noise; what they prove is the path: load, seed, step, decode in chunks, encode. torch, diffusers and
transformers are imported inside the functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

TINY_SEED = 0
"""Seed set before each component is built."""

CHANNELS = (32, 64)
"""Block widths of every tiny UNet, VAE and the motion adapter (which must match its UNet's)."""

VISION_HIDDEN, VISION_PATCH = 32, 32
"""The SVD image encoder's width and patch: SVD resizes a PIL start image to CLIP's 224x224 before
encoding it, so the tiny encoder takes 224x224 too, in 49 large patches to stay cheap."""

CLIP_IMAGE_SIZE = 224

SVD_TIME_EMBED_DIM = 32
"""SVD's fps, motion bucket and noise strength are each embedded to this width; the UNet's class
embedding takes the three together."""


@dataclass(frozen=True)
class TinyVideoModels:
    svd: Path
    """A StableVideoDiffusionPipeline folder."""
    sd15: Path
    """The SD1.5-shaped base AnimateDiff animates."""
    motion_adapter: Path
    """A MotionAdapter folder for `sd15`."""


def _seeded(factory: Any, *args: Any, **kwargs: Any) -> Any:
    import torch

    torch.manual_seed(TINY_SEED)
    return factory(*args, **kwargs)


def build_tiny_svd(folder: Path) -> Path:
    from diffusers import (
        AutoencoderKLTemporalDecoder,
        EulerDiscreteScheduler,
        StableVideoDiffusionPipeline,
        UNetSpatioTemporalConditionModel,
    )
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    unet = _seeded(
        UNetSpatioTemporalConditionModel,
        block_out_channels=CHANNELS,
        layers_per_block=1,
        sample_size=32,
        in_channels=8,  # the noisy latents and the start image's latents, stacked
        out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        cross_attention_dim=VISION_HIDDEN,
        num_attention_heads=(2, 4),
        projection_class_embeddings_input_dim=3 * SVD_TIME_EMBED_DIM,
        addition_time_embed_dim=SVD_TIME_EMBED_DIM,
    )
    vae = _seeded(
        AutoencoderKLTemporalDecoder,
        block_out_channels=CHANNELS,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        latent_channels=4,
    )
    vision = CLIPVisionConfig(
        hidden_size=VISION_HIDDEN,
        projection_dim=VISION_HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        image_size=CLIP_IMAGE_SIZE,
        patch_size=VISION_PATCH,
    )
    # SVD-xt's own scheduler config: Karras sigmas over a continuous-time v-prediction EDM schedule.
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        interpolation_type="linear",
        num_train_timesteps=1000,
        prediction_type="v_prediction",
        sigma_max=700.0,
        sigma_min=0.002,
        steps_offset=1,
        timestep_spacing="leading",
        timestep_type="continuous",
        use_karras_sigmas=True,
    )
    pipe: Any = StableVideoDiffusionPipeline(  # Any: diffusers types it without save_pretrained
        vae=vae,
        image_encoder=_seeded(CLIPVisionModelWithProjection, vision),
        unet=unet,
        scheduler=scheduler,
        # Without torchvision, transformers gives its PIL-backed processor: what runs on this worker.
        feature_extractor=CLIPImageProcessor(size=CLIP_IMAGE_SIZE, crop_size=CLIP_IMAGE_SIZE),
    )
    pipe.save_pretrained(folder)
    return folder


def build_tiny_animatediff(base_folder: Path, adapter_folder: Path) -> tuple[Path, Path]:
    """An SD1.5-shaped model (the image suite's tiny one) and a motion adapter for its UNet."""
    from diffusers import MotionAdapter

    from ..tiny import _sd15_pipeline

    _sd15_pipeline().save_pretrained(base_folder)
    adapter = _seeded(
        MotionAdapter,
        block_out_channels=CHANNELS,
        motion_layers_per_block=1,  # the tiny SD1.5 UNet's layers_per_block
        motion_norm_num_groups=2,
        motion_num_attention_heads=4,
    )
    adapter.save_pretrained(adapter_folder)
    return base_folder, adapter_folder


def build_tiny_video_models(root: Path) -> TinyVideoModels:
    sd15, adapter = build_tiny_animatediff(root / "tiny-sd15", root / "tiny-motion-adapter")
    return TinyVideoModels(svd=build_tiny_svd(root / "tiny-svd"), sd15=sd15, motion_adapter=adapter)
