"""`kitty-images doctor`: checks what a deployment depends on (Redis, storage, engines, models, the
device, disk) and says in plain words what is wrong and what to do, with every secret redacted.

Every check is bounded in time and never raises: a check that crashes or hangs is itself reported.
The diffusers engine is never built here (it imports torch); the device is probed in a subprocess.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from .engines.descriptors import descriptor_for, is_local_engine, server_engines
from .redaction import redact_url, scrub, secret_values, settings_summary
from .settings import Settings

Status = Literal["ok", "info", "warn", "fail"]

CHECK_TIMEOUT_S = 15.0
"""Default bound of one check. S3 makes at most two attempts with a 2 s connect timeout, Redis
connects within 2 s; anything slower than this is reported as hung rather than waited for."""

REDIS_TIMEOUT_S = 2.0
"""Connect and socket timeout of the doctor's Redis client: a local Redis answers in milliseconds."""

ENGINE_TIMEOUT_S = 6.0
"""Bound of one server-engine health call (the adapters' own health timeout is shorter)."""

DEVICE_TIMEOUT_S = 45.0
"""Importing torch the first time after boot reads a few hundred MB from disk; this is generous."""

LOW_DISK_BYTES = 10 * 1024**3
"""Below this much free space under IMAGES_DATA_DIR an SDXL download (~7 GB) or a day of images fails."""

DOCTOR_PROBE_KEY = "doctor-probe-only"
"""Stands in for the filesystem store's signing key while its folder is checked; never signs a URL."""

VERSIONED_PACKAGES = (
    "kitty-images",
    "fastapi",
    "pydantic",
    "redis",
    "rq",
    "boto3",
    "httpx",
    "torch",
    "diffusers",
    "transformers",
)
"""Distributions whose versions go into the --json bundle (read from metadata, nothing imported)."""

DEVICE_PROBE = """
import json
try:
    import torch
except Exception as exc:
    print(json.dumps({"torch": None, "error": f"{type(exc).__name__}: {exc}"}))
    raise SystemExit(0)
info = {"torch": torch.__version__, "cuda": torch.cuda.is_available(), "cuda_devices": [],
        "mps": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())}
if info["cuda"]:
    info["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    info["cuda_version"] = torch.version.cuda
print(json.dumps(info))
"""
"""Runs in a child interpreter so the doctor itself never imports torch (slow, and absent on API hosts)."""


@dataclass
class CheckResult:
    name: str
    status: Status
    message: str
    remedies: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Report:
    checks: list[CheckResult]
    settings: dict[str, Any]
    versions: dict[str, str | None]
    generated_at: str

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
        }


# --- running checks -------------------------------------------------------------------------------
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


# --- the checks -----------------------------------------------------------------------------------
def check_redis(settings: Settings) -> CheckResult:
    from redis import Redis
    from redis.exceptions import RedisError, ResponseError

    where = redact_url(settings.redis_url)
    try:
        client = Redis.from_url(
            settings.redis_url, socket_connect_timeout=REDIS_TIMEOUT_S, socket_timeout=REDIS_TIMEOUT_S
        )
    except ValueError as exc:
        return CheckResult(
            "redis",
            "fail",
            f"REDIS_URL is not a Redis URL ({where}): {exc}",
            ["Set REDIS_URL like redis://127.0.0.1:6379/0 (or rediss://, unix://)."],
        )
    try:
        client.ping()
        version = str(client.info("server").get("redis_version", "?"))
        details: dict[str, Any] = {"url": where, "version": version}
        try:
            config: dict[str, str] = {}
            for name in ("appendonly", "appendfsync", "maxmemory-policy"):
                config.update({str(k): str(v) for k, v in client.config_get(name).items()})
        except ResponseError:
            # Managed Redis often renames CONFIG away; persistence is then the provider's business.
            return CheckResult(
                "redis",
                "ok",
                f"Redis {version} at {where} (persistence settings not readable: CONFIG is disabled)",
                details=details,
            )
        details.update(config)
        problems: list[str] = []
        remedies: list[str] = []
        if config.get("appendonly") != "yes":
            problems.append(
                "append-only file (AOF) is off: queued and finished jobs are lost if Redis restarts"
            )
            remedies += [
                "Turn it on now: redis-cli CONFIG SET appendonly yes && redis-cli CONFIG REWRITE",
                "Or start Redis with: redis-server --appendonly yes --appendfsync everysec",
            ]
        policy = config.get("maxmemory-policy", "noeviction")
        if policy != "noeviction":
            problems.append(
                f"maxmemory-policy is {policy}: Redis may evict queued jobs under memory pressure"
            )
            remedies.append("redis-cli CONFIG SET maxmemory-policy noeviction && redis-cli CONFIG REWRITE")
        aof = f"AOF {config.get('appendonly')}"
        if config.get("appendonly") == "yes":
            aof += f" (appendfsync {config.get('appendfsync', '?')})"
        if problems:
            return CheckResult(
                "redis", "warn", f"Redis {version} at {where}: " + "; ".join(problems), remedies, details
            )
        return CheckResult("redis", "ok", f"Redis {version} at {where}, {aof}", details=details)
    except RedisError as exc:
        return CheckResult(
            "redis",
            "fail",
            f"Redis is not reachable at {where}: {exc}",
            [
                "Start Redis: redis-server --appendonly yes (or brew services start redis, or"
                " docker compose up -d redis); `make run` starts a private one.",
                "Or set REDIS_URL to where your Redis listens.",
            ],
            {"url": where},
        )
    finally:
        client.close()


