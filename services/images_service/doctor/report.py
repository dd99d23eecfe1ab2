"""The doctor's report: every check's result, the settings (secrets redacted) and package versions;
as the --json bundle (`Report.to_dict`) or as text for a terminal (`render_text`)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from ..redaction import scrub
from .result import CheckResult, Status

LABELS: dict[Status, str] = {"ok": "ok", "info": "info", "warn": "warn", "fail": "FAIL"}

UNSET = "(unset)"


@dataclass
class Report:
    checks: list[CheckResult]
    settings: dict[str, Any]
    versions: dict[str, str | None]
    generated_at: str
    audit: dict[str, Any] = field(default_factory=dict)
    """The newest audit log entries (prompts as hashes at most), or why they could not be read."""

    @property
    def failed(self) -> bool:
        return any(check.status == "fail" for check in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": not self.failed,
            "generated_at": self.generated_at,
            "checks": [asdict(check) for check in self.checks],
            "settings": self.settings,
            "versions": self.versions,
            "audit": self.audit,
        }

    def scrubbed(self, secrets: set[str]) -> Report:
        """The same report with every literal secret removed from every text in it."""
        if not secrets:
            return self
        data = json.loads(
            scrub(json.dumps(self.to_dict(), default=str), {json.dumps(s)[1:-1] for s in secrets})
        )
        return Report(
            checks=[CheckResult(**check) for check in data["checks"]],
            settings=data["settings"],
            versions=data["versions"],
            generated_at=data["generated_at"],
            audit=data["audit"],
        )


def render_text(report: Report, *, show_settings: bool = True) -> str:
    width = max((len(check.name) for check in report.checks), default=8)
    lines = []
    for check in report.checks:
        lines.append(f"{LABELS[check.status]:<5} {check.name:<{width}}  {check.message}")
        lines.extend(f"      {'':<{width}}  → {remedy}" for remedy in check.remedies)
    if show_settings:
        lines.append("")
        lines.append("settings (secrets redacted):")
        lines.extend(
            f"  {name}={UNSET if value is None else value}" for name, value in report.settings.items()
        )
    failures = sum(check.status == "fail" for check in report.checks)
    warnings = sum(check.status == "warn" for check in report.checks)
    lines.append("")
    if failures:
        lines.append(f"{failures} problem(s) to fix, {warnings} warning(s).")
    else:
        lines.append(f"no problems found, {warnings} warning(s).")
    return "\n".join(lines)
