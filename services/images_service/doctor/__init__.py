"""`kitty-images doctor`: checks what a deployment depends on (Redis, storage, engines, models, the
device, disk) and says in plain words what is wrong and what to do, with every secret redacted.

One check a module; `diagnosis` runs them, `report` renders the result. Every check is bounded in
time and never raises: a check that crashes or hangs is itself reported (`runner`). The diffusers
engine is never built here (it imports torch); the device is probed in a child interpreter.
"""

from __future__ import annotations

from .diagnosis import CHECK_NAMES, diagnose
from .report import Report, render_text
from .result import CheckResult, Status

__all__ = ["CHECK_NAMES", "CheckResult", "Report", "Status", "diagnose", "render_text"]
