"""The :class:`Family` record: what a kind of model brings to ``train``, ``load``, ``export``
and ``evaluate``.

A family is plain data: its functions are attributes. Each family module defines one record
and :mod:`detlearn.families` lists them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from detlearn.config import RunConfig
from detlearn.report import Section
from detlearn.runs.training_data import TrainingData
from detlearn.training import ModelSize

__all__ = ["Evaluate", "Export", "Family", "Load", "Sizes", "Train"]


class Train(Protocol):
    """``train(cfg, data, out, resume, progress) -> run directory``."""

    def __call__(
        self, cfg: RunConfig, data: TrainingData, out: Path, resume: bool, progress: bool
    ) -> Path: ...


class Load(Protocol):
    """``load(run_dir, recipe=None) -> handle``: the trained run, ready to use."""

    def __call__(self, run_dir: str | Path, recipe: str | None = None) -> Any: ...


class Export(Protocol):
    """``export(run_dir, out, rows, seed) -> sidecar``: ONNX files checked with onnxruntime."""

    def __call__(self, run_dir: Path, out: Path, rows: int, seed: int) -> dict[str, Any]: ...


class Evaluate(Protocol):
    """``evaluate(run_dir, out_dir, seed) -> Section``: the family's generic metrics on the
    held-out test split of the run's own data."""

    def __call__(self, run_dir: Path, out_dir: Path, seed: int) -> Section: ...


class Sizes(Protocol):
    """``sizes(cfg, data) -> [ModelSize]``: the networks training builds, sized before they are
    (empty: no network, such as the classifier's bdt)."""

    def __call__(self, cfg: RunConfig, data: TrainingData) -> list[ModelSize]: ...


@dataclass(frozen=True)
class Family:
    """A kind of model.

    Attributes:
        name: the config's ``model.family``.
        summary: one line for the documentation.
        train: trains it on a prepared dataset.
        load: the trained-run handle's loader (``Surrogate.load``, ``Regression.load``...).
        export: its exporter.
        evaluate: its generic evaluation.
        sizes: the sizes of the networks it trains, checked against the memory before training.
        roles: the dataset column roles it needs.
        balances_labels: whether ``training.balance`` applies (rows weighed by label).
    """

    name: str
    summary: str
    train: Train
    load: Load
    export: Export
    evaluate: Evaluate
    sizes: Sizes
    roles: tuple[str, ...] = ("context", "target")
    balances_labels: bool = False
