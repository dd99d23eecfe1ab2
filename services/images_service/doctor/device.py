"""The device check: what torch sees (CUDA, MPS or only the CPU) against IMAGES_DEVICE, probed in a
child interpreter (`device_probe`) with a time bound, so the doctor never imports torch."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from ..engines.descriptors import is_local_engine
from ..settings import Settings
from .result import CheckResult

DEVICE_TIMEOUT_S = 45.0
"""Importing torch the first time after boot reads a few hundred MB from disk; this is generous."""

PROBE_MODULE = "services.images_service.doctor.device_probe"
"""Run with ``python -m``; named, not imported, so this process never loads torch through it."""


def probe_device(timeout: float = DEVICE_TIMEOUT_S) -> dict[str, Any]:
    """What torch sees in a child interpreter: ``{"torch": None, ...}`` when it is not installed."""
    completed = subprocess.run(
        [sys.executable, "-m", PROBE_MODULE],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    if completed.returncode != 0 or not lines:
        tail = (completed.stderr or completed.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"the torch probe exited with {completed.returncode}: {tail[0]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def check_device(settings: Settings, timeout: float = DEVICE_TIMEOUT_S) -> CheckResult:
    uses_diffusers = is_local_engine(settings.image_engine)
    try:
        info = probe_device(timeout)
    except subprocess.TimeoutExpired:
        return CheckResult(
            "device",
            "warn",
            f"importing torch took longer than {timeout:.0f} s",
            ["Run the doctor again (the first import after boot is slow); check the disk if it persists."],
        )
    except (OSError, RuntimeError, ValueError) as exc:
        return CheckResult("device", "warn", f"could not probe torch: {exc}", [])
    if info.get("torch") is None:
        return CheckResult(
            "device",
            "warn" if uses_diffusers else "info",
            "torch not installed: this machine can run the API and gateway, not a diffusers worker",
            [
                "On a worker machine: make install, or pip install -c requirements.lock -e '.[worker]' "
                "(see README for the CUDA/MPS torch build)."
            ]
            if uses_diffusers
            else [],
            info,
        )
    wanted = (settings.device or "").split(":")[0]
    version = info["torch"]
    if info.get("cuda"):
        found = f"CUDA {info.get('cuda_version')}: {', '.join(info.get('cuda_devices') or [])}"
    elif info.get("mps"):
        found = "Apple MPS"
    else:
        found = "CPU only"
    if wanted in {"cuda", "mps"} and not info.get(wanted):
        return CheckResult(
            "device",
            "fail",
            f"IMAGES_DEVICE={settings.device} but torch {version} sees {found}",
            ["Install the torch build for this hardware (README), or unset IMAGES_DEVICE to detect it."],
            info,
        )
    if found == "CPU only" and wanted != "cpu":
        return CheckResult(
            "device",
            "warn",
            f"torch {version} sees no GPU: renders run on the CPU (SDXL takes minutes per image)",
            [
                "NVIDIA: pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128",
                "Or set IMAGES_DEVICE=cpu to say CPU is intended.",
            ],
            info,
        )
    if info.get("mps") and settings.pytorch_mps_high_watermark_ratio is None:
        return CheckResult(
            "device",
            "warn",
            f"torch {version} on {found}, but PYTORCH_MPS_HIGH_WATERMARK_RATIO is unset: large models may"
            " stop with an out-of-memory error",
            ["Set PYTORCH_MPS_HIGH_WATERMARK_RATIO=0.0 for the worker (the launchd plists do)."],
            info,
        )
    return CheckResult("device", "ok", f"torch {version} on {found}", details=info)
