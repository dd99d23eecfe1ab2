"""What one check says: a status, a message in plain words, what to do about it, and details for
the --json bundle."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["ok", "info", "warn", "fail"]


@dataclass
class CheckResult:
    name: str
    status: Status
    message: str
    remedies: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