def describe_store(settings: Settings) -> str:
    if settings.s3_bucket:
        endpoint = redact_url(settings.s3_endpoint_url) if settings.s3_endpoint_url else "AWS S3"
        return f"S3 bucket '{settings.s3_bucket}' at {endpoint}"
    return f"folder {settings.images_dir.resolve()}"


def check_storage(settings: Settings) -> CheckResult:
    from .errors import KittyError
    from .storage import make_store
    from .storage.fs import SIGNING_KEY_FILE

    where = describe_store(settings)
    details: dict[str, Any] = {"kind": "s3" if settings.s3_bucket else "filesystem", "where": where}
    probe_settings = settings
    if not settings.s3_bucket and not settings.signing_key:
        key_file = settings.data_dir / SIGNING_KEY_FILE
        details["signing_key"] = (
            str(key_file) if key_file.exists() else "created on the service's first start"
        )
        # make_store() would create the key file: the doctor, perhaps run as another user, must not.
        probe_settings = settings.model_copy(update={"signing_key": DOCTOR_PROBE_KEY})
    try:
        make_store(probe_settings).check()
    except KittyError as exc:
        remedies = list(exc.remediation)
        if settings.s3_bucket:
            remedies.append(
                "Start MinIO (docker compose up minio; brew services start minio) or fix S3_ENDPOINT_URL,"
                " S3_ACCESS_KEY and S3_SECRET_KEY."
            )
        return CheckResult(
            "storage", "fail", f"storage ({where}) cannot be used: {exc.message}", remedies, details
        )
    except Exception as exc:  # boto3 raises more than botocore's errors (bad endpoint URL, ...)
        return CheckResult(
            "storage",
            "fail",
            f"storage ({where}) cannot be used: {type(exc).__name__}: {exc}",
            ["Check S3_ENDPOINT_URL (a full http(s) URL), S3_BUCKET, S3_REGION and the credentials."],
            details,
        )
    return CheckResult("storage", "ok", f"{where} is reachable and usable", details=details)


def check_server_engine(name: str, settings: Settings) -> CheckResult:
    from .engines import make_engine
    from .models import ModelRegistry

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


def check_engine_name(settings: Settings) -> CheckResult:
    from .engines import ENGINES

    if settings.image_engine not in ENGINES:
        return CheckResult(
            "engine",
            "fail",
            f"IMAGE_ENGINE={settings.image_engine} is not an engine of this build",
            [f"Set IMAGE_ENGINE to one of: {', '.join(ENGINES)}"],
        )
    return CheckResult("engine", "ok", f"IMAGE_ENGINE={settings.image_engine}")


def hf_hub_cache(settings: Settings) -> Path:
    """Where huggingface_hub keeps downloads, resolved as it does (HF_HOME from settings first,
    because the worker exports it before the hub library is imported)."""
    if settings.hf_home is not None:
        return Path(settings.hf_home).expanduser() / "hub"
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "huggingface" / "hub"


def is_cached_on_hub(cache: Path, repo_id: str) -> bool:
    snapshots = cache / f"models--{repo_id.replace('/', '--')}" / "snapshots"
    return snapshots.is_dir() and any((snap / "model_index.json").is_file() for snap in snapshots.iterdir())


