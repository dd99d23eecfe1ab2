"""`kitty-images`: the operator's command — models (tiny, pull, list), the stack, the demo, the doctor."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import click
import httpx

from services.contracts import CONTROL_TYPES, ImagesClient, JobStatus, JobView

from .doctor import CHECK_NAMES
from .models import ADDON_SECTIONS, CATALOG, LORA_BASES, ModelRegistry, register_model
from .settings import get_settings
from .storage.keys import IMAGE_SUFFIX, meta_key_for

if TYPE_CHECKING:
    from .stack import ChildFailed
    from .storage import Store

DEMO_PROMPT = "a watercolor kitten astronaut floating above a violet nebula"
DEMO_MODEL = "tiny-sd15"

DEMO_JOB_TIMEOUT_S = 600.0
"""How long the demo waits for its one job (the tiny model takes seconds, a cold CPU a minute)."""


def _fail(message: str, *hints: str) -> None:
    click.echo(f"Error: {message}", err=True)
    for hint in hints:
        click.echo(f"  → {hint}", err=True)
    sys.exit(1)


@click.group()
def cli() -> None:
    """Operate KITTY Images: models, the local stack, the demo."""


@cli.group()
def models() -> None:
    """Models registered in models.yaml (MODELS_YAML)."""


@models.command("list")
def models_list() -> None:
    """List registered models and whether they are on disk."""
    settings = get_settings()
    entries = ModelRegistry(settings.models_yaml).entries()
    if not entries:
        click.echo(f"no models registered in {settings.models_yaml}; try: kitty-images models tiny", err=True)
        return
    width = max(len(name) for name in entries)
    for name, entry in entries.items():
        where = "local" if entry.is_local else "hub"
        present = "present" if not entry.is_local or Path(entry.source).exists() else "MISSING"
        click.echo(f"{name:<{width}}  {where:<5}  {present:<7}  {entry.source}")


@models.command("tiny")
@click.option("--force", is_flag=True, help="rebuild even if the folders exist")
def models_tiny(force: bool) -> None:
    """Build small random-weight SD1.5 and SDXL pipelines and a LoRA locally (no hub), for demos."""
    from .tiny import build_tiny_models  # imports torch: only here

    settings = get_settings()
    names = build_tiny_models(settings.data_dir / "models", settings.models_yaml, force=force)
    click.echo(f"registered {', '.join(names)} in {settings.models_yaml}")


@models.command("random-sd15")
@click.option("--force", is_flag=True, help="rebuild even if the folder exists")
def models_random_sd15(force: bool) -> None:
    """Build a full-size SD1.5 with random weights (2.1 GB, about a minute) and register it: what a
    real model costs to load and render, without a download. Its images are noise."""
    from .tiny import build_random_sd15  # imports torch: only here

    settings = get_settings()
    folder = build_random_sd15(settings.data_dir / "models", settings.models_yaml, force=force)
    click.echo(f"registered random-sd15 ({folder}) in {settings.models_yaml}")


@models.command("pull")
@click.argument("name")
@click.option("--repo", help="hub repo id (default: the catalog's for NAME)")
def models_pull(name: str, repo: str | None) -> None:
    """Download a real model from the Hugging Face hub and register it."""
    settings = get_settings()
    entry = dict(CATALOG.get(name, {}))
    repo = repo or entry.pop("repo", None)
    if not repo:
        _fail(f"'{name}' is not in the catalog", f"Known: {', '.join(CATALOG)}", "Or pass --repo ORG/NAME")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        _fail(
            "huggingface_hub is not installed",
            "make install (or pip install -c requirements.lock -e '.[worker]')",
        )
    target = settings.data_dir / "models" / name
    click.echo(f"downloading {repo} into {target} ...", err=True)
    try:
        snapshot_download(
            repo_id=repo,
            local_dir=target,
            ignore_patterns=[
                "*.bin",
                "*.ckpt",
                "*.pt",
                "*.pth",
                "*.onnx",
                "*.onnx_data",
                "*.msgpack",
                "*.h5",
            ],
        )
    except Exception as exc:  # offline, gated, unknown repo: all end here with the hub's own words
        _fail(
            f"could not download {repo}: {type(exc).__name__}: {exc}",
            "Check network access to the hub, and HF_TOKEN for gated models.",
        )
    entry.pop("repo", None)
    register_model(settings.models_yaml, name, {"path": str(target.resolve()), **entry})
    click.echo(f"registered {name} in {settings.models_yaml}")


ADD_KINDS = {"model": None, "controlnet": "controlnets", "ip-adapter": "ip_adapters", "upscaler": "upscalers"}
"""`models add --kind` → the models.yaml section it registers into (None: ``models:``)."""


@models.command("add")
@click.argument("name")
@click.argument("location", metavar="PATH|URL")
@click.option("--license", "license_", required=True, help="its license, e.g. creativeml-openrail-m")
@click.option("--sha256", help="expected digest (required for a URL; a folder's is its manifest digest)")
@click.option("--family", type=click.Choice(LORA_BASES), help="the model family it is (or works with)")
@click.option("--allow-pickle", is_flag=True, help="accept .ckpt/.bin/.pt/.pth weights (they can run code)")
@click.option(
    "--config",
    "config",
    metavar="NAME|PATH",
    help="a single file: the diffusers folder (or registered model) whose configs it loads with",
)
@click.option(
    "--kind",
    type=click.Choice(list(ADD_KINDS)),
    default="model",
    show_default=True,
    help="a checkpoint, or a guided-generation add-on",
)
@click.option("--control-type", type=click.Choice(CONTROL_TYPES), help="controlnet: the maps it reads")
@click.option("--image-encoder", help="ip-adapter: the CLIP vision encoder's folder")
@click.option("--scale", type=click.Choice(["2", "4"]), help="upscaler: its factor")
def models_add(
    name: str,
    location: str,
    license_: str,
    sha256: str | None,
    family: str | None,
    allow_pickle: bool,
    config: str | None,
    kind: str,
    control_type: str | None,
    image_encoder: str | None,
    scale: str | None,
) -> None:
    """Register a diffusers folder, a .safetensors file or an http(s) download, with the SHA-256 of
    every weight file. A download whose digest is not --sha256 is deleted and nothing is registered.
    `--kind controlnet|ip-adapter|upscaler` registers a guided-generation add-on instead (never a
    pickle)."""
    from .catalog import add_addon, add_model
    from .errors import KittyError

    settings = get_settings()
    section = ADD_KINDS[kind]
    try:
        if section is None:
            added = add_model(
                settings.models_yaml,
                settings.data_dir / "models",
                name,
                location,
                license=license_,
                sha256=sha256,
                family=family,
                allow_pickle=allow_pickle,
                config=config,
            )
        else:
            added = add_addon(
                settings.models_yaml,
                settings.data_dir / "models",
                section,
                name,
                location,
                license=license_,
                sha256=sha256,
                base=family,
                fields={
                    "type": control_type,
                    "image_encoder": image_encoder,
                    "scale": int(scale) if scale else None,
                },
            )
    except KittyError as exc:
        _fail(exc.message, *exc.remediation)
    digests = added.entry["sha256"]
    count = 1 if isinstance(digests, str) else len(digests)
    click.echo(f"registered {name} ({added.path}, {count} weight file(s) hashed) in {settings.models_yaml}")


@models.command("verify")
@click.argument("name", required=False)
def models_verify(name: str | None) -> None:
    """Re-hash registered models' weight files against models.yaml's sha256. Exit 1 on a mismatch."""
    from .catalog import verify_addon, verify_entry
    from .errors import KittyError

    settings = get_settings()
    registry = ModelRegistry(settings.models_yaml)
    addons = [addon for kind in ADDON_SECTIONS for addon in registry.addons(kind).values()]
    if name is not None:
        addons = [addon for addon in addons if addon.name == name]
    try:
        if name is None:
            entries = list(registry.entries().values())
        else:
            entries = [registry.get(name)] if not addons else []
    except KittyError as exc:
        _fail(exc.message, *exc.remediation)
    def verified(label: str, recorded: object, check: Callable[[], list[str]]) -> bool:
        """Prints `label`'s outcome; whether it failed (no digests fails only when asked by name)."""
        if recorded is None:
            click.echo(f"{label}: no sha256 recorded (kitty-images models add records them)")
            return name is not None
        problems = check()
        click.echo(f"{label}: {'OK' if not problems else 'FAILED'}")
        for problem in problems:
            click.echo(f"  {problem}")
        return bool(problems)

    failed = False
    for entry in entries:
        if not entry.is_local:
            click.echo(f"{entry.name}: skipped (a hub id; pull it to verify it)")
            continue
        failed |= verified(entry.name, entry.sha256, partial(verify_entry, entry))
    for addon in addons:
        failed |= verified(f"{addon.name} ({addon.kind})", addon.sha256, partial(verify_addon, addon))
    sys.exit(1 if failed else 0)


