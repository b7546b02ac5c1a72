"""The ``detlearn`` command: a thin shell over the Python API (parse, call, print).

Every user error is one line on stderr and exit code 2.
"""

from __future__ import annotations

import functools
import json
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
import yaml
from rich.console import Console
from rich.markup import escape

from detlearn.config import RunConfig, deep_merge, dump_commented_yaml, validate_config
from detlearn.errors import DetlearnError, DetlearnWarning
from detlearn.families import export_run
from detlearn.families import train as run_train
from detlearn.pipeline import SimulationEstimate, run_recipe
from detlearn.pipeline import evaluate as run_evaluate
from detlearn.pipeline import simulate as run_simulate
from detlearn.prepare import prepare as run_prepare
from detlearn.recipes import RECIPES, get_recipe, load_config
from detlearn.runs.artifact import read_run_info
from detlearn.runs.surrogate import Surrogate, write_samples

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


def _count(text: str | int) -> int:
    """A count as physicists write it: ``100000``, ``1e5``, ``100_000`` (or an int default).

    Example:
        >>> _count("1e5"), _count("100_000"), _count(7)
        (100000, 100000, 7)
    """
    if isinstance(text, int):
        return text
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a number") from None
    if not value.is_integer():
        raise typer.BadParameter(f"{text!r} is not a whole number")
    return int(value)


def _user_errors(fn: F) -> F:
    """Turn a DetlearnError, or an OSError (a folder that cannot be made, a full disk, a
    permission), into one red line on stderr and exit code 2; a DetlearnWarning into one yellow
    line on stderr (each shown once)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("default", DetlearnWarning)
            warnings.showwarning = _one_line_warning(warnings.showwarning)
            try:
                return fn(*args, **kwargs)
            except (DetlearnError, OSError) as e:
                err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
                raise typer.Exit(code=DetlearnError.exit_code) from None

    return wrapper  # type: ignore[return-value]


def _one_line_warning(other: Callable[..., None]) -> Callable[..., None]:
    """A ``warnings.showwarning`` printing a DetlearnWarning as one line; ``other`` the rest."""

    def show(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if issubclass(category, DetlearnWarning):
            err.print(
                f"[bold yellow]warning:[/] {escape(str(message))}", highlight=False, soft_wrap=True
            )
        else:
            other(message, category, *args, **kwargs)

    return show


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


#: ``detlearn config show generic``: a config of your own files, with no recipe.
GENERIC = "generic"


@config_app.command("show")
@_user_errors
def config_show(
    recipe: Annotated[
        str, typer.Argument(help=f"recipe name, or '{GENERIC}' for your own files (no recipe)")
    ],
) -> None:
    """Print a recipe's full default config (or, for 'generic', the defaults of a config with
    no recipe: your own columns), with a comment on every key."""
    if recipe == GENERIC:
        print(dump_commented_yaml(RunConfig()))
        return
    if recipe not in RECIPES:
        raise DetlearnError(
            f"unknown recipe '{recipe}'; known recipes: {', '.join(sorted(RECIPES))}, or "
            f"'{GENERIC}' for a config of your own files"
        )
    found = get_recipe(recipe)
    cfg = validate_config(
        deep_merge({"recipe": recipe}, found.default_config()), f"recipe {recipe}"
    )
    # The simulator's options, every one with its default and meaning.
    expand = {"simulate": found.simulate_options.model_validate(cfg.simulate)}
    print(dump_commented_yaml(cfg, expand=expand))


@app.command()
@_user_errors
def recipes() -> None:
    """List the built-in recipes."""
    for recipe in RECIPES.values():
        out.print(f"[bold]{recipe.name}[/]  {recipe.summary}")


@app.command()
@_user_errors
def simulate(
    recipe: Annotated[str, typer.Argument(help="recipe whose simulator to run")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="output folder")] = Path("sim"),
    events: Annotated[
        int, typer.Option("--events", "-n", parser=_count, help="events to generate (1e6 works)")
    ] = 10_000,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    set_: SetOption = None,
) -> None:
    """Write ROOT files from a recipe's built-in simulator (into a folder holding no other ROOT
    files: prepare reads them all); prints the estimated size and time as it starts."""
    rec = get_recipe(recipe)
    options = rec.default_config().get("simulate", {})
    options.update(parse_overrides(set_))

    def announce(estimate: SimulationEstimate) -> None:
        out.print(f"simulate: {estimate.line()}", markup=False)

    files = run_simulate(recipe, out_dir, events, seed, options, announce)
    out.print(f"wrote {len(files)} file(s) to {out_dir}", markup=False)


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
    if summary.dropped():
        out.print(f"dropped: {summary.dropped()}", highlight=False, markup=False)
    for bad in summary.failed:
        err.print(
            f"[yellow]failed:[/] {escape(bad['path'])}: {escape(bad['reason'])}", highlight=False
        )


@app.command()
@_user_errors
def train(
    config: Annotated[Path, typer.Argument(help="run config (YAML)")],
    data: Annotated[Path, typer.Option("--data", "-d", help="prepared dataset folder")] = Path(
        "dataset"
    ),
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="run folder")] = Path("run"),
    resume: Annotated[bool, typer.Option(help="continue from the last checkpoint")] = False,
    quiet: Annotated[bool, typer.Option(help="no progress bar")] = False,
    set_: SetOption = None,
) -> None:
    """Train the config's model on a prepared dataset; writes a run folder."""
    cfg = load_config(config, parse_overrides(set_))
    run_dir = run_train(cfg, data, out_dir, resume=resume, progress=not quiet)
    out.print(f"trained run in {run_dir}", markup=False)


