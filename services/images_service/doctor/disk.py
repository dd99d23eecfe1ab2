"""The disk check: free space under IMAGES_DATA_DIR for model downloads and new images."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..settings import Settings
from .result import CheckResult

LOW_DISK_BYTES = 10 * 1024**3
"""Below this much free space under IMAGES_DATA_DIR an SDXL download (~7 GB) or a day of images fails."""


def check_disk(settings: Settings) -> CheckResult:
    path = Path(settings.data_dir).expanduser().resolve()
    # The data dir may not exist yet (a fresh machine): measure the disk it will be created on.
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    usage = shutil.disk_usage(probe)
    free_gib = usage.free / 1024**3
    details = {"path": str(path), "free_bytes": usage.free, "total_bytes": usage.total}
    if usage.free < LOW_DISK_BYTES:
        return CheckResult(
            "disk",
            "warn",
            f"only {free_gib:.1f} GiB free under {path}: model downloads and new images may fail",
            ["Free some space, or point IMAGES_DATA_DIR (and HF_HOME) at a larger disk."],
            details,
        )
    return CheckResult("disk", "ok", f"{free_gib:.1f} GiB free under {path}", details=details)