@cli.command()
def up() -> None:
    """Run the stack in the foreground: Redis (private unless REDIS_URL), images-service, a worker per
    configured engine, gateway. A process that dies is started again; Ctrl-C or SIGTERM stops all."""
    from services.gateway.settings import GatewaySettings

    from .stack import ChildFailed, Stack, StackError, configured_engines, interrupt_on_sigterm

    settings = get_settings()
    models_yaml = settings.models_yaml.resolve()
    if not ModelRegistry(models_yaml).entries():
        click.echo(f"no models in {models_yaml}: building the tiny demo models ...", err=True)
        from .tiny import build_tiny_models

        build_tiny_models(settings.data_dir / "models", models_yaml)
    log_dir = settings.data_dir.resolve() / "logs"
    stack = Stack(
        data_dir=settings.data_dir,
        images_port=settings.port,
        gateway_port=GatewaySettings().port,
        worker_metrics_port=settings.worker_metrics_port,
        engines=configured_engines(settings),
        log_dir=log_dir,
        echo=True,
        extra_env={"MODELS_YAML": str(models_yaml)},
    )
    with interrupt_on_sigterm():
        try:
            stack.start()
            workers = ", ".join(
                f"{engine} (metrics :{port})" if port else engine
                for engine, port in stack.worker_ports.items()
            )
            stack.say(f"KITTY Images is up: gateway {stack.gateway_url} (gallery {stack.gateway_url}/vision)")
            stack.say(f"workers: {workers}; logs in {log_dir}. Ctrl-C stops everything.")
            stack.supervise()
        except KeyboardInterrupt:
            stack.say("stopping ...")
        except ChildFailed as exc:
            stack.stop()
            _fail_with_tail(exc)
        except StackError as exc:
            stack.stop()
            _fail(str(exc))
        finally:
            stack.stop()


