"""The whole path for a recipe in one call: simulate -> prepare -> train -> evaluate -> export.

This is what ``make demo`` runs (``detlearn demo``). Every step is the public function a user
would call by hand; the output folder holds each step's result::

    run.yaml    the config used (recipe defaults + overrides + the simulated inputs)
    sim/        ROOT files from the recipe's simulator
    dataset/    prepared parquet shards + manifest.json
    run/        the trained run (safetensors weights, history, loss plot)
    report/     report.html + metrics.json + figures/
    run/export/ ONNX sampler + JSON sidecar
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from detlearn.config import deep_merge, load_config, read_yaml
from detlearn.errors import DetlearnError
from detlearn.io.dataset import atomic_write_bytes

__all__ = ["run_recipe"]


def run_recipe(
    recipe: str,
    out: str | Path,
    events: int,
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run a recipe end to end on its built-in simulator; returns the timings and paths."""
    from detlearn.export import export_run
    from detlearn.prepare import prepare
    from detlearn.recipes import get_recipe
    from detlearn.run import train

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

    step("simulate", lambda: rec.function("simulate")(out / "sim", events, seed, cfg.simulate))
    summary = step("prepare", lambda: prepare(cfg, out / "dataset"))
    console.print(f"{summary.rows:,} rows from {summary.files} files")
    step("train", lambda: train(cfg, out / "dataset", out / "run"))
    report = step("evaluate", lambda: rec.function("evaluate")(out / "run", out / "report"))
    sidecar = step("export", lambda: export_run(out / "run"))
    timings["total"] = sum(timings.values())
    return {"report": report, "export": sidecar, "timings": timings}
