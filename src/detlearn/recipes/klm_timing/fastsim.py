"""The trained surrogate in the chain: ``detlearn fastsim RUN`` writes simulation files that
``detlearn prepare`` and any EDM4hep reader take exactly as they take the simulator's.

Per event the context (z_hit [mm], θ [rad], |p| [GeV]) is drawn as the recipe's simulator draws
it (:func:`~.simulate.gun_contexts`, with the run's ``simulate`` settings) or read from a
parquet/CSV file with columns ``z``, ``theta``, ``p``. The surrogate's count model draws the
number of detected photons N, its flow N arrival delays Δt (per-context fast sampling:
:meth:`~detlearn.runs.Surrogate.simulate_events`), and the events are written by the
simulator's own writer (:func:`~.simulate.write_edm4hep`): the primary's hit, then one hit per
detected photon at ``t_hit + Δt``, relations included, in files of ``events_per_file``
events named ``fastsim_{i:04d}.edm4hep.root``.

What the surrogate does not model is written as documented placeholders: the primary's
energy deposit (0), and per photon its emission point (the track's crossing of the reference
plane), its direction (+z, towards the sensor), its path length (the straight distance to the
sensor) and its emission time (the arrival time less that path at the group velocity, so that
no photon seems to outrun light: prepare's causality check reads these). The reader takes none
of them for the model's rows; a downstream step that needs them must not use these files.

Each file carries a ``detlearn`` provenance record (:mod:`detlearn.io.provenance`) naming the
run, the seed and its place in the sequence: a killed job rerun with the same arguments keeps
the files it finished and writes the rest; a folder holding other ROOT files is refused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from detlearn import __version__
from detlearn._files import check_out_folder, remove_temp_files
from detlearn._progress import track
from detlearn.errors import DetlearnError
from detlearn.io.provenance import read_provenance
from detlearn.recipes.klm_timing.simulate import (
    C_MM_PER_NS,
    KLMEvents,
    KLMSimConfig,
    gun_contexts,
    primary_kinematics,
    write_edm4hep,
)
from detlearn.runs import Surrogate

__all__ = ["CONTEXT_COLUMNS", "fast_events", "fastsim", "read_contexts"]

#: The context columns of a klm-timing run and of a contexts file, in model order.
CONTEXT_COLUMNS = ("z", "theta", "p")


def read_contexts(path: str | Path) -> np.ndarray:
    """Event contexts from a parquet or CSV file with columns ``z`` [mm], ``theta`` [rad] and
    ``p`` [GeV]: float64 [N, 3].

    Raises:
        DetlearnError: not readable, a column missing, or a value not finite (naming it).
    """
    path = Path(path)
    read: Callable[[Path], Any] = pq.read_table if path.suffix == ".parquet" else pa_csv.read_csv
    try:
        table = read(path)
    except (OSError, ValueError) as exc:
        raise DetlearnError(f"{path}: cannot read contexts ({exc})") from None
    missing = [c for c in CONTEXT_COLUMNS if c not in table.column_names]
    if missing:
        raise DetlearnError(
            f"{path}: no column '{missing[0]}' (a contexts file has columns z [mm], theta [rad], "
            "p [GeV])"
        )
    columns = []
    for name in CONTEXT_COLUMNS:
        try:
            values = table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
        except (TypeError, ValueError):
            raise DetlearnError(f"{path}: column '{name}' is not numeric") from None
        bad = np.flatnonzero(~np.isfinite(values))
        if len(bad):
            raise DetlearnError(f"{path}: column '{name}' row {bad[0]} is not finite")
        columns.append(values)
    return np.stack(columns, axis=1)


def fast_events(
    surrogate: Surrogate, contexts: np.ndarray, cfg: KLMSimConfig, seed: int
) -> KLMEvents:
    """Events at ``contexts`` [N, 3] (z_hit [mm], θ [rad], |p| [GeV]) from the surrogate, as
    :class:`~.simulate.KLMEvents` with the placeholders of the module docstring."""
    counts, event, dt = surrogate.simulate_events(contexts, seed=seed)
    primary = primary_kinematics(contexts[:, 0], contexts[:, 1], contexts[:, 2], cfg)
    t_hit = primary["t_hit"]
    z_hit = primary["z_hit"][event]
    arrival = t_hit[event] + dt[:, 0]
    path = cfg.sensor_z - z_hit
    return KLMEvents(
        **primary,
        e_dep=np.zeros(len(counts)),
        n_photons=counts,
        photon_event=event.astype(np.int32),
        photon_time=arrival.astype(np.float32),
        photon_emit_time=(arrival - path * cfg.group_index / C_MM_PER_NS).astype(np.float32),
        photon_x=np.full(len(event), cfg.x_ref, np.float32),
        photon_z=z_hit.astype(np.float32),
        photon_path=path.astype(np.float32),
        photon_cos=np.ones(len(event), np.float32),
    )


def _provenance(run_dir: Path, seed: int, table: np.ndarray, file: int, files: int) -> dict:
    """A fast-simulated file's record: the run, seed, contexts and its place in the job."""
    return {
        "writer": "detlearn fastsim",
        "recipe": "klm-timing",
        "detlearn_version": __version__,
        "run": str(run_dir.resolve()),
        "seed": seed,
        "contexts_sha256": hashlib.sha256(np.ascontiguousarray(table).tobytes()).hexdigest(),
        "file": file,
        "files": files,
    }