def _fail_with_tail(exc: ChildFailed) -> None:
    where = f" (all of it in {exc.log_path})" if exc.log_path else ""
    click.echo(f"Error: {exc}", err=True)
    click.echo(f"  its last {len(exc.tail)} lines{where}:", err=True)
    for line in exc.tail:
        click.echo(f"  | {line}", err=True)
    sys.exit(1)


def _run_cli(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "kitty-cli"), *args], env=env, capture_output=True, text=True
    )
    click.echo(f"$ kitty-cli {' '.join(args)}", err=True)
    if result.stderr.strip():
        click.echo(result.stderr.rstrip(), err=True)
    if result.returncode != 0:
        _fail(f"kitty-cli {args[0]} exited with {result.returncode}", result.stdout.strip())
    click.echo(result.stdout.rstrip(), err=True)
    return result.stdout


class DemoCheckFailed(Exception):
    """What the demo claims did not happen; the message says what was seen instead."""


def status_path(statuses: list[JobStatus]) -> str:
    """The statuses a job went through, repeats of one status in a row said once."""
    path = [
        status.value
        for position, status in enumerate(statuses)
        if statuses[position - 1 : position] != [status]
    ]
    return " → ".join(path)


def went_back_to_queued(statuses: list[JobStatus]) -> bool:
    """Whether a job was queued again after it had started (its worker was lost and it ran twice)."""
    started = JobStatus.STARTED in statuses
    return started and JobStatus.QUEUED in statuses[statuses.index(JobStatus.STARTED) :]


def images_of_job(store: Store, prefix: str, job_id: str, before: set[str]) -> list[str]:
    """PNG keys stored under `prefix` since `before` (the keys listed then) whose sidecar names
    `job_id`; a new PNG without a sidecar is an error of its own."""
    found = []
    for info in store.objects(prefix, suffix=IMAGE_SUFFIX):
        if info.key in before:
            continue
        if store.head(meta_key_for(info.key)) is None:
            raise DemoCheckFailed(f"stored image {info.key} has no JSON sidecar ({meta_key_for(info.key)})")
        if json.loads(store.get(meta_key_for(info.key))).get("job_id") == job_id:
            found.append(info.key)
    return found


