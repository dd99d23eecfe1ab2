"""What torch sees on this machine, printed to stdout as one JSON line. The doctor runs this in a
child interpreter (``python -m services.images_service.doctor.device_probe``) so that it never
imports torch itself: slow, and absent on API hosts. Imports nothing of ours."""

from __future__ import annotations

import json
from typing import Any


def probe() -> dict[str, Any]:
    """``{"torch": None, "error": ...}`` when torch cannot be imported."""
    try:
        import torch
    except Exception as exc:  # an API host has no torch; a broken install raises more than ImportError
        return {"torch": None, "error": f"{type(exc).__name__}: {exc}"}
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
        "cuda_devices": [],
        "mps": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
    }
    if info["cuda"]:
        info["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["cuda_version"] = torch.version.cuda
    return info


def main() -> None:
    print(json.dumps(probe()))


if __name__ == "__main__":
    main()