def _check_folder(out_dir: Path, expected: dict[str, dict]) -> None:
    """Refuse a folder with ROOT files this job would not write (prepare would read them)."""
    for path in sorted(out_dir.glob("*.root")):
        if path.name not in expected:
            raise DetlearnError(
                f"{out_dir}: holds {path.name}, which this fastsim would not write (prepare "
                "reads every ROOT file in a folder); choose an empty folder"
            )


def fastsim(
    run_dir: str | Path,
    out_dir: str | Path,
    events: int | None = None,
    seed: int = 0,
    contexts: str | Path | None = None,
) -> list[Path]:
    """Write ``events`` fast-simulated events (or one per row of the ``contexts`` file) into
    ``out_dir`` in the simulator's EDM4hep layout; returns the files in order.

    Raises:
        DetlearnError: the run has no count model or other contexts, neither or both of
            ``events`` and ``contexts``, a bad contexts file, or a folder holding other ROOT
            files.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    surrogate = Surrogate.load(run_dir, recipe="klm-timing")
    if tuple(surrogate.context_names) != CONTEXT_COLUMNS or surrogate.target_names != ["dt"]:
        raise DetlearnError(
            f"{run_dir}: fastsim needs context z, theta, p and target dt "
            f"(got {surrogate.context_names} -> {surrogate.target_names})"
        )
    if surrogate.count is None:
        raise DetlearnError(f"{run_dir}: the run has no count model (model.count), so no N")
    if (events is None) == (contexts is None):
        raise DetlearnError("fastsim: give either --events or --contexts (not both)")
    config = surrogate.info.config.model_dump(mode="json")
    cfg = KLMSimConfig.model_validate(config.get("simulate") or {})
    if contexts is not None:
        table = read_contexts(contexts)
    else:
        if events is None or events <= 0:
            raise DetlearnError(f"fastsim: --events must be positive (got {events})")
        table = np.stack(gun_contexts(events, cfg, np.random.default_rng(seed)), axis=1)
    starts = range(0, len(table), cfg.events_per_file)
    names = [f"fastsim_{i:04d}.edm4hep.root" for i in range(len(starts))]
    expected = {
        name: _provenance(run_dir, seed, table, i, len(starts)) for i, name in enumerate(names)
    }
    # Its ROOT files are checked one by one (_check_folder); other files do not matter.
    check_out_folder(out_dir, "fastsim folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_folder(out_dir, expected)
    remove_temp_files(out_dir, "fastsim_*.root")  # a killed fastsim's
    seeds = np.random.SeedSequence(seed).spawn(len(starts))
    written = []
    for i in track(range(len(starts)), "fast-simulating KLM events"):
        path = out_dir / names[i]
        if not (path.is_file() and read_provenance(path) == expected[names[i]]):
            block = table[starts[i] : starts[i] + cfg.events_per_file]
            child = int(seeds[i].generate_state(1)[0])
            write_edm4hep(fast_events(surrogate, block, cfg, child), path, cfg, expected[names[i]])
        written.append(path)
    return written
