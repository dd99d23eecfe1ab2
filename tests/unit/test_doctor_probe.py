"""The doctor never loads torch into its own process: the device is probed by a module run in a child
interpreter, which answers in one JSON line even where torch cannot be imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from services.images_service.doctor.device import PROBE_MODULE


def test_importing_the_doctor_loads_no_torch() -> None:
    probe = "import sys, services.images_service.doctor; print('torch' in sys.modules)"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "False"


def test_the_probe_reports_a_torch_that_cannot_be_imported(tmp_path: Path) -> None:
    (tmp_path / "torch.py").write_text("raise ImportError('torch is broken here')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    completed = subprocess.run(
        [sys.executable, "-m", PROBE_MODULE], capture_output=True, text=True, check=True, env=env
    )
    assert json.loads(completed.stdout) == {"torch": None, "error": "ImportError: torch is broken here"}
