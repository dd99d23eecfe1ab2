"""CUDA speed-ups for a loaded diffusers pipeline: fused QKV projections, a channels-last UNet, SDPA
attention (checked, restored if missing), VAE tiling for large images, and opt-in torch.compile.

Nothing here changes a pipeline off CUDA: on the CPU and MPS every function is a no-op. The module
imports only torch and the standard library (diffusers inside functions), so `bench/gpu_sdxl.py`
loads this very file on a bare CUDA machine and times exactly what workers run.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

logger = logging.getLogger("kitty.images.engines.acceleration")

VAE_TILING_MIN_PIXELS = 1536 * 1536
"""Images larger than this (width × height) are decoded by the VAE in tiles on CUDA: SDXL's VAE
needs ~10 GB to decode 2048×2048 in one piece and ~3 GB tiled; below it tiling only costs time."""

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
"""`torch.compile` modes IMAGES_TORCH_COMPILE may name."""

COMPILE_DEFAULT_MODE = "max-autotune-no-cudagraphs"
"""The mode IMAGES_TORCH_COMPILE=1 means: autotuned kernels without CUDA graphs, which would be
re-recorded (and hold memory) for every image size and batch a worker sees."""

_ON = frozenset({"1", "true", "yes", "on"})
_OFF = frozenset({"", "0", "false", "no", "off", "none"})

SDPA_PROCESSOR_SUFFIX = "2_0"
"""diffusers names its attention processors built on `F.scaled_dot_product_attention` `*2_0`."""

CLASSIC_PROCESSOR = "AttnProcessor"
"""diffusers' pre-SDPA processor: explicit softmax(QKᵀ)V, more memory and time than SDPA."""


def compile_mode(setting: str | None) -> str | None:
    """The torch.compile mode an IMAGES_TORCH_COMPILE value asks for, or None for off.

    ``1``/``true``/``on`` mean `COMPILE_DEFAULT_MODE`; a mode name means that mode; unset,
    ``0``/``false``/``off`` mean off. Anything else is a `ValueError` naming the choices.
    """
    value = (setting or "").strip().lower()
    if value in _OFF:
        return None
    if value in _ON:
        return COMPILE_DEFAULT_MODE
    if value in COMPILE_MODES:
        return value
    raise ValueError(
        f"IMAGES_TORCH_COMPILE={setting!r} is not understood: use 1 (= {COMPILE_DEFAULT_MODE}), 0, "
        f"or one of {', '.join(COMPILE_MODES)}"
    )


def denoiser(pipe: Any) -> Any:
    """The pipeline's UNet (SD 1.x, SDXL) or transformer (SD3, Flux), or None."""
    for name in ("unet", "transformer"):
        model = getattr(pipe, name, None)
        if isinstance(model, torch.nn.Module):
            return model
    return None


def attention_processors(model: Any) -> list[str]:
    """Class names of the attention processors `model` uses, sorted, each once."""
    processors = getattr(model, "attn_processors", None)
    if not isinstance(processors, dict):
        return []
    return sorted({type(processor).__name__ for processor in processors.values()})


def uses_sdpa(model: Any) -> bool:
    """True when every attention processor of `model` runs torch's scaled-dot-product attention."""
    names = attention_processors(model)
    return bool(names) and all(name.endswith(SDPA_PROCESSOR_SUFFIX) for name in names)


def ensure_sdpa(model: Any) -> list[str]:
    """Put the classic processor back on SDPA (diffusers' default since torch 2.0, kept unless a
    model or an earlier call replaced it); return the processors now in use."""
    if CLASSIC_PROCESSOR in attention_processors(model):
        from diffusers.models.attention_processor import AttnProcessor2_0

        model.set_attn_processor(AttnProcessor2_0())
    return attention_processors(model)


def accelerate(pipe: Any, device: torch.device, compile_mode: str | None = None) -> list[str]:
    """Apply the CUDA speed-ups to a pipeline already moved to `device`; return their names
    (recorded with each image). Off CUDA nothing is changed and the list is empty."""
    if device.type != "cuda":
        return []
    applied: list[str] = []
    # Convolutions pick their fastest algorithm once per shape; every job of a size reuses it.
    torch.backends.cudnn.benchmark = True
    model = denoiser(pipe)
    if model is not None:
        ensure_sdpa(model)
    for part, module in (("denoiser", model), ("vae", getattr(pipe, "vae", None))):
        fuse = getattr(module, "fuse_qkv_projections", None)
        if fuse is None:
            continue
        try:
            # One matmul for Q, K and V (K and V for cross-attention) instead of three.
            fuse()
            applied.append(f"fused_qkv:{part}")
        except (ValueError, NotImplementedError, AttributeError) as exc:  # e.g. added-KV processors
            logger.info("QKV projections of the %s left unfused: %s", part, exc)
    unet = getattr(pipe, "unet", None)
    if isinstance(unet, torch.nn.Module):
        # Tensor cores read NHWC convolutions without transposing them first.
        unet.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # accepted at runtime
        applied.append("channels_last")
    if uses_sdpa(model):
        applied.append("sdpa")
    if compile_mode and model is not None:
        compile_denoiser(model, compile_mode)
        applied.append(f"torch_compile:{compile_mode}")
    return applied


def compile_denoiser(model: Any, mode: str) -> None:
    """Compile `model` in place (its type is kept, so pipelines see the same module); the work is
    done by its first call, which `DiffusersEngine.preload` makes at worker start."""
    import torch._inductor.config as inductor

    # diffusers' tuning for UNets ("Accelerate inference of text-to-image diffusion models"):
    # 1×1 convolutions as matmuls, a finer autotune search, no epilogue fusion.
    inductor.conv_1x1_as_mm = True
    inductor.coordinate_descent_tuning = True
    inductor.coordinate_descent_check_all_directions = True
    inductor.epilogue_fusion = False
    model.compile(mode=mode, fullgraph=False)


def set_vae_tiling(pipe: Any, device: torch.device, width: int, height: int) -> bool:
    """Decode in tiles on CUDA when the image is larger than `VAE_TILING_MIN_PIXELS`, in one piece
    otherwise (a resident pipeline serves both); return whether tiling is on."""
    vae = getattr(pipe, "vae", None)
    if device.type != "cuda" or vae is None or not hasattr(vae, "enable_tiling"):
        return False
    tiled = width * height > VAE_TILING_MIN_PIXELS
    if tiled:
        vae.enable_tiling()
    else:
        vae.disable_tiling()
    return tiled
