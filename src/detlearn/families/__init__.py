"""Model families: the registry that ``train``, ``load``, ``export`` and ``evaluate`` use.

Each family module defines one :class:`~detlearn.families.base.Family` record; :data:`FAMILIES`
lists them, and is the only place that does. A new family is one module and one entry here;
the callers below dispatch through the record.

- :mod:`.flow`: conditional normalizing flows (fast-simulation surrogates);
- :mod:`.regressor`: dense regressors;
- :mod:`.classifier`: signal/background classifiers of calorimeter hits.

Example:
    >>> run_dir = train(cfg, "dataset/", "runs/klm")       # doctest: +SKIP
    >>> surrogate = load_run("runs/klm")                   # doctest: +SKIP
    >>> sidecar = export_run("runs/klm")                   # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from detlearn._files import check_out_folder
from detlearn.config import RunConfig
from detlearn.errors import DetlearnError
from detlearn.export.sidecar import read_sidecar
from detlearn.families.base import Family
from detlearn.families.classifier import CLASSIFIER
from detlearn.families.flow import FLOW
from detlearn.families.regressor import REGRESSOR
from detlearn.models import SPEC_FILE
from detlearn.runs.artifact import RUN_FILE, read_run_info
from detlearn.runs.training_data import open_training_data
from detlearn.training import check_training_memory

__all__ = ["FAMILIES", "Family", "export_run", "get_family", "load_run", "train"]

FAMILIES: dict[str, Family] = {f.name: f for f in (FLOW, REGRESSOR, CLASSIFIER)}


def get_family(name: str) -> Family:
    """The family called ``name``; an unknown name lists the known ones."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise DetlearnError(
            f"model.family '{name}' is not trainable by this version of detlearn "
            f"(known families: {', '.join(sorted(FAMILIES))})"
        ) from None


def train(
    cfg: RunConfig,
    dataset: str | Path,
    out: str | Path,
    resume: bool = False,
    progress: bool = True,
) -> Path:
    """Train the model of ``cfg`` (its ``model.family``) on a prepared dataset; returns the run
    directory. See each family's ``train`` for what it fits.

    A run folder is a run once its ``run.json`` is written, last: an earlier run's is removed
    first, so a training stopped half-way into an existing run folder never leaves the old
    run's record beside the new weights (a mix that ``load_run`` and ``sample`` would take).

    Refused before anything is written: an ``out`` that is a file, cannot be written, or holds
    files but is no run folder (:func:`~detlearn._files.check_out_folder`); a model whose
    training would not fit in memory (:func:`~detlearn.training.check_training_memory`).
    """
    family = get_family(cfg.model.family)
    out = Path(out)
    check_out_folder(out, "run folder", _not_a_run)
    data = open_training_data(cfg, dataset, family.roles, family.balances_labels)
    check_training_memory(family.sizes(cfg, data), cfg.training.batch_size)
    (out / RUN_FILE).unlink(missing_ok=True)
    return family.train(cfg, data, out, resume, progress)


def load_run(run_dir: str | Path, recipe: str | None = None) -> Any:
    """The trained run in ``run_dir`` as its family's handle (a ``Surrogate``, a
    ``Regression``...), checked for ``recipe`` when given."""
    return get_family(read_run_info(run_dir, recipe).family).load(run_dir, recipe)


def export_run(
    run_dir: str | Path, out: str | Path | None = None, rows: int = 4096, seed: int = 0
) -> dict[str, Any]:
    """Export a run's model to ONNX with its sidecar (into ``out``, default ``run_dir/export``),
    checked with onnxruntime on ``rows`` held-out inputs; returns the sidecar contents.

    A graph an earlier export left in ``out`` that this run does not have (a ``count.onnx`` of
    a model trained before without a count model) is removed with its sidecar, so the folder
    holds one run's graphs; files that are not detlearn graphs are left alone. An ``out`` that
    is a file, cannot be written, or holds files but is no export folder is refused first
    (:func:`~detlearn._files.check_out_folder`).
    """
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / "export"
    check_out_folder(out, "export folder", _not_an_export)
    out.mkdir(parents=True, exist_ok=True)
    summary = get_family(read_run_info(run_dir).family).export(run_dir, out, rows, seed)
    for path in sorted(out.glob("*.json")):
        graph = path.with_suffix(".onnx")
        if graph.name in summary["graphs"] or not graph.is_file():
            continue
        try:
            if read_sidecar(path).model != graph.name:
                continue
        except DetlearnError:
            continue  # not a detlearn sidecar: not ours to remove
        graph.unlink()
        path.unlink()
    return summary


#: What a model folder of a run holds from the start of its training (``fit``'s checkpoints
#: and logs) or once trained (the model's spec): a run stopped before its ``run.json``.
_TRAINING_FILES = ("checkpoints", "logs", SPEC_FILE)


def _not_a_run(out: Path) -> str | None:
    """Why the folder ``out``, which holds files, is no run folder to train into; None when it
    is one: it holds a ``run.json``, or a model folder of a training stopped before it."""
    if (out / RUN_FILE).is_file():
        return None
    for folder in out.iterdir():
        if folder.is_dir() and any((folder / name).exists() for name in _TRAINING_FILES):
            return None
    return f"holds files but is no detlearn run folder (no {RUN_FILE})"


def _not_an_export(out: Path) -> str | None:
    """Why the folder ``out``, which holds files, is no export folder; None when it is one: it
    holds a detlearn sidecar, or only ONNX graphs (an export stopped before its first sidecar)
    and temp files."""
    for path in sorted(out.glob("*.json")):
        try:
            read_sidecar(path)
        except DetlearnError:
            continue
        return None
    if all(p.suffix in (".onnx", ".tmp") and p.is_file() for p in out.iterdir()):
        return None
    return "holds files but is no detlearn export folder (no ONNX graph with its JSON sidecar)"