def check_demo_job(view: JobView, statuses: list[JobStatus], stored: list[str]) -> str:
    """One job made exactly one stored image: return its key, or raise `DemoCheckFailed`."""
    seen = status_path(statuses)
    if view.status is not JobStatus.DONE:
        error = f": {view.error.code.value}: {view.error.message}" if view.error else ""
        raise DemoCheckFailed(f"job {view.job_id} ended {view.status.value}{error} (seen: {seen})")
    if went_back_to_queued(statuses):
        raise DemoCheckFailed(f"job {view.job_id} went back to queued after it started (seen: {seen})")
    result_keys = [image.key for image in view.result.images] if view.result else []
    if len(stored) != 1 or len(result_keys) != 1 or stored != result_keys:
        raise DemoCheckFailed(
            f"job {view.job_id} should have stored exactly one image; storage holds {len(stored)} "
            f"({', '.join(stored) or 'none'}), the job reports {len(result_keys)} ({', '.join(result_keys)})"
        )
    return stored[0]


@cli.command()
@click.option("--prompt", default=DEMO_PROMPT, show_default=True)
def demo(prompt: str) -> None:
    """Bring the stack up, generate with the tiny model, check that exactly one image was stored,
    list, select, download, verify the bytes."""
    from .stack import Stack, StackError, free_port, interrupt_on_sigterm
    from .storage import make_store

    settings = get_settings()
    registry = ModelRegistry(settings.models_yaml)
    if DEMO_MODEL not in registry.entries() or not Path(registry.get(DEMO_MODEL).source).exists():
        click.echo("building the tiny demo models (no hub needed) ...", err=True)
        from .tiny import build_tiny_models

        build_tiny_models(settings.data_dir / "models", settings.models_yaml)

    log_dir = settings.data_dir / "logs"
    stack = Stack(
        data_dir=settings.data_dir,
        images_port=free_port(),
        gateway_port=free_port(),
        worker_metrics_port=free_port(),
        log_dir=log_dir,
        extra_env={"MODELS_YAML": str(settings.models_yaml.resolve())},
    )
    store = make_store(settings)
    click.echo(f"starting the stack (logs in {log_dir}) ...", err=True)
    try:
        with interrupt_on_sigterm(), stack:
            env = {**os.environ, "KITTY_GATEWAY_URL": stack.gateway_url}
            before = {info.key for info in store.objects(settings.s3_prefix, suffix=IMAGE_SUFFIX)}
            job_args = ("images.generate", prompt, "--model", DEMO_MODEL, "--steps", "20", "--no-wait")
            job_id = _run_cli(env, *job_args).strip()
            statuses: list[JobStatus] = []
            with ImagesClient(stack.gateway_url, os.environ.get("KITTY_API_KEY")) as client:
                view = client.wait(
                    job_id, timeout=DEMO_JOB_TIMEOUT_S, on_update=lambda v: statuses.append(v.status)
                )
            key = check_demo_job(view, statuses, images_of_job(store, settings.s3_prefix, job_id, before))
            click.echo(
                f"job {job_id}: {status_path(statuses)}; stored {key}",
                err=True,
            )
            _run_cli(env, "images.latest", "--limit", "5")
            ref = json.loads(_run_cli(env, "images.select", "1"))["imageRef"]
            downloaded = httpx.get(ref["downloadUrl"], timeout=30).content
            if not ref["storageUri"].endswith(key):
                _fail(f"images.select 1 returned {ref['storageUri']}, not the image just made ({key})")
            if downloaded != store.get(key):
                _fail("the downloaded bytes differ from the stored object")
    except DemoCheckFailed as exc:
        _fail(f"the demo's check failed: {exc}", f"See the logs in {log_dir}")
    except (StackError, TimeoutError) as exc:
        _fail(str(exc), f"See the logs in {log_dir}")
    except KeyboardInterrupt:
        _fail("interrupted")
    click.echo(
        f"downloaded {len(downloaded)} bytes through the imageRef; identical to the stored {key}", err=True
    )
    if not settings.uses_s3:
        click.echo(
            "(this filesystem link was served by the demo's own stack, now stopped; with `make run` up,"
            " `kitty-cli images.select 1` gives a live one)",
            err=True,
        )
    click.echo(json.dumps({"imageRef": ref}, indent=2))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="print a bundle: checks, settings, versions")
