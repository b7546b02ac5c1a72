"""The whole path: ``evaluate`` any run, and a recipe end to end on its built-in simulator.

:func:`evaluate` scores a run with its family's generic metrics on the held-out test split of
its own data and then, when the run's dataset was written by its recipe's built-in simulator,
with the recipe's suite against that simulator's exact truth. :func:`run_recipe` is what
``make demo`` runs (``detlearn demo``): simulate -> prepare -> train -> evaluate -> export,
each the public function a user would call by hand. Its output folder::

    run.yaml    the config used (recipe defaults + overrides + the simulated inputs)
    sim/        ROOT files from the recipe's simulator
    dataset/    prepared parquet shards + manifest.json
    run/        the trained run (safetensors weights, history, loss plot)
    report/     report.html + metrics.json + figures/
    run/export/ ONNX files + JSON sidecar
"""

from __future__ import annotations

import operator
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from detlearn._files import (
    atomic_write_bytes,
    check_out_folder,
    nearest_existing,
    remove_temp_files,
)
from detlearn._threads import usable_memory
from detlearn.config import RunConfig, deep_merge, read_yaml, validate_config, validate_options
from detlearn.errors import DetlearnError
from detlearn.families import export_run, get_family, train
from detlearn.io.dataset import Dataset
from detlearn.io.provenance import read_provenance, simulator_difference
from detlearn.prepare import prepare
from detlearn.recipes import Recipe, get_recipe, load_config
from detlearn.report import write_report
from detlearn.runs.artifact import RunInfo, read_run_info

__all__ = [
    "SimulationEstimate",
    "estimate_simulation",
    "evaluate",
    "run_recipe",
    "simulate",
    "simulator_mismatch",
]


def evaluate(run_dir: str | Path, out_dir: str | Path | None = None, seed: int = 0) -> Path:
    """Validate a run; writes ``report.html`` + ``metrics.json`` into ``out_dir`` (default
    ``run_dir/report``) and returns the report's path.

    The family's generic metrics always run (the run's own test split); the recipe's suite
    follows for a run trained for a recipe, its generic section placed after the recipe's own.
    """
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "report"
    info = read_run_info(run_dir)
    generic = get_family(info.family).evaluate(run_dir, out_dir, seed)
    reference = "the run's own held-out test split"
    if info.recipe:
        not_simulated = simulator_mismatch(info)
        if not_simulated is None:
            return get_recipe(info.recipe).evaluate(run_dir, out_dir, [generic], seed)
        reference += f", not {info.recipe}'s simulator: {not_simulated}"
    return write_report(
        out_dir,
        f"{info.family} run {run_dir.name}",
        {},
        sections=[generic],
        reference=reference,
    )


#: ``simulate`` settings that change how the files are made, not what they hold: threads (the
#: results do not depend on them), compression and the file size.
_NOT_PHYSICS = frozenset({"threads", "compression", "compression_level", "events_per_file"})


def simulator_mismatch(info: RunInfo) -> str | None:
    """None when every input file of the run's dataset was written by its recipe's built-in
    simulator with the ``simulate`` settings of the run's config (so the recipe's suite, which
    compares with that simulator's exact truth, applies); otherwise why not, in one clause.
    Settings that do not change the events (threads, compression, events per file) may
    differ."""
    recipe = get_recipe(str(info.recipe))
    records = Dataset.open(info.dataset).manifest.get("provenance")
    if not records:
        return "the dataset records no file provenance (prepare it again to record it)"
    options = recipe.simulate_options.model_validate(info.config.simulate or {})
    wanted = options.model_dump(mode="json")
    for path, record in records.items():
        difference = simulator_difference(record, recipe.name, wanted, _NOT_PHYSICS)
        if difference is None:
            continue
        what, have, want = difference
        if what == "writer":
            return f"{path} was not written by it ({have or 'no detlearn record: your own file'})"
        if what == "recipe":
            return f"{path} was written by {have}'s simulator"
        return (
            f"{path} was simulated with {what}={have!r}, the run's config says "
            f"simulate.{what}={want!r} (set it to compare with the simulator)"
        )
    return None


