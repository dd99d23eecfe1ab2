"""The engine checks: IMAGE_ENGINE names an engine of this build, and each server engine (ComfyUI,
A1111, InvokeAI) answers its health call; only the selected one's trouble is a failure."""

from __future__ import annotations

from ..engines.descriptors import descriptor_for
from ..settings import Settings
from .result import CheckResult, Status

ENGINE_TIMEOUT_S = 6.0
"""Bound of one server-engine health call (the adapters' own health timeout is shorter)."""


def check_engine_name(settings: Settings) -> CheckResult:
    from ..engines import ENGINES

    if settings.image_engine not in ENGINES:
        return CheckResult(
            "engine",
            "fail",
            f"IMAGE_ENGINE={settings.image_engine} is not an engine of this build",
            [f"Set IMAGE_ENGINE to one of: {', '.join(ENGINES)}"],
        )
    return CheckResult("engine", "ok", f"IMAGE_ENGINE={settings.image_engine}")


def check_server_engine(name: str, settings: Settings) -> CheckResult:
    from ..engines import make_engine
    from ..models import ModelRegistry

    selected = settings.image_engine == name
    trouble: Status = "fail" if selected else "info"
    aside = "" if selected else f" (IMAGE_ENGINE is {settings.image_engine}, so this is only informational)"
    try:
        engine = make_engine(name, settings, ModelRegistry(settings.models_yaml))
    except ImportError as exc:
        return CheckResult(
            name,
            trouble,
            f"the {name} adapter is not available in this build ({exc}){aside}",
            ["Install a build of kitty-images that includes it, or choose another IMAGE_ENGINE."]
            if selected
            else [],
        )
    except Exception as exc:  # an adapter that cannot even be built is misconfigured
        return CheckResult(
            name,
            trouble,
            f"the {name} adapter cannot be set up: {exc}{aside}",
            [f"Check {descriptor_for(name).settings_hint()}."] if selected else [],
        )
    try:
        health = engine.health()
    finally:
        close = getattr(engine, "close", None)
        if close is not None:
            close()
    details = {"status": health.status, "version": health.version}
    if health.status == "ready":
        version = f" {health.version}" if health.version else ""
        detail = f": {health.detail}" if health.detail else ""
        return CheckResult(name, "ok", f"{name}{version} is ready{detail}", details=details)
    hint = descriptor_for(name).settings_hint()
    remedies = [f"Start {name} (bound to 127.0.0.1), or fix {hint}."] if selected else []
    return CheckResult(name, trouble, f"{name} is {health.status}: {health.detail}{aside}", remedies, details)
