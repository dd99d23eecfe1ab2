"""Where and in what precision pipelines run, and the device's memory: picking the device and dtype,
freeing cached memory, recognizing its exhaustion, and the short text of a library's failure that a
user-facing message keeps."""

from __future__ import annotations

import gc

import diffusers
import torch

from ...errors import EngineError

ERROR_TEXT_LIMIT = 300
"""Characters of a library exception kept in a user-facing message; the full trace goes to the log."""

DTYPE_KWARG = "dtype" if hasattr(diffusers.utils.deprecation_utils, "_resolve_dtype") else "torch_dtype"
"""`from_pretrained`'s precision keyword: diffusers renamed `torch_dtype` to `dtype` (the old name
warns, then goes away in 1.0)."""


def pick_device(requested: str | None = None) -> torch.device:
    """`requested` if given, else the first of CUDA, MPS, CPU that is available."""
    if requested:
        try:
            device = torch.device(requested)
        except (RuntimeError, ValueError) as exc:
            raise EngineError(
                f"'{requested}' is not a device torch knows",
                remediation=["Set IMAGES_DEVICE to cuda, cuda:N, mps or cpu, or leave it unset to detect."],
            ) from exc
        unavailable = (device.type == "cuda" and not torch.cuda.is_available()) or (
            device.type == "mps" and not torch.backends.mps.is_available()
        )
        if unavailable:
            raise EngineError(
                f"device '{requested}' was asked for but this torch build or machine has none",
                remediation=["Unset IMAGES_DEVICE to detect the device, or install a torch build with it."],
            )
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    elif torch.backends.mps.is_available():
        device = torch.device("mps")
    else:
        device = torch.device("cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def pick_dtype(device: torch.device) -> torch.dtype:
    """Half precision on CUDA (bf16 where the GPU has it natively: fp16 overflows in SDXL's VAE);
    fp32 elsewhere (fp16 on MPS yields black images on several models; CPUs gain nothing)."""
    if device.type == "cuda":
        with torch.cuda.device(device):
            if torch.cuda.is_bf16_supported(including_emulation=False):
                return torch.bfloat16
        return torch.float16
    return torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    """``float16``, ``bfloat16``, ``float32``: how logs and the sidecar name a precision."""
    return str(dtype).removeprefix("torch.")


def free_memory(device: torch.device) -> None:
    """Collect what dropped pipelines left and hand the device's cached blocks back."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def short_error(exc: BaseException) -> str:
    """``Type: first line`` of `exc`, cut to `ERROR_TEXT_LIMIT` characters."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= ERROR_TEXT_LIMIT else text[: ERROR_TEXT_LIMIT - 1] + "…"