@dataclass(frozen=True)
class SimulationEstimate:
    """What a recipe's simulation of ``--events`` will take, from its recipe's measured sizes
    and rate (:class:`~detlearn.recipes.base.Recipe`).

    Attributes:
        events: events written in all.
        bytes: their files' size on disk [bytes].
        seconds: wall time on 2 CPU cores [s].
        memory: the simulator's memory for the events it holds at once [bytes].
    """

    events: int
    bytes: float
    seconds: float
    memory: float

    def line(self) -> str:
        """One line: ``~N events, ~X GB, ~T min`` (MB below a GB; s below a minute, h above
        an hour).

        Example:
            >>> SimulationEstimate(2_000_000, 3.4e9, 5400.0, 1e8).line()
            '~2,000,000 events, ~3.4 GB, ~1.5 h'
        """
        size = f"{self.bytes / 1e9:.3g} GB" if self.bytes >= 1e9 else f"{self.bytes / 1e6:.3g} MB"
        if self.seconds < 60:
            duration = f"{self.seconds:.2g} s"
        elif self.seconds < 3600:
            duration = f"{self.seconds / 60:.2g} min"
        else:
            duration = f"{self.seconds / 3600:.2g} h"
        return f"~{self.events:,} events, ~{size}, ~{duration}"


def estimate_simulation(
    recipe: str, events: int, options: Mapping[str, Any] | None = None
) -> SimulationEstimate:
    """The disk, time and memory ``simulate(recipe, out, events, options=options)`` will take.

    Example:
        >>> est = estimate_simulation("mass-grid", 10_000)  # 100 grid points
        >>> est.events, round(est.bytes / 1e6)
        (1000000, 47)
    """
    rec = get_recipe(recipe)
    return _estimate(
        rec, events, validate_options(rec.simulate_options, options, f"{recipe} simulate")
    )


def _estimate(rec: Recipe, events: int, cfg: Any) -> SimulationEstimate:
    """:func:`estimate_simulation` with the recipe's validated simulator options ``cfg``."""
    try:
        count = operator.index(events)
    except TypeError:
        raise DetlearnError(
            f"{rec.name} simulate: events must be a whole number (got {events!r})"
        ) from None
    written, held = rec.event_counts(max(count, 0), cfg)
    return SimulationEstimate(
        events=written,
        bytes=written * rec.event_bytes,
        seconds=written / rec.events_per_second,
        memory=held * rec.held_event_bytes,
    )


def _check_fits(recipe: str, out_dir: Path, estimate: SimulationEstimate, reused: int) -> None:
    """Refuse a simulation whose files would not fit in the free space of ``out_dir``'s file
    system (plus the ``reused`` bytes of files it writes again), or whose events held at once
    would not fit in memory."""
    nearest = nearest_existing(out_dir)
    free = shutil.disk_usage(nearest).free + reused
    if estimate.bytes > free:
        raise DetlearnError(
            f"{recipe} simulate: ~{estimate.events:,} events need ~{estimate.bytes / 1e9:.3g} GB "
            f"on disk, {free / 1e9:.3g} GB free in {nearest}: lower --events"
        )
    available = usable_memory()
    if estimate.memory > available:
        raise DetlearnError(
            f"{recipe} simulate: the events it holds at once need ~{estimate.memory / 1e9:.3g} "
            f"GB of memory, {available / 1e9:.3g} GB available: lower --events"
        )


def simulate(
    recipe: str,
    out_dir: str | Path,
    events: int,
    seed: int = 0,
    options: Mapping[str, Any] | None = None,
    announce: Callable[[SimulationEstimate], None] | None = None,
) -> list[Path]:
    """Run ``recipe``'s built-in simulator into ``out_dir``; returns the files it wrote.

    ``prepare`` reads every ROOT file of a folder, so a folder holding one this job would not
    write is refused before anything is written: a file with no detlearn provenance record
    (your own), or one written by fastsim, by another recipe's simulator, with other options
    or another seed. Files of the same job (a rerun, or one stopped half-way) are written
    again, and a killed job's temp files removed. A file of the same settings that it did not
    write again (an earlier run of more events) is an error once it is done.

    Also refused before anything is written: files that would not fit in the free space of
    ``out_dir``'s file system, or events held at once that would not fit in memory
    (:func:`estimate_simulation`). Once the checks pass, ``announce`` (when given) gets the
    estimate, before the simulator starts.
    """
    rec = get_recipe(recipe)
    out_dir = Path(out_dir)
    # Its ROOT files are checked one by one below; other files do not matter to prepare.
    check_out_folder(out_dir, "simulation folder")
    wanted = validate_options(rec.simulate_options, options, f"{recipe} simulate")
    estimate = _estimate(rec, events, wanted)
    existing = sorted(out_dir.glob("*.root")) if out_dir.is_dir() else []
    for path in existing:
        why = _not_this_job(read_provenance(path), recipe, wanted.model_dump(mode="json"), seed)
        if why:
            raise DetlearnError(
                f"{path}: {why}, so this simulate would not write it, and prepare would read "
                "it beside the new files; choose an empty folder (--out) or remove it"
            )
    # This job's own files are written again: their space comes back.
    _check_fits(recipe, out_dir, estimate, sum(p.stat().st_size for p in existing))
    if announce is not None:
        announce(estimate)
    remove_temp_files(out_dir, "*.root")  # a killed simulate's
    files = rec.simulate(out_dir, events, seed, options)
    written = {Path(f).name for f in files}
    left = [p for p in sorted(out_dir.glob("*.root")) if p.name not in written]
    if left:
        raise DetlearnError(
            f"{left[0]}: left from an earlier simulate of more events with the same settings "
            f"({len(left)} file(s) beside the {len(files)} written), which prepare would read "
            "too: remove it"
        )
    return files


