"""Closure of the fast simulation through the chain: the surrogate's files, prepared, against
the simulator's files, prepared, for the same events.

``n`` event contexts are drawn as the simulator draws them; three samples are made at those
contexts, each written as a ROOT file and read back with the run's own data config by the
step ``prepare`` runs on every file (the recipe's extractor over the file's entry ranges; that
``prepare`` stores exactly those rows is tested): the simulator (A), the fast simulation
(:func:`~.fastsim.fast_events`) and a second simulator sample (B). From the rows read back:

- Δt of every photon, per bin of z (``bins`` equal-width bins over the contexts' range):
  W1 [ns] and KS of fastsim vs A, beside B vs A;
- photons per event: W1 [photons] and mean, fastsim vs A beside B vs A;
- the first photon's Δt of events with >= ``min_photons`` photons: W1 [ns], beside B vs A.

Each floor (B vs A) is the mean over ``draws`` comparisons: A vs B, then random splits of
A ∪ B into parts of A's and B's sizes, as one draw alone is as noisy as the value it is a floor
for. A row passes when its W1 is at most ``tolerance`` × its floor (the recipe's W1 rule).
"""

from __future__ import annotations

import itertools
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from detlearn.config import deep_merge, validate_config
from detlearn.evaluation.metrics import ks_statistic, wasserstein1
from detlearn.io.sources import Chunk, plan_work_items, resolve_sources
from detlearn.recipes.klm_timing.fastsim import fast_events
from detlearn.recipes.klm_timing.features import extract
from detlearn.recipes.klm_timing.simulate import (
    KLMEvents,
    KLMSimConfig,
    gun_contexts,
    simulate_at,
    write_edm4hep,
)
from detlearn.runs import Surrogate
from detlearn.runs.surrogate import ContextRangeWarning

__all__ = ["closure"]

_COLUMNS = ["z", "dt", "event", "n_photons", "photon"]


def _read_back(surrogate: Surrogate, events: KLMEvents, cfg: KLMSimConfig, path: Path) -> dict:
    """``events`` written as a ROOT file and read back as prepare reads it (its rows)."""
    write_edm4hep(events, path, cfg)
    config = surrogate.info.config.model_dump(mode="json")
    data = validate_config(deep_merge(config, {"data": {"inputs": [str(path)]}})).data
    sources, _ = resolve_sources(data.inputs, data.tree)
    parts = [extract(Chunk(item), data) for item in plan_work_items(sources, data.step_size)]
    return {k: np.concatenate([p[k] for p in parts]) for k in _COLUMNS}


def _fast_events(
    surrogate: Surrogate, contexts: np.ndarray, cfg: KLMSimConfig, seed: int
) -> KLMEvents:
    """:func:`~.fastsim.fast_events`, quietly: contexts drawn from the simulator's own range
    reach a little past the extremes of the run's finite training sample (no extrapolation
    worth a warning in a closure of the whole range)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ContextRangeWarning)
        return fast_events(surrogate, contexts, cfg, seed)


def _per_event(rows: dict, min_photons: int) -> dict[str, np.ndarray]:
    """Photons per event and the first photon's Δt of events with >= ``min_photons``."""
    event = rows["event"]
    ids, first_row = np.unique(event, return_index=True)
    first = np.full(len(ids), np.inf)
    photon = rows["photon"] > 0
    np.minimum.at(first, np.searchsorted(ids, event[photon]), rows["dt"][photon])
    counts = rows["n_photons"][first_row]
    return {"counts": counts, "first": first[counts >= min_photons]}


def _beside_floor(
    a: np.ndarray,
    model: np.ndarray,
    b: np.ndarray,
    metric: Callable[[np.ndarray, np.ndarray], float],
    rng: np.random.Generator,
    draws: int,
) -> tuple[float, float]:
    """``metric(a, model)`` and its floor: the mean of ``metric`` over sim-vs-sim draws."""
    if min(len(a), len(model), len(b)) < 2:
        return float("nan"), float("nan")
    floors = [metric(a, b)]
    pooled = np.concatenate([a, b])
    for _ in range(draws - 1):
        perm = rng.permutation(len(pooled))
        floors.append(metric(pooled[perm[: len(a)]], pooled[perm[len(a) :]]))
    return metric(a, model), float(np.mean(floors))


def closure(
    surrogate: Surrogate,
    cfg: KLMSimConfig,
    events: int,
    seed: int = 0,
    *,
    bins: int = 5,
    min_photons: int = 5,
    draws: int = 5,
    tolerance: float = 2.0,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """The closure rows (module docstring) and a summary: ``closure_pass_fraction`` (rows
    within ``tolerance`` × floor) and ``closure_w1_ratio_max``."""
    rng = np.random.default_rng(seed)
    contexts = np.stack(gun_contexts(events, cfg, rng), axis=1)
    samples = {
        "sim": simulate_at(*contexts.T, cfg, rng),
        "fastsim": _fast_events(surrogate, contexts, cfg, seed),
        "sim2": simulate_at(*contexts.T, cfg, rng),
    }
    with tempfile.TemporaryDirectory(prefix="detlearn-closure-") as tmp:
        rows = {
            k: _read_back(surrogate, ev, cfg, Path(tmp) / f"{k}.edm4hep.root")
            for k, ev in samples.items()
        }
    a, model, b = rows["sim"], rows["fastsim"], rows["sim2"]
    table: list[dict[str, Any]] = []

    def add(quantity: str, lo: float, hi: float, x: tuple[np.ndarray, ...], unit: str) -> None:
        w1, w1_floor = _beside_floor(*x, wasserstein1, rng, draws)
        ks, ks_floor = _beside_floor(*x, ks_statistic, rng, draws)
        table.append(
            {
                "quantity": quantity,
                "lo": lo,
                "hi": hi,
                "n_sim": len(x[0]),
                "n_fastsim": len(x[1]),
                "mean_sim": float(np.mean(x[0])) if len(x[0]) else float("nan"),
                "mean_fastsim": float(np.mean(x[1])) if len(x[1]) else float("nan"),
                f"w1 [{unit}]": w1,
                f"w1_floor [{unit}]": w1_floor,
                "w1_ratio": w1 / w1_floor if w1_floor > 0 else float("nan"),
                "ks": ks,
                "ks_floor": ks_floor,
                "pass": bool(w1 <= tolerance * w1_floor),
            }
        )

    edges = np.linspace(contexts[:, 0].min(), contexts[:, 0].max() + 1e-9, bins + 1)
    for lo, hi in itertools.pairwise(edges):

        def photons(r: dict, lo: float = lo, hi: float = hi) -> np.ndarray:
            inside = (r["photon"] > 0) & (r["z"] >= lo) & (r["z"] < hi)
            return r["dt"][inside]

        add("Δt, z bin [mm]", float(lo), float(hi), (photons(a), photons(model), photons(b)), "ns")
    per = [_per_event(r, min_photons) for r in (a, model, b)]
    add("photons per event", np.nan, np.nan, tuple(p["counts"] for p in per), "photons")
    add(f"first-photon Δt (≥ {min_photons} photons)", np.nan, np.nan,
        tuple(p["first"] for p in per), "ns")  # fmt: skip
    ratios = np.array([r["w1_ratio"] for r in table], dtype=np.float64)
    summary = {
        "closure_pass_fraction": float(np.mean([r["pass"] for r in table])),
        "closure_w1_ratio_max": float(np.nanmax(ratios)) if np.isfinite(ratios).any() else np.nan,
    }
    return table, summary