@click.option(
    "--skip",
    multiple=True,
    type=click.Choice(CHECK_NAMES),
    help="leave a check out (repeatable)",
)
def doctor(as_json: bool, skip: tuple[str, ...]) -> None:
    """Check Redis, storage, engines, models, the device and disk; say what to fix. Exit 1 on a FAIL."""
    from .doctor import diagnose, render_text

    # Settings are read afresh (not get_settings()'s cached copy): the doctor must see the
    # environment as it is now, and report invalid settings rather than crash on them.
    report = diagnose(skip)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        click.echo(render_text(report))
    sys.exit(1 if report.failed else 0)


@cli.command()
def reindex() -> None:
    """Rebuild the gallery index in Redis from what storage holds (storage is the source of truth)."""
    from .errors import KittyError
    from .gallery import GalleryIndex
    from .queue import connect_redis
    from .storage import make_store

    settings = get_settings()
    try:
        index = GalleryIndex(connect_redis(settings.redis_url), settings.queue_prefix)
        count = index.rebuild(make_store(settings), settings.s3_prefix)
    except KittyError as exc:
        _fail(exc.message, *exc.remediation)
    click.echo(f"indexed {count} images")


@cli.command()
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 500), help="entries to show")
@click.option("--key-id", help="only this key id's entries (12 hex digits)")
@click.option(
    "--action",
    type=click.Choice(["submit", "refuse", "done", "error", "cancel", "delete", "select"]),
    help="only this action",
)
@click.option("--job-id", help="only this job's entries")
@click.option("--cursor", help="older than this entry id (a previous page's next_cursor)")
@click.option("--json", "as_json", is_flag=True, help="print the page as JSON")
def audit(
    limit: int, key_id: str | None, action: str | None, job_id: str | None, cursor: str | None, as_json: bool
) -> None:
    """Show the audit log newest first: submissions, refusals, completions, cancels, deletes and
    selects, by key id (never the key), with request id, job id, outcome and error code."""
    from .audit import AuditLog, format_entry
    from .errors import KittyError
    from .queue import connect_redis

    settings = get_settings()
    connection = connect_redis(settings.redis_url)
    try:
        page = AuditLog(connection, settings).read(
            limit=limit, cursor=cursor, key_id=key_id, action=action, job_id=job_id
        )
    except KittyError as exc:
        _fail(exc.message, *exc.remediation)
    finally:
        connection.close()
    if as_json:
        click.echo(page.model_dump_json(indent=2))
        return
    if not page.entries:
        click.echo("no audit entries" + (" match" if key_id or action or job_id else ""), err=True)
    for entry in page.entries:
        click.echo(format_entry(entry))
    if page.next_cursor:
        click.echo(f"(older entries: --cursor {page.next_cursor})", err=True)


@cli.command("verify-watermark")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--payload", help="the text to look for (default: IMAGES_WATERMARK)")
def verify_watermark(file: Path, payload: str | None) -> None:
    """Say whether FILE carries the invisible watermark. Exit 0 found, 1 not found, 2 cannot tell."""
    from PIL import Image, UnidentifiedImageError

    from .watermark import MIN_PIXELS, payload_bytes, read

    text = payload if payload is not None else get_settings().watermark
    try:
        expected = payload_bytes(text)
    except ValueError as exc:
        click.echo(f"Error: no usable payload: {exc}", err=True)
        click.echo("  → Set IMAGES_WATERMARK (as the workers have it) or pass --payload TEXT.", err=True)
        sys.exit(2)
    try:
        with Image.open(file) as image:
            image.load()
            picture = image.copy()
    except (OSError, UnidentifiedImageError) as exc:
        click.echo(f"Error: cannot read {file} as an image: {exc}", err=True)
        sys.exit(2)
    if picture.width * picture.height < MIN_PIXELS:
        click.echo(
            f"Error: {file} is {picture.width}x{picture.height}: too small to carry a watermark "
            f"(at least {MIN_PIXELS} pixels); images that small are stored unmarked",
            err=True,
        )
        sys.exit(2)
    reading = read(picture, expected)
    if reading.found:
        click.echo(f"watermark found in {file}: {text!r} ({reading.total_bits}/{reading.total_bits} bits)")
        sys.exit(0)
    click.echo(
        f"no watermark {text!r} in {file} ({reading.matching_bits}/{reading.total_bits} bits match; "
        "about half is what an unmarked picture gives)"
    )
    sys.exit(1)