def check_models(settings: Settings) -> list[CheckResult]:
    from .models import ModelRegistry

    path = settings.models_yaml
    uses_diffusers = is_local_engine(settings.image_engine)
    missing: Status = "fail" if uses_diffusers else "warn"
    try:
        entries = ModelRegistry(path).entries()
    except Exception as exc:  # KittyError for a bad shape, yaml.YAMLError for bad YAML, OSError
        return [
            CheckResult(
                "models",
                "fail",
                f"{path} cannot be read: {exc}",
                ["Fix the YAML (see models.example.yaml), or point MODELS_YAML at a valid file."],
            )
        ]
    if not entries:
        return [
            CheckResult(
                "models",
                "warn" if uses_diffusers else "info",
                f"no models registered in {path}",
                [
                    "Build small demo models: kitty-images models tiny",
                    "Or fetch one: kitty-images models pull sdxl_base",
                ]
                if uses_diffusers
                else [],
            )
        ]
    cache = hf_hub_cache(settings)
    results = []
    for name, entry in entries.items():
        check = f"model {name}"
        if entry.is_local:
            folder = Path(entry.source)
            if (folder / "model_index.json").is_file():
                results.append(CheckResult(check, "ok", f"{folder} holds a diffusers model"))
            elif folder.is_dir():
                results.append(
                    CheckResult(
                        check,
                        missing,
                        f"{folder} exists but has no model_index.json: it is not a diffusers model folder",
                        [f"Fetch it again: {entry.fetch_hint()}", "Or fix its path in models.yaml."],
                    )
                )
            else:
                results.append(
                    CheckResult(
                        check,
                        missing,
                        f"{folder} does not exist on this machine",
                        [f"Fetch it: {entry.fetch_hint()}", f"Or fix its path in {path}."],
                    )
                )
        elif is_cached_on_hub(cache, entry.source):
            results.append(CheckResult(check, "ok", f"hub model {entry.source} is in the cache {cache}"))
        else:
            results.append(
                CheckResult(
                    check,
                    missing,
                    f"hub model {entry.source} is not in this machine's Hugging Face cache ({cache});"
                    " workers never download during a job",
                    [f"Fetch it: kitty-images models pull {name}", "Or point HF_HOME at the cache it is in."],
                )
            )
    return results


def probe_device(timeout: float = DEVICE_TIMEOUT_S) -> dict[str, Any]:
    """What torch sees in a child interpreter: ``{"torch": None, ...}`` when it is not installed."""
    completed = subprocess.run(
        [sys.executable, "-c", DEVICE_PROBE],
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
            ["On a worker machine: pip install -e '.[worker]' (see README for the CUDA/MPS torch build)."]
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


# --- the whole run --------------------------------------------------------------------------------
CHECK_NAMES = ("redis", "storage", "engines", "models", "device", "disk")
"""What `--skip` accepts."""


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version(), "platform": platform.platform()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _settings_error(name: str, exc: ValidationError) -> CheckResult:
    # The messages only: pydantic's error dicts quote the input value, which may be a secret.
    problems = [f"{'.'.join(str(part) for part in err['loc'])}: {err['msg']}" for err in exc.errors()]
    return CheckResult(
        f"{name} settings",
        "fail",
        f"the {name} settings are invalid: " + "; ".join(problems),
        ["Fix these variables in the environment or .env (see .env.example)."],
    )


def diagnose(skip: Iterable[str] = (), *, device_timeout: float = DEVICE_TIMEOUT_S) -> Report:
    """Read the settings from the environment (and `.env`) now, run every check not skipped."""
    from services.gateway.settings import GatewaySettings

    skipped = set(skip)
    checks: list[CheckResult] = []
    models: list[BaseModel] = []
    settings: Settings | None = None
    try:
        settings = Settings()
        models.append(settings)
    except ValidationError as exc:
        checks.append(_settings_error("images-service", exc))
    try:
        models.append(GatewaySettings())
    except ValidationError as exc:
        checks.append(_settings_error("gateway", exc))

    if settings is not None:
        planned: list[tuple[str, CheckFn, float]] = [
            ("engine", partial(check_engine_name, settings), CHECK_TIMEOUT_S)
        ]
        if "redis" not in skipped:
            planned.append(("redis", partial(check_redis, settings), CHECK_TIMEOUT_S))
        if "storage" not in skipped:
            planned.append(("storage", partial(check_storage, settings), CHECK_TIMEOUT_S))
        if "engines" not in skipped:
            planned += [
                (engine.name, partial(check_server_engine, engine.name, settings), ENGINE_TIMEOUT_S)
                for engine in server_engines()
            ]
        if "models" not in skipped:
            planned.append(("models", partial(check_models, settings), CHECK_TIMEOUT_S))
        if "device" not in skipped:
            # The check's own subprocess timeout fires first; the margin covers starting the child.
            planned.append(("device", partial(check_device, settings, device_timeout), device_timeout + 5))
        if "disk" not in skipped:
            planned.append(("disk", partial(check_disk, settings), CHECK_TIMEOUT_S))
        checks += run_checks(planned)

    report = Report(
        checks=checks,
        settings=settings_summary(*models),
        versions=package_versions(),
        generated_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    return _scrubbed(report, secret_values(*models))


def _scrubbed(report: Report, secrets: set[str]) -> Report:
    """The same report with every literal secret removed from every text in it."""
    if not secrets:
        return report
    data = json.loads(
        scrub(json.dumps(report.to_dict(), default=str), {json.dumps(s)[1:-1] for s in secrets})
    )
    return Report(
        checks=[CheckResult(**check) for check in data["checks"]],
        settings=data["settings"],
        versions=data["versions"],
        generated_at=data["generated_at"],
    )


# --- rendering ------------------------------------------------------------------------------------
LABELS: dict[Status, str] = {"ok": "ok", "info": "info", "warn": "warn", "fail": "FAIL"}

UNSET = "(unset)"


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
