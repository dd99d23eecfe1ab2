"""The settings check: the images-service's and the gateway's settings read from the environment
(and `.env`) as the services read them; invalid ones are reported by variable, never by value."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel, ValidationError

from ..settings import Settings
from .result import CheckResult


@dataclass
class StackSettings:
    images: Settings | None
    """None when the images-service's settings are invalid: no other check can run then."""
    read: list[BaseModel] = field(default_factory=list)
    """Every service's settings that could be read: summarised in the report, their secrets scrubbed."""
    problems: list[CheckResult] = field(default_factory=list)


def settings_error(name: str, exc: ValidationError) -> CheckResult:
    # The messages only: pydantic's error dicts quote the input value, which may be a secret.
    problems = [f"{'.'.join(str(part) for part in err['loc'])}: {err['msg']}" for err in exc.errors()]
    return CheckResult(
        f"{name} settings",
        "fail",
        f"the {name} settings are invalid: " + "; ".join(problems),
        ["Fix these variables in the environment or .env (see .env.example)."],
    )


def read_stack_settings() -> StackSettings:
    """Read the settings afresh from the environment (and `.env`): not a cached copy."""
    # The images-service's one import of the gateway: the doctor checks the stack on this machine,
    # and GATEWAY_API_KEYS and IMAGES_API_KEY must be validated, and scrubbed from the report, too.
    from services.gateway.settings import GatewaySettings

    stack = StackSettings(images=None)
    try:
        stack.images = Settings()
        stack.read.append(stack.images)
    except ValidationError as exc:
        stack.problems.append(settings_error("images-service", exc))
    try:
        stack.read.append(GatewaySettings())
    except ValidationError as exc:
        stack.problems.append(settings_error("gateway", exc))
    return stack