def parse_context(items: list[str]) -> dict[str, list[float]]:
    """``["z=0,theta=1.4,p=2", "z=100,theta=1.2,p=5"]`` -> column lists."""
    rows = []
    for item in items:
        row = {}
        for part in item.split(","):
            key, sep, value = part.partition("=")
            try:
                row[key.strip()] = float(value)
            except ValueError:
                raise DetlearnError(f"--context '{item}': expected NAME=NUMBER pairs") from None
            if not sep:
                raise DetlearnError(f"--context '{item}': expected NAME=NUMBER pairs")
        rows.append(row)
    keys = set(rows[0]) if rows else set()
    if any(set(r) != keys for r in rows):
        raise DetlearnError("--context: every context must name the same columns")
    return {k: [r[k] for r in rows] for k in rows[0]} if rows else {}


@app.command()
@_user_errors
def sample(
    run: Annotated[Path, typer.Argument(help="run folder")],
    context: Annotated[
        list[str], typer.Option("--context", "-c", help="z=0,theta=1.4,p=2 (repeatable)")
    ],
    n: Annotated[int, typer.Option("-n", parser=_count, help="samples per context")] = 100_000,
    output: Annotated[Path, typer.Option("--output", "-o", help="parquet file")] = Path(
        "samples.parquet"
    ),
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    force: Annotated[bool, typer.Option(help="overwrite an existing --output file")] = False,
) -> None:
    """Draw samples from a trained surrogate at given contexts; writes parquet."""
    if output.exists() and not force:
        raise DetlearnError(f"{output}: exists; pass --force to overwrite it")
    surrogate = Surrogate.load(run)
    contexts = parse_context(context)
    write_samples(surrogate, contexts, n, output, seed=seed)
    out.print(f"wrote {n * len(next(iter(contexts.values()))):,} samples to {output}", markup=False)


@app.command()
@_user_errors
def fastsim(
    run: Annotated[Path, typer.Argument(help="run folder (a surrogate with a count model)")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="output folder")] = Path("fastsim"),
    events: Annotated[
        int | None,
        typer.Option("--events", "-n", parser=_count, help="events, drawn as the simulator does"),
    ] = None,
    contexts: Annotated[
        Path | None, typer.Option(help="parquet/CSV file of contexts, one event per row")
    ] = None,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
) -> None:
    """Write simulation files from a trained surrogate, in the layout its recipe's simulator
    (and ddsim) writes, for prepare or any EDM4hep reader."""
    recipe = read_run_info(run).recipe
    rec = get_recipe(recipe) if recipe else None
    if rec is None or rec.fastsim is None:
        able = [r.name for r in RECIPES.values() if r.fastsim is not None]
        raise DetlearnError(
            f"{run}: fastsim writes files for a run of recipe {', '.join(able)} "
            f"(this run's recipe: {recipe or 'none'})"
        )
    files = rec.fastsim(run, out_dir, events, seed, contexts)
    out.print(f"wrote {len(files)} file(s) to {out_dir}", markup=False)


@app.command()
@_user_errors
def evaluate(
    run: Annotated[Path, typer.Argument(help="run folder")],
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="report folder")] = None,
) -> None:
    """Validate a run on its own test split, and against its recipe's simulator; writes
    report.html + metrics.json."""
    report = run_evaluate(run, out_dir)
    reference = json.loads((report.parent / "metrics.json").read_text()).get("reference")
    if reference:
        out.print(f"reference: {reference}", markup=False, soft_wrap=True)
    _print_checks(report)
    out.print(f"report: {report}", markup=False)


def _print_checks(report: Path) -> None:
    """One line per quality target of a report: pass/FAIL, the value and the target."""
    metrics = json.loads((report.parent / "metrics.json").read_text())
    for name, check in metrics.get("checks", {}).items():
        mark = "[green]pass[/]" if check["pass"] else "[red]FAIL[/]"
        out.print(
            f"{mark}  {name} = {check['value']:.4g}  (target {check['op']} {check['threshold']:g})"
        )


@app.command("export")
@_user_errors
def export_cmd(
    run: Annotated[Path, typer.Argument(help="run folder")],
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="export folder")] = None,
) -> None:
    """Export a run to ONNX with a JSON sidecar, checked against onnxruntime."""
    summary = export_run(run, out_dir)
    for name, sidecar in summary["graphs"].items():
        parity = sidecar["parity"]
        out.print(
            f"exported {name} (opset {sidecar['opset']}), onnxruntime parity "
            f"max |Δ| {parity['max_abs']:.1e} on {parity['rows']} held-out rows",
            markup=False,
        )


@app.command()
@_user_errors
def demo(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="output folder")] = Path("demo"),
    recipe: Annotated[str, typer.Option(help="recipe to run")] = "klm-timing",
    events: Annotated[int | None, typer.Option(parser=_count, help="events to simulate")] = None,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    set_: SetOption = None,
) -> None:
    """Simulate, prepare, train, evaluate and export a recipe on built-in data."""
    rec = get_recipe(recipe)
    n = events if events is not None else rec.demo_events
    overrides = deep_merge(dict(rec.demo_overrides), parse_overrides(set_))
    result = run_recipe(recipe, out_dir, int(n), seed, overrides, console=out)
    _print_checks(result["report"])
    total = result["timings"]["total"] / 60
    out.print(f"report: {result['report']}   total {total:.1f} min", markup=False)


def main() -> None:
    """Entry point of the ``detlearn`` console script."""
    app()


if __name__ == "__main__":
    sys.exit(main())
