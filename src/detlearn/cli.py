"""The ``detlearn`` command: a thin shell over the Python API (parse, call, print).

Every user error is one line on stderr and exit code 2.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
import yaml
from rich.console import Console

from detlearn.errors import DetlearnError

__all__ = ["app", "main"]

app = typer.Typer(
    name="detlearn",
    help="From detector-simulation ROOT files to trained, validated, deployable ML models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Inspect run configs.", no_args_is_help=True)
app.add_typer(config_app, name="config")

out = Console()
err = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])

SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="override a config key: --set training.lr=1e-3 (repeatable)"),
]


def _user_errors(fn: F) -> F:
    """Turn a DetlearnError into one red line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DetlearnError as e:
            err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=DetlearnError.exit_code) from None

    return wrapper  # type: ignore[return-value]


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` -> ``{"a": {"b": 1}, "c": "x"}`` (values parsed as YAML)."""
    result: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise DetlearnError(f"--set '{item}': expected KEY=VALUE")
        node = result
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return result


@config_app.command("show")
@_user_errors
def config_show(recipe: Annotated[str, typer.Argument(help="recipe name")]) -> None:
    """Print a recipe's full default config, with a comment on every key."""
    from detlearn.config import deep_merge, dump_commented_yaml, validate_config
    from detlearn.recipes import get_recipe

    raw = deep_merge({"recipe": recipe}, get_recipe(recipe).default_config())
    print(dump_commented_yaml(validate_config(raw, f"recipe {recipe}")))


@app.command()
@_user_errors
def recipes() -> None:
    """List the built-in recipes."""
    from detlearn.recipes import RECIPES

    for recipe in RECIPES.values():
        out.print(f"[bold]{recipe.name}[/]  {recipe.summary}")


@app.command()
@_user_errors
def simulate(
    recipe: Annotated[str, typer.Argument(help="recipe whose simulator to run")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="output folder")] = Path("sim"),
    events: Annotated[int, typer.Option("--events", "-n", help="events to generate")] = 10_000,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    set_: SetOption = None,
) -> None:
    """Write ROOT files from a recipe's built-in simulator."""
    from detlearn.recipes import get_recipe

    rec = get_recipe(recipe)
    options = rec.default_config().get("simulate", {})
    options.update(parse_overrides(set_))
    files = rec.function("simulate")(out_dir, events, seed, options)
    out.print(f"wrote {len(files)} file(s) to {out_dir}")


@app.command()
@_user_errors
def prepare(
    config: Annotated[Path, typer.Argument(help="run config (YAML)")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="dataset folder")] = Path("dataset"),
    force: Annotated[bool, typer.Option(help="redo every shard")] = False,
    workers: Annotated[int | None, typer.Option(help="local worker processes")] = None,
    executor: Annotated[str | None, typer.Option(help="local | dask | slurm")] = None,
    scheduler: Annotated[str | None, typer.Option(help="dask scheduler tcp://host:port")] = None,
    quiet: Annotated[bool, typer.Option(help="no progress bar")] = False,
    set_: SetOption = None,
) -> None:
    """Read ROOT files into a dataset folder (parquet shards + manifest.json)."""
    from detlearn.config import load_config
    from detlearn.prepare import prepare as run_prepare

    overrides = parse_overrides(set_)
    ex = overrides.setdefault("executor", {})
    for key, value in (("workers", workers), ("kind", executor), ("scheduler", scheduler)):
        if value is not None:
            ex[key] = value
    if scheduler is not None and executor is None:
        ex["kind"] = "dask"
    summary = run_prepare(load_config(config, overrides), out_dir, force=force, progress=not quiet)
    out.print(
        f"files {summary.files}  shards {summary.shards}  rows {summary.rows:,}  "
        f"rows/s {summary.rows_per_second:,.0f}  skipped {summary.skipped}  "
        f"failed {len(summary.failed)}"
    )
    for bad in summary.failed:
        err.print(f"[yellow]failed:[/] {bad['path']}: {bad['reason']}", highlight=False)


def main() -> None:
    """Entry point of the ``detlearn`` console script."""
    app()


if __name__ == "__main__":
    sys.exit(main())