def _not_this_job(
    record: Mapping[str, Any] | None, recipe: str, options: Mapping[str, Any], seed: int
) -> str | None:
    """Why a file with provenance ``record`` is not one ``recipe``'s simulator writes with
    ``options`` (validated, as JSON) from ``seed``; None when it is."""
    difference = simulator_difference(record, recipe, options)
    if difference is not None:
        what, have, want = difference
        if what == "writer" and have is None:
            return "has no detlearn provenance record (not written by detlearn simulate)"
        if what == "writer":
            return f"was written by {have}, not detlearn simulate"
        if what == "recipe":
            return f"was written by {have}'s simulator, not {want}'s"
        return f"was simulated with {what}={have!r}, not {want!r}"
    if record.get("seed") != seed:
        return f"was simulated with seed {record.get('seed')}, not {seed}"
    return None


def run_recipe(
    recipe: str,
    out: str | Path,
    events: int,
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run a recipe end to end on its built-in simulator; returns the timings and paths."""
    console = console or Console()
    rec = get_recipe(recipe)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    raw = deep_merge({"recipe": recipe}, overrides or {})
    raw = deep_merge(raw, {"data": {"inputs": ["sim/*.root"]}})
    config_path = out / "run.yaml"
    # Another recipe's simulated files in out/sim would be read as this one's inputs.
    other = (read_yaml(config_path) or {}).get("recipe") if config_path.is_file() else None
    if other not in (None, recipe):
        raise DetlearnError(
            f"{out}: holds a '{other}' run ({config_path}); to run '{recipe}', pass another "
            "output folder (--out) or remove it"
        )
    atomic_write_bytes(config_path, yaml.safe_dump(raw, sort_keys=False).encode())
    cfg = load_config(config_path)
    timings: dict[str, float] = {}

    def step(name: str, fn: Callable[[], Any]) -> Any:
        console.rule(f"[bold]{name}")
        t0 = time.perf_counter()
        result = fn()
        timings[name] = time.perf_counter() - t0
        console.print(f"{name}: {timings[name]:.1f} s")
        return result

    step("simulate", lambda: simulate(recipe, out / "sim", events, seed, cfg.simulate))
    summary = step("prepare", lambda: prepare(cfg, out / "dataset"))
    console.print(f"{summary.rows:,} rows from {summary.files} files")

    def model(label: str, c: RunConfig, run: Path, reports: Path, export: Callable) -> tuple:
        step(f"train{label}", lambda: train(c, out / "dataset", run))
        report = step(f"evaluate{label}", lambda: evaluate(run, reports))
        return report, step(f"export{label}", lambda: export(run))

    if not rec.variants:
        report, exported = model("", cfg, out / "run", out / "report", export_run)
    else:
        reports, exported = {}, {}
        for name, variant in rec.variants.items():
            vcfg = validate_config(deep_merge(cfg.model_dump(mode="json"), dict(variant)), name)
            reports[name], exported[name] = model(
                f" {name}",
                vcfg,
                out / "run" / name,
                out / "report" / name,
                lambda r: _exported(r, console),
            )
        report = step("compare", lambda: rec.compare(reports, out / "report"))
    timings["total"] = sum(timings.values())
    return {"report": report, "export": exported, "timings": timings}


def _exported(run_dir: Path, console: Console) -> dict[str, Any] | None:
    """The run's export sidecar, or None (said in one line) for a model that is not
    exported."""
    try:
        return export_run(run_dir)
    except DetlearnError as err:
        console.print(f"not exported: {err}", markup=False)
        return None
