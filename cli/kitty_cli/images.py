"""The `images.*` commands: generate, latest, select and jobs, spoken through `ImagesClient`."""

from __future__ import annotations

import json
from typing import Any

import click
from pydantic import ValidationError

from services.contracts import (
    ENGINE_NAMES,
    SCHEDULER_NAMES,
    ApiError,
    ErrorCode,
    ErrorInfo,
    GenerateRequest,
    JobStatus,
    JobView,
    LatestItem,
)
from services.contracts.schema import LATEST_DEFAULT, LATEST_MAX

from .context import state_of
from .render import ProgressLine, engines_table, image_keys, job_lines, latest_table, print_error

EXIT_FAILED = 1
"""The job or the call failed; the reason is on stderr."""

EXIT_INTERRUPTED = 130
"""Ctrl-C while waiting (128 + SIGINT), as shells report it."""


def request_from_options(options: dict[str, Any]) -> GenerateRequest:
    """Validate here, so a bad flag is named before anything is queued."""
    fields = {name: value for name, value in options.items() if value is not None}
    try:
        return GenerateRequest(**fields)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'request'}: {error['msg']}"
            for error in exc.errors()
        )
        raise ApiError(
            400,
            ErrorInfo(
                code=ErrorCode.VALIDATION_ERROR,
                message=problems,
                remediation=["See `kitty-cli images.generate --help` for each option's range."],
            ),
        ) from exc


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))


@click.command("images.generate", short_help="Queue a prompt; wait and print its image keys.")
@click.argument("prompt")
@click.option("--model", help="Model name from the service's models.yaml (its default when omitted).")
@click.option("--width", type=int, help="Pixels, a multiple of 8 in 64-2048.")
@click.option("--height", type=int, help="Pixels, a multiple of 8 in 64-2048.")
@click.option("--steps", type=int, help="Denoising steps, 1-150.")
@click.option("--cfg", type=float, help="Classifier-free guidance scale.")
@click.option("--seed", type=int, help="Fixed seed for a reproducible image (random when omitted).")
@click.option("--negative", "negative_prompt", help="Negative prompt: what the image should not show.")
@click.option("--num-images", type=int, help="Images in this job, 1-4.")
@click.option(
    "--engine", type=click.Choice(ENGINE_NAMES), help="Engine (the service's IMAGE_ENGINE when omitted)."
)
@click.option("--scheduler", type=click.Choice(SCHEDULER_NAMES), help="Sampler.")
@click.option("--refiner/--no-refiner", default=None, help="Run the SDXL refiner pass after the base model.")
@click.option(
    "--wait/--no-wait", default=True, show_default=True, help="Wait for the job and print its images."
)
@click.option("--json", "as_json", is_flag=True, help="Print the job's JSON instead of image keys.")
@click.pass_context
def generate(ctx: click.Context, wait: bool, as_json: bool, **options: Any) -> None:
    """Queue PROMPT for generation; print the image keys when it is done (or the job id with --no-wait)."""
    state = state_of(ctx)
    client = state.client()
    submitted = client.generate(request_from_options(options))
    if not wait:
        if as_json:
            echo_json(submitted.model_dump(mode="json"))
        else:
            click.echo(submitted.job_id)
        return

    progress = ProgressLine()
    try:
        view = client.wait(submitted.job_id, on_update=progress, interval=state.poll_interval)
    except KeyboardInterrupt:
        progress.finish()
        click.echo(
            f"Stopped waiting; the job keeps running: kitty-cli images.jobs {submitted.job_id}",
            err=True,
        )
        ctx.exit(EXIT_INTERRUPTED)
    progress.finish()

    if as_json:
        echo_json(view.model_dump(mode="json"))
    elif view.status is JobStatus.DONE:
        for key in image_keys(view):
            click.echo(key)
    if view.status is not JobStatus.DONE:
        print_error(failure_of(view))
        ctx.exit(EXIT_FAILED)


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


@click.command("images.latest", short_help="List the newest images, numbered from 1.")
@click.option(
    "--limit",
    type=click.IntRange(1, LATEST_MAX),
    default=LATEST_DEFAULT,
    show_default=True,
    help="How many images, newest first.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the listing's JSON.")
@click.pass_context
def latest(ctx: click.Context, limit: int, as_json: bool) -> None:
    """List the newest images; the numbers are what `images.select N` takes."""
    view = state_of(ctx).client().latest(limit=limit)
    if as_json:
        echo_json(view.model_dump(mode="json"))
        return
    if not view.items:
        click.echo('No images yet; make one with `kitty-cli images.generate "a prompt"`.', err=True)
        return
    for line in latest_table(view.items):
        click.echo(line)


@click.command("images.select", short_help="Print the imageRef of image N (or KEY).")
@click.argument("which", metavar="N|KEY")
@click.pass_context
def select(ctx: click.Context, which: str) -> None:
    """Print the imageRef of image N of `images.latest` (1 = newest), or of the image with storage KEY."""
    client = state_of(ctx).client()
    key = which
    if which.isdigit():
        # Keys are paths such as images/20240501_120000_ab12cd34.png, never bare numbers.
        position = position_of(which)
        key = key_at(client.latest(limit=position).items, position)
        click.echo(f"Selected #{position}: {key}", err=True)
    echo_json(client.select(key).model_dump(mode="json"))


def position_of(which: str) -> int:
    position = int(which)
    if not 1 <= position <= LATEST_MAX:
        raise ApiError(
            400,
            ErrorInfo(
                code=ErrorCode.VALIDATION_ERROR,
                message=f"image number must be between 1 and {LATEST_MAX}, got {which}",
                remediation=["Pass a storage key instead to select an older image."],
            ),
        )
    return position


def key_at(items: list[LatestItem], position: int) -> str:
    """The key at 1-based ``position`` of a newest-first listing."""
    if position > len(items):
        raise ApiError(
            404,
            ErrorInfo(
                code=ErrorCode.KEY_NOT_FOUND,
                message=f"there is no image #{position}: the listing has {len(items)}",
                remediation=["See the numbers with `kitty-cli images.latest`."],
            ),
        )
    return items[position - 1].key


@click.command("images.jobs", short_help="Show a job: status, progress, images, error.")
@click.argument("job_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print the job's JSON.")
@click.pass_context
def jobs(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """Show job ID: status, progress, images or error."""
    view = state_of(ctx).client().job(job_id)
    if as_json:
        echo_json(view.model_dump(mode="json"))
        return
    for line in job_lines(view):
        click.echo(line)


@click.command("images.engines", short_help="Show each engine: ready, offline or misconfigured.")
@click.option("--json", "as_json", is_flag=True, help="Print the matrix's JSON.")
@click.pass_context
def engines(ctx: click.Context, as_json: bool) -> None:
    """Show the engines matrix: status, version, workers serving it, and why when not ready."""
    view = state_of(ctx).client().engines()
    if as_json:
        echo_json(view.model_dump(mode="json"))
        return
    for line in engines_table(view.engines):
        click.echo(line)


COMMANDS = (generate, latest, select, jobs, engines)
