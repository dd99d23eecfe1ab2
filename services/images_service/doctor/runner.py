"""Running checks side by side, each bounded in time: a check that crashes or hangs is itself
reported as failed, never raised."""

from __future__ import annotations

import threading
from collections.abc import Callable

from .result import CheckResult

CHECK_TIMEOUT_S = 15.0
"""Default bound of one check. S3 makes at most two attempts with a 2 s connect timeout, Redis
connects within 2 s; anything slower than this is reported as hung rather than waited for."""

CheckFn = Callable[[], "CheckResult | list[CheckResult]"]
"""A check: one result, or one per item it looked at (models.yaml entries)."""


def run_bounded(name: str, check: CheckFn, timeout: float) -> list[CheckResult]:
    """Run `check` in a daemon thread; a crash or a hang becomes a failed result, never an exception.

    A daemon thread, not an executor: a check stuck in a socket call must not keep the process alive.
    """
    box: list[list[CheckResult]] = []

    def target() -> None:
        try:
            result = check()
            box.append(result if isinstance(result, list) else [result])
        except Exception as exc:  # a doctor that crashes on a broken system is no doctor
            box.append(
                [
                    CheckResult(
                        name,
                        "fail",
                        f"the {name} check itself failed: {type(exc).__name__}: {exc}",
                        ["Report this as a bug, with the output of `kitty-images doctor --json`."],
                    )
                ]
            )

    thread = threading.Thread(target=target, name=f"doctor-{name}", daemon=True)
    thread.start()
    thread.join(timeout)
    if box:
        return box[0]
    return [
        CheckResult(
            name,
            "fail",
            f"the {name} check did not finish within {timeout:.0f} s",
            [f"Something on the way to {name} hangs: check its address, firewalls and its load."],
        )
    ]


def run_checks(checks: list[tuple[str, CheckFn, float]]) -> list[CheckResult]:
    """Run all checks at once (the slowest bounds the total); results in the order given."""
    results: list[list[CheckResult]] = [[] for _ in checks]

    def one(index: int, name: str, check: CheckFn, timeout: float) -> None:
        results[index] = run_bounded(name, check, timeout)

    threads = [
        threading.Thread(target=one, args=(index, *spec), name=f"doctor-run-{spec[0]}", daemon=True)
        for index, spec in enumerate(checks)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()  # each returns within its own timeout
    return [result for group in results for result in group]
