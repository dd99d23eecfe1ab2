"""Job commands: `images.generate`, `images.rerun` and `images.upscale` (queue, follow the event stream
with a progress line, download with ``--out``), `images.jobs` and `images.cancel`."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from pydantic import ValidationError

from services.contracts import (
    A1111_SAMPLERS,
    ENGINE_NAMES,
    MAX_SEED,
    QUALITY_NAMES,
    SCHEDULER_NAMES,
    ApiError,
    ErrorCode,
    ErrorInfo,
    GenerateRequest,
    GenerateView,
    ImagesClient,
    JobStatus,
    JobView,
    LoraRef,
)
from services.contracts.schema import (
    MAX_FPS,
    MAX_FRAMES,
    MAX_MOTION_BUCKET,
    MIN_FPS,
    MIN_FRAMES,
    UPSCALE_FACTORS,
    VIDEO_FIELDS,
)

from .completion import complete_image_ref, complete_model, complete_preset
from .context import EXIT_FAILED, EXIT_INTERRUPTED, state_of
from .gallery import resolve_key
from .guide import OPTION_OF_FIELD, guide_fields, guide_options, needs
from .inputs import input_file, input_key
from .render import ProgressLine, echo_json, format_size, image_keys, job_lines, print_error

SCHEDULER_CHOICES = SCHEDULER_NAMES + tuple(
    name
    for name in (
        f"{sampler} {schedule}" if schedule else sampler for sampler, schedule in A1111_SAMPLERS.values()
    )
    if name.lower() not in SCHEDULER_NAMES
)
"""Ours and AUTOMATIC1111's spellings ("Euler a", "DPM++ 2M Karras"), any case; the service maps the
latter to ours."""

Command = TypeVar("Command", bound=Callable[..., Any])

INPUT_OPTIONS = ("image", "mask", "control_image", "reference_image")
"""Options that name a picture by file, number or key; their files are uploaded in this order."""


def option_of(location: tuple[int | str, ...]) -> str:
    """What a refused field is called on the command line: a guide option's name, else the wire's."""
    field = ".".join(str(part) for part in location) or "request"
    return OPTION_OF_FIELD.get(field, field)


def request_from_options(options: dict[str, Any]) -> GenerateRequest:
    """Validate here, so a bad flag is named before anything is queued."""
    fields = {name: value for name, value in options.items() if value is not None}
    try:
        return GenerateRequest(**fields)
    except ValidationError as exc:
        problems = "; ".join(f"{option_of(error['loc'])}: {error['msg']}" for error in exc.errors())
        raise ApiError(
            400,
            ErrorInfo(
                code=ErrorCode.VALIDATION_ERROR,
                message=problems,
                remediation=["See `kitty-cli images.generate --help` for each option's range."],
            ),
        ) from exc


def preset_inputs(values: tuple[str, ...], options: dict[str, Any]) -> dict[str, Any]:
    """``--input NAME=VALUE`` pairs as request fields. A picture input (`INPUT_OPTIONS`) keeps its
    text (a file, N or key, uploaded like --image); any other value is JSON when it parses, else
    text. A field also set by its own option is refused: which one would win is not obvious."""
    fields: dict[str, Any] = {}
    for pair in values:
        name, equals, value = pair.partition("=")
        name = name.strip()
        if not equals or not name:
            raise click.BadParameter(f"'{pair}' is not NAME=VALUE", param_hint="'--input'")
        if options.get(name) not in (None, (), False) or name in fields:
            raise click.UsageError(f"--input {name}=… sets `{name}` twice (its own option or --input).")
        if name in INPUT_OPTIONS:
            fields[name] = value
            continue
        try:
            fields[name] = json.loads(value)
        except ValueError:
            fields[name] = value
    return fields


def parse_lora(value: str) -> LoraRef:
    """``NAME`` or ``NAME:WEIGHT`` (weight 1 when omitted)."""
    name, colon, weight = value.rpartition(":") if ":" in value else (value, "", "")
    try:
        return LoraRef(name=name, weight=float(weight)) if colon else LoraRef(name=name)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError too
        raise click.BadParameter(
            f"'{value}' is not NAME or NAME:WEIGHT with a weight in -2..2", param_hint="'--lora'"
        ) from exc


def failure_of(view: JobView) -> ErrorInfo:
    """Why a job did not finish, for jobs that ended ``error`` or ``canceled``."""
    if view.error is not None:
        return view.error
    if view.status is JobStatus.CANCELED:
        return ErrorInfo(code=ErrorCode.CANCELED, message=f"job {view.job_id} was canceled")
    return ErrorInfo(
        code=ErrorCode.ENGINE_ERROR,
        message=f"job {view.job_id} ended {view.status.value} without saying why",
        remediation=["Check the worker's log for this job id."],
    )


class PreviewFile:
    """``--preview FILE``: each time a job view's `preview_step` changes, the job's live preview
    (a small WebP) replaces FILE, written beside it and renamed, so a viewer never reads half a file."""

    def __init__(self, client: ImagesClient, job_id: str, path: Path) -> None:
        self.client = client
        self.job_id = job_id
        self.path = path
        self.step: int | None = None

    def __call__(self, view: JobView) -> None:
        if view.preview_step is None or view.preview_step == self.step:
            return
        self.step = view.preview_step
        try:
            data = self.client.preview(self.job_id)
        except ApiError:
            return  # gone between the view and the fetch (expired): the next step brings another
        partial = self.path.with_name(f".{self.path.name}.part")
        try:
            partial.write_bytes(data)
            os.replace(partial, self.path)
        except OSError as exc:
            raise click.FileError(str(self.path), hint=exc.strerror or str(exc)) from exc


PREVIEW_OPTION = click.option(
    "--preview",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    metavar="FILE",
    help="While waiting, keep FILE as the job's live preview (WebP, every few steps; the worker's "
    "IMAGES_PREVIEW_EVERY turns them on).",
)


def check_preview_path(preview: Path | None, wait: bool) -> None:
    """Refuse a ``--preview`` that cannot be written, or that nothing would write (no waiting)."""
    if preview is None:
        return
    if not wait:
        raise click.UsageError("--preview is written while waiting; it needs --wait.")
    if not preview.parent.is_dir():
        raise click.BadParameter(f"directory '{preview.parent}' does not exist", param_hint="'--preview'")


def follow(ctx: click.Context, client: ImagesClient, job_id: str, preview: Path | None = None) -> JobView:
    """Wait for the job with a progress line on stderr (and its live preview in `preview`); Ctrl-C
    stops waiting, not the job."""
    progress = ProgressLine()
    watchers: list[Callable[[JobView], None]] = [progress]
    if preview is not None:
        watchers.append(PreviewFile(client, job_id, preview))

    def on_update(view: JobView) -> None:
        for watcher in watchers:
            watcher(view)

    try:
        view = client.wait(job_id, on_update=on_update, interval=state_of(ctx).poll_interval)
    except KeyboardInterrupt:
        progress.finish()
        click.echo(f"Stopped waiting; the job keeps running: kitty-cli images.jobs {job_id}", err=True)
        ctx.exit(EXIT_INTERRUPTED)
    progress.finish()
    return view


def out_paths(out: Path, count: int) -> list[Path]:
    """``out`` for the first image, then ``-2``, ``-3``… before the extension: fox.png, fox-2.png."""
    return [out] + [out.with_name(f"{out.stem}-{n}{out.suffix}") for n in range(2, count + 1)]


def check_out_path(out: Path) -> None:
    """Refuse an unwritable ``--out`` before queueing, not after the image is rendered."""
    if not out.parent.is_dir():
        raise click.BadParameter(f"directory '{out.parent}' does not exist", param_hint="'--out'")


def job_output_options(command: Command) -> Command:
    """--out, --wait/--no-wait and --json: how a command that queues a job reports it."""
    for option in reversed(
        (
            click.option(
                "--out",
                type=click.Path(dir_okay=False, writable=True, path_type=Path),
                metavar="FILE",
                help="Download the image into FILE; more images go to FILE-2, FILE-3 before the extension. "
                "A video job's clip is an MP4 (--out clip.mp4).",
            ),
            click.option(
                "--wait/--no-wait",
                default=True,
                show_default=True,
                help="Wait for the job and print its images.",
            ),
            click.option(
                "--json", "as_json", is_flag=True, help="Print the job's final JSON instead of image keys."
            ),
        )
    ):
        command = option(command)
    return command


def download_url(client: ImagesClient, key: str) -> str:
    """Where the stored original of `key` downloads from: its videoRef for a clip, else its imageRef."""
    selected = client.select(key)
    return selected.videoRef.downloadUrl if selected.videoRef is not None else selected.image_ref.downloadUrl


def save_images(client: ImagesClient, view: JobView, out: Path) -> None:
    """Download each image (or a video job's clip) of a finished job through its imageRef (videoRef)
    into ``out`` and its siblings."""
    keys = image_keys(view)
    for key, path in zip(keys, out_paths(out, len(keys)), strict=True):
        data = client.download(download_url(client, key))
        try:
            path.write_bytes(data)
        except OSError as exc:
            raise click.FileError(str(path), hint=exc.strerror or str(exc)) from exc
        click.echo(f"Saved {path} ({format_size(len(data))})", err=True)


@click.command("images.generate", short_help="Queue a prompt; follow its progress; print its image keys.")
@click.argument("prompt", required=False)
@click.option(
    "--model",
    help="Model name from the service's models.yaml (its default when omitted).",
    shell_complete=complete_model,
)
@click.option("--width", type=int, help="Pixels, a multiple of 8 in 64-4096; your tier may allow less.")
@click.option("--height", type=int, help="Pixels, a multiple of 8 in 64-4096; your tier may allow less.")
@click.option("--steps", type=int, help="Denoising steps, 1-150.")
@click.option("--cfg", type=float, help="Classifier-free guidance scale.")
@click.option("--seed", type=int, help="Fixed seed for a reproducible image (random when omitted).")
@click.option("--negative", "negative_prompt", help="Negative prompt: what the image should not show.")
@click.option("--num-images", type=int, help="Images in this job, 1-8; your tier may allow fewer.")
@click.option(
    "--engine", type=click.Choice(ENGINE_NAMES), help="Engine (the service's IMAGE_ENGINE when omitted)."
)
@click.option(
    "--scheduler",
    type=click.Choice(SCHEDULER_CHOICES, case_sensitive=False),
    metavar="NAME",
    help='Sampler: euler, euler_a, dpmpp_2m_karras, ddim, unipc… or A1111\'s name ("DPM++ 2M Karras").',
)
@click.option("--refiner/--no-refiner", default=None, help="Run the SDXL refiner pass after the base model.")
@click.option(
    "--preset",
    metavar="NAME",
    shell_complete=complete_preset,
    help="A preset (see images.presets): its prompt template, negative prompt, size and quality.",
)
@click.option(
    "--quality",
    type=click.Choice(QUALITY_NAMES),
    help="Steps and cfg: low 20/6, standard 30/7, pro 50/8 (--steps and --cfg win).",
)
@click.option(
    "--image",
    metavar="FILE|N|KEY",
    shell_complete=complete_image_ref,
    help="Start from this picture (image-to-image): a PNG/JPEG/WebP file (uploaded first), "
    "image N of images.latest, or a stored key.",
)
@click.option(
    "--mask",
    metavar="FILE|KEY",
    help="Inpaint --image: white areas are repainted, black ones kept exactly.",
)
@click.option("--strength", type=float, help="How much of --image is repainted, 0-1 (default 0.75).")
@click.option(
    "--lora",
    "loras",
    multiple=True,
    metavar="NAME[:WEIGHT]",
    help="Apply a LoRA registered in models.yaml (see images.models), weight 1 by default; repeatable.",
)
@click.option(
    "--beat",
    "beats",
    multiple=True,
    metavar="TEXT",
    help="A storyboard: one shot per beat (2-10, in order; the prompt is what every shot shares), "
    "then a contact sheet of them all. Repeatable.",
)
@click.option(
    "--input",
    "preset_inputs",
    multiple=True,
    metavar="NAME=VALUE",
    help="A preset's input by name (images.presets lists them): a picture input takes a file, N or "
    "a key like --image; other values are read as JSON when they parse (0.5, true, [..]), else as "
    "text. Repeatable.",
)
@click.option(
    "--video",
    is_flag=True,
    help="Render one clip (MP4) instead of images, with a video model (--model): SVD animates "
    "--image; AnimateDiff animates the prompt.",
)
@click.option(
    "--frames",
    type=int,
    help=f"With --video: the clip's length, {MIN_FRAMES}-{MAX_FRAMES} frames (the model's default when "
    "omitted).",
)
@click.option("--fps", type=int, help=f"With --video: frames per second it plays at, {MIN_FPS}-{MAX_FPS}.")
@click.option(
    "--motion-bucket-id",
    type=int,
    help=f"With --video, SVD: how much motion, 0-{MAX_MOTION_BUCKET} (127 when omitted).",
)
@click.option(
    "--noise-aug-strength",
    type=float,
    help="With --video, SVD: noise added to --image, 0-1 (more frees the clip from it; 0.02 when omitted).",
)
@guide_options
@job_output_options
@PREVIEW_OPTION
@click.pass_context
def generate(
    ctx: click.Context, wait: bool, as_json: bool, out: Path | None, preview: Path | None, **options: Any
) -> None:
    """Queue PROMPT, show its progress on stderr, and print its image keys on stdout when it is done
    (or only the job id with --no-wait). With --video, one clip: its MP4's key on stdout, its
    poster's on stderr; an SVD clip animates --image and takes no PROMPT.

    \b
    Examples:
      kitty-cli images.generate "a watercolor fox in the snow"
      kitty-cli images generate "a fox" --model tiny-sd15 --seed 42 --out fox.png
      kitty-cli images.generate "a fox" --num-images 3 --out fox.png   # fox.png fox-2.png fox-3.png
      kitty-cli images.generate "an old fisherman" --preset photoreal --quality pro
      kitty-cli images.generate "a harbour" --preset upscale_denoise --input image=harbour.jpg
      kitty-cli images.generate "two strangers at a bus stop, night" --preset storyboard \
        --beat "she waits" --beat "the bus arrives" --beat "a stranger steps off" --out board.png
      kitty-cli images.generate "a fox" --scheduler "DPM++ 2M Karras"
      kitty-cli images.generate "the same fox, in autumn" --image photo.jpg --strength 0.6
      kitty-cli images.generate "a red scarf" --image 1 --mask scarf-mask.png
      kitty-cli images.generate "a fox" --lora film_grain:0.8 --lora watercolor
      kitty-cli images.generate "a dancer on a stage" --control-image pose.png --control-type pose
      kitty-cli images.generate "her, as an astronaut" --reference-image me.jpg --consent --hires
      kitty-cli images.generate "a fox" --json | jq -r .result.png_key
      kitty-cli images.generate "a fox" --preview live.webp   # refreshed every few steps
      JOB=$(kitty-cli images.generate "a fox" --no-wait); kitty-cli images.jobs "$JOB" --wait
      kitty-cli images.generate "a fox running" --video --model animatediff_sd15 --frames 16 \
        --out clip.mp4
      kitty-cli images.generate --video --model svd --image 1 --fps 7 --out clip.mp4   # no prompt
    """
    check_output(out, wait)
    is_video = options.pop("video")
    if not is_video:
        if options["prompt"] is None:
            # Optional only for a clip: Stable Video Diffusion animates --image and takes no prompt.
            raise click.UsageError("Missing argument 'PROMPT' (only a --video job from --image has none).")
        given = [name for name in VIDEO_FIELDS if options[name] is not None]
        if given:
            raise needs(option_name(given[0]), "video", " (it sets the clip)")
    options["kind"] = "video" if is_video else None
    check_preview_path(preview, wait)
    options.update(preset_inputs(options.pop("preset_inputs"), options))
    options["loras"] = [parse_lora(value) for value in options["loras"]] or None
    options["beats"] = list(options["beats"]) or None
    inputs = {name: options[name] for name in INPUT_OPTIONS if options[name] is not None}
    # Every option is checked before a file is uploaded (a placeholder stands in for each input).
    request_from_options(guide_fields({**options, **dict.fromkeys(inputs, "pending")}))
    for name, value in inputs.items():
        input_file(value, option_name(name))  # all checked before any is uploaded
    client = state_of(ctx).client()
    keys = {name: input_key(client, value, option_name(name)) for name, value in inputs.items()}
    request = request_from_options(guide_fields({**options, **keys}))
    report(ctx, client, client.generate(request), wait=wait, as_json=as_json, out=out, preview=preview)


@click.command("images.rerun", short_help="Render image N (or KEY) again from its stored request.")
@click.argument("which", metavar="N|KEY", shell_complete=complete_image_ref)
@click.option(
    "--seed",
    type=click.IntRange(0, MAX_SEED),
    help="Render with this seed instead (the stored one when omitted: the same pixels).",
)
@click.option("--new-seed", is_flag=True, help="Render with a fresh random seed.")
@job_output_options
@click.pass_context
def rerun(
    ctx: click.Context,
    which: str,
    seed: int | None,
    new_seed: bool,
    wait: bool,
    as_json: bool,
    out: Path | None,
) -> None:
    """Queue image N of `images.latest` (1 = newest), or the image with storage KEY, again: exactly the
    request stored with it (model, size, steps, cfg, scheduler, preset already applied), with its own
    seed unless --seed or --new-seed says otherwise. Prints the new image keys like images.generate.

    \b
    Examples:
      kitty-cli images.rerun 1                        # the same pixels again
      kitty-cli images rerun 3 --new-seed --out variation.png
      kitty-cli images.rerun images/20261121_101500_1a2b3c4d.png --seed 42 --no-wait
    """
    if seed is not None and new_seed:
        raise click.UsageError("--seed and --new-seed exclude each other.")
    check_output(out, wait)
    client = state_of(ctx).client()
    key = resolve_key(client, which)
    if key != which:
        click.echo(f"Re-running #{which}: {key}", err=True)
    submitted = client.rerun(key, seed=seed, new_seed=new_seed)
    report(ctx, client, submitted, wait=wait, as_json=as_json, out=out)


@click.command("images.upscale", short_help="Make image N (or KEY) 2 or 4 times larger, as a new image.")
@click.argument("which", metavar="N|KEY", shell_complete=complete_image_ref)
@click.option(
    "--scale",
    type=click.Choice([str(factor) for factor in UPSCALE_FACTORS]),
    default=str(UPSCALE_FACTORS[0]),
    show_default=True,
    help="How many times wider and taller the new image is.",
)
@click.option(
    "--model",
    metavar="NAME",
    help="An upscaler registered in models.yaml (upscalers:); when omitted, the first one registered "
    "for this scale, else plain Lanczos resampling.",
)
@job_output_options
@click.pass_context
def upscale(
    ctx: click.Context,
    which: str,
    scale: str,
    model: str | None,
    wait: bool,
    as_json: bool,
    out: Path | None,
) -> None:
    """Queue image N of `images.latest` (1 = newest), or the image with storage KEY, made --scale times
    larger as a new image (the original stays); prints the new image's key like images.generate.

    \b
    Examples:
      kitty-cli images.upscale 1                   # ×2; waits, prints the new key
      kitty-cli images upscale 3 --scale 4 --out big.png
      kitty-cli images.upscale images/20261121_101500_1a2b3c4d.png --no-wait
    """
    check_output(out, wait)
    client = state_of(ctx).client()
    key = resolve_key(client, which)
    if key != which:
        click.echo(f"Upscaling #{which}: {key}", err=True)
    submitted = client.upscale(key, scale=int(scale), model=model)
    report(ctx, client, submitted, wait=wait, as_json=as_json, out=out)


def option_name(name: str) -> str:
    """The command-line spelling of option parameter `name`: control_image → control-image."""
    return name.replace("_", "-")


def check_output(out: Path | None, wait: bool) -> None:
    """Refuse an ``--out`` that cannot be written before anything is queued."""
    if out is None:
        return
    if not wait:
        raise click.UsageError("--out needs the finished image; it cannot be combined with --no-wait.")
    check_out_path(out)


def report(
    ctx: click.Context,
    client: ImagesClient,
    submitted: GenerateView,
    *,
    wait: bool,
    as_json: bool,
    out: Path | None,
    preview: Path | None = None,
) -> None:
    """After a submit: the job id (--no-wait), or follow the job (its live preview into `preview`)
    and print its keys or JSON, saving the images with --out; a job that did not finish exits 1 with
    its reason."""
    if not wait:
        if as_json:
            echo_json(submitted.model_dump(mode="json"))
        else:
            click.echo(submitted.job_id)
        return

    view = follow(ctx, client, submitted.job_id, preview)
    if as_json:
        echo_json(view.model_dump(mode="json"))
    elif view.status is JobStatus.DONE:
        for key in image_keys(view):
            click.echo(key)
        for clip in view.result.videos if view.result else []:
            click.echo(f"Poster of {clip.key}: {clip.poster_key}", err=True)
    if view.status is not JobStatus.DONE:
        print_error(failure_of(view))
        ctx.exit(EXIT_FAILED)
    if out is not None:
        save_images(client, view, out)


@click.command("images.jobs", short_help="List your jobs, or show one: status, progress, images, error.")
@click.argument("job_id", metavar="[ID]", required=False)
@click.option("--wait", is_flag=True, help="Follow the job's progress until it ends, then show it.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON.")
@click.option(
    "--status",
    type=click.Choice([status.value for status in JobStatus]),
    help="Without ID: only jobs in this state.",
)
@click.option(
    "--limit", type=click.IntRange(1, 100), default=20, show_default=True, help="Without ID: how many."
)
@PREVIEW_OPTION
@click.pass_context
def jobs(
    ctx: click.Context,
    job_id: str | None,
    wait: bool,
    as_json: bool,
    status: str | None,
    limit: int,
    preview: Path | None,
) -> None:
    """Without ID: your jobs, newest first, from every client (one line each: id, status, engine,
    model, prompt). With ID: status (and what it waits for while queued), progress, engine and model,
    times, images or error.

    \b
    Examples:
      kitty-cli images.jobs                         # your latest jobs
      kitty-cli images.jobs --status error          # the failed ones (retry: images.retry ID)
      kitty-cli images.jobs 6f1c0e2a-…
      kitty-cli images.jobs "$JOB" --wait          # progress bar until it ends
      kitty-cli images.jobs "$JOB" --wait --preview live.webp
      kitty-cli images.jobs "$JOB" --json | jq -r .status
    """
    if preview is not None and job_id is None:
        raise click.UsageError("--preview follows one job: give its ID and --wait.")
    check_preview_path(preview, wait)
    client = state_of(ctx).client()
    if job_id is None:
        listing = client.jobs(status=status, limit=limit)
        if as_json:
            echo_json(listing.model_dump(mode="json", exclude_none=True))
            return
        if not listing.jobs:
            click.echo("no jobs", err=True)
        for item in listing.jobs:
            prompt = str((item.request or {}).get("prompt") or "")[:60]
            code = f" {item.error.code.value}" if item.error else ""
            where = f"{item.engine or '-'}  {item.model or '-'}"
            state = "paused" if item.paused else item.status.value  # queued, held by images.pause
            click.echo(f"{item.job_id}  {state:<8}{code}  {where}  {prompt}")
        return
    view = follow(ctx, client, job_id, preview) if wait else client.job(job_id)
    if as_json:
        echo_json(view.model_dump(mode="json"))
        return
    for line in job_lines(view):
        click.echo(line)


@click.command("images.retry", short_help="Submit a failed or canceled job again, optionally changed.")
@click.argument("job_id", metavar="ID")
@click.option("--engine", help="Run it on this engine instead.")
@click.option("--steps", type=click.IntRange(1, 150), help="With this many steps instead.")
@click.option("--width", type=int, help="At this width instead.")
@click.option("--height", type=int, help="At this height instead.")
@click.pass_context
def retry(
    ctx: click.Context,
    job_id: str,
    engine: str | None,
    steps: int | None,
    width: int | None,
    height: int | None,
) -> None:
    """Submit failed or canceled job ID again as a new job; print the new job's id.

    \b
    Examples:
      kitty-cli images.retry 6f1c0e2a-… --steps 20
      kitty-cli images.retry "$JOB" --engine comfyui
    """
    client = state_of(ctx).client()
    view = client.retry(job_id, engine=engine, steps=steps, width=width, height=height)
    click.echo(view.job_id)


@click.command("images.cancel", short_help="Cancel a job; print its resulting status.")
@click.argument("job_id", metavar="ID")
@click.option("--wait", is_flag=True, help="Wait until a running job has actually stopped.")
@click.option("--json", "as_json", is_flag=True, help="Print the job's JSON after the cancel.")
@click.pass_context
def cancel(ctx: click.Context, job_id: str, wait: bool, as_json: bool) -> None:
    """Cancel job ID and print its resulting status on stdout. A queued job is removed at once; a
    running one stops at its next denoising step; a finished one is left as it is.

    \b
    Examples:
      kitty-cli images.cancel "$JOB"
      kitty-cli images cancel "$JOB" --wait      # returns once the job has stopped
    """
    client = state_of(ctx).client()
    before = client.cancel(job_id)
    view = follow(ctx, client, job_id) if wait and not before.status.is_terminal else before
    click.echo(cancel_message(before, view), err=True)
    if as_json:
        echo_json(view.model_dump(mode="json"))
    else:
        click.echo(view.status.value)


def cancel_message(before: JobView, after: JobView) -> str:
    """What the cancel did, judged from the view it answered and, with --wait, the final one."""
    if before.status is JobStatus.CANCELED:
        return f"Canceled job {before.job_id}."
    if before.status.is_terminal:
        return f"Job {before.job_id} had already ended ({before.status.value}); nothing to cancel."
    if after.status.is_terminal:
        return f"Job {after.job_id} stopped: {after.status.value}."
    return (
        f"Cancel requested: job {before.job_id} stops at its next step; "
        f"follow it with `kitty-cli images.jobs {before.job_id} --wait`."
    )
