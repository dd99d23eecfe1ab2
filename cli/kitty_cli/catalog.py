"""What the service offers: `images.models` (registered models and their defaults), `images.presets`
(named recipes and their quality levels) and `images.engines` (each engine's health)."""

from __future__ import annotations

import click

from .context import state_of
from .render import echo_json, engines_table, models_table, preset_details, presets_table


@click.command("images.models", short_help="List the registered models; the default is marked.")
@click.option("--json", "as_json", is_flag=True, help="Print the models' JSON.")
@click.pass_context
def models(ctx: click.Context, as_json: bool) -> None:
    """List the models the service can render with: which one is the default, whether it loads from a
    local folder or the hub, its refiner, and the size and steps a request gets when it names neither.

    \b
    Examples:
      kitty-cli images.models
      kitty-cli images models --json | jq -r .default
    """
    view = state_of(ctx).client().models()
    if as_json:
        echo_json(view.model_dump(mode="json"))
        return
    if not view.models:
        click.echo(
            "No models registered; build the demo ones with `kitty-images models tiny` "
            "or fetch one with `kitty-images models pull sdxl_base`.",
            err=True,
        )
        return
    for line in models_table(view):
        click.echo(line)


@click.command("images.presets", short_help="List the presets: name, title, default size and qualities.")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the presets' JSON (templates included).")
@click.pass_context
def presets(ctx: click.Context, name: str | None, as_json: bool) -> None:
    """List the presets `images.generate --preset NAME` takes: each wraps the prompt in its template,
    adds its negative prompt when none is given, and fills the size and quality left unset; the
    quality levels (steps/cfg) are what `--quality` picks, the preset's default marked with *. Its
    inputs (* required; pass with --input NAME=VALUE or their own options) and the steps that run
    after the render are listed too. With NAME: everything about that one preset.

    \b
    Examples:
      kitty-cli images.presets
      kitty-cli images.presets identity_lock
      kitty-cli images.generate "an old fisherman mending a net" --preset photoreal --quality pro
      kitty-cli images presets --json | jq -r '.presets[] | .name + ": " + .prompt_template'
    """
    view = state_of(ctx).client().presets()
    chosen = [preset for preset in view.presets if name is None or preset.name == name]
    if name is not None and not chosen:
        raise click.BadParameter(
            f"no preset '{name}'; the presets are: {', '.join(p.name for p in view.presets)}",
            param_hint="'NAME'",
        )
    if as_json:
        echo_json(view.model_dump(mode="json") if name is None else chosen[0].model_dump(mode="json"))
        return
    lines = presets_table(view.presets) if name is None else preset_details(chosen[0])
    for line in lines:
        click.echo(line)


@click.command("images.engines", short_help="Show each engine: ready, offline or misconfigured.")
@click.option("--json", "as_json", is_flag=True, help="Print the matrix's JSON.")
@click.pass_context
def engines(ctx: click.Context, as_json: bool) -> None:
    """Show the engines matrix: status, version, workers serving it, and why when not ready.

    \b
    Examples:
      kitty-cli images.engines
      kitty-cli images engines --json | jq '.engines[] | select(.status == "ready") | .engine_id'
    """
    view = state_of(ctx).client().engines()
    if as_json:
        echo_json(view.model_dump(mode="json"))
        return
    for line in engines_table(view.engines):
        click.echo(line)
