"""Queue commands: `images.pause` and `images.resume` (your queued jobs; an admin key's --everyone:
the whole queue) and `images.front` (a queued job before your other queued jobs)."""

from __future__ import annotations

import click

from services.contracts.schema import QueueView

from .context import state_of
from .render import echo_json, job_lines

EVERYONE_OPTION = click.option(
    "--everyone", is_flag=True, help="The whole queue, every caller's jobs (admin keys only)."
)
JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print the JSON.")


def queue_message(view: QueueView, *, everyone: bool) -> str:
    if everyone:
        return (
            "The whole queue is paused: workers take no new job."
            if view.everyone_paused
            else ("The whole queue runs again.")
        )
    if view.paused:
        held = f" ({view.held} set aside so far)" if view.held else ""
        return f"Your queue is paused: your queued jobs wait after the running one{held}."
    resumed = f" {view.resumed} job{'s' if view.resumed != 1 else ''} back in line." if view.resumed else ""
    return f"Your queue runs again.{resumed}"


def show_queue(view: QueueView, *, everyone: bool, as_json: bool) -> None:
    if as_json:
        echo_json(view.model_dump(mode="json", exclude_none=True))
    else:
        click.echo(queue_message(view, everyone=everyone))


@click.command("images.pause", short_help="Hold your queued jobs after the running one.")
@EVERYONE_OPTION
@JSON_OPTION
@click.pass_context
def pause(ctx: click.Context, everyone: bool, as_json: bool) -> None:
    """Hold your queued jobs, and those you submit meanwhile, until images.resume: a running job
    finishes, the others keep their places and stay listed (queued, paused) and cancelable.

    \b
    Examples:
      kitty-cli images.pause
      kitty-cli images.pause --everyone    # admin: workers take no new job
    """
    view = state_of(ctx).client().pause(everyone=everyone)
    show_queue(view, everyone=everyone, as_json=as_json)


@click.command("images.resume", short_help="Start your paused jobs again, in their order.")
@EVERYONE_OPTION
@JSON_OPTION
@click.pass_context
def resume(ctx: click.Context, everyone: bool, as_json: bool) -> None:
    """Start your paused jobs again, in their places and their order (--everyone, admin: the whole
    queue; each caller's own pause stays).

    \b
    Examples:
      kitty-cli images.resume
      kitty-cli images.resume --everyone
    """
    view = state_of(ctx).client().resume(everyone=everyone)
    show_queue(view, everyone=everyone, as_json=as_json)


@click.command("images.front", short_help="Move a queued job before your other queued jobs.")
@click.argument("job_id", metavar="ID")
@JSON_OPTION
@click.pass_context
def front(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """Move queued job ID before your other queued jobs in its queue; other callers' jobs keep their
    places (an admin key moves it to the very front). A running or finished job cannot move.

    \b
    Examples:
      kitty-cli images.front 6f1c0e2a-…
      kitty-cli images front "$JOB" --json | jq .position
    """
    view = state_of(ctx).client().to_front(job_id)
    if as_json:
        echo_json(view.model_dump(mode="json"))
        return
    for line in job_lines(view):
        click.echo(line)
