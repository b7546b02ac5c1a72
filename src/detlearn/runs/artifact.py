"""The run artifact: ``run.json``, what a trained run directory holds, as one typed record.

:class:`RunInfo` is written once, by the family's ``train``, and read by every consumer
(loading, sampling, evaluation, export) through :func:`read_run_info`. It carries the recipe,
the model family, the dataset it was trained on, the context columns with their units and the
range seen in training, the target columns with their units and support, the split records
(held-out points, sparse labels) and the whole config.

Example:
    >>> info = read_run_info("runs/klm")                      # doctest: +SKIP
    >>> info.context_names, info.context_range()              # doctest: +SKIP
    (['z', 'theta', 'p'], (array([...]), array([...])))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from detlearn import __version__
from detlearn._files import atomic_write_json, read_json_object
from detlearn.config import RunConfig
from detlearn.errors import DetlearnError
from detlearn.io.dataset import Dataset

__all__ = ["RUN_FILE", "RUN_FORMAT", "ContextColumn", "RunInfo", "TargetColumn", "read_run_info"]

RUN_FILE = "run.json"
RUN_FORMAT = 1


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ContextColumn(_Record):
    """A model input (context) column and the range it spanned in training."""

    name: str
    unit: str | None = None
    min: float
    max: float


class TargetColumn(_Record):
    """A model output (target) column with its physical support (None: unbounded)."""

    name: str
    unit: str | None = None
    lower: float | None = None
    upper: float | None = None


class RunInfo(_Record):
    """The contents of ``run.json``."""

    format: int = RUN_FORMAT
    detlearn_version: str = __version__
    recipe: str | None = None
    family: str
    #: The prepared dataset's folder (absolute) and its fingerprint when trained.
    dataset: str
    dataset_fingerprint: str | None = None
    context: list[ContextColumn]
    target: list[TargetColumn]
    #: The distinct training contexts of a grid of labels (see ``data.selection.grid_labels``).
    context_labels: list[list[float]] | None = None
    #: A flow's count model: ``{"column": ..., "model": "negbinom"}``.
    count: dict[str, str] | None = None
    sparse_labels: dict[str, Any] | None = None
    holdout: dict[str, Any] | None = None
    #: What a family records beyond these (a classifier: its inputs and the signal masses).
    details: dict[str, Any] | None = None
    config: RunConfig

    @property
    def context_names(self) -> list[str]:
        """Names of the context (input) columns, in model order."""
        return [c.name for c in self.context]

    @property
    def target_names(self) -> list[str]:
        """Names of the target columns, in model order."""
        return [t.name for t in self.target]

    def context_range(self) -> tuple[np.ndarray, np.ndarray]:
        """The training range of every context column: (min [C], max [C])."""
        return (
            np.array([c.min for c in self.context], dtype=np.float64),
            np.array([c.max for c in self.context], dtype=np.float64),
        )

    def load_split(
        self, columns: Sequence[str], split: str, max_rows: int | None = None
    ) -> dict[str, np.ndarray]:
        """Columns of the run's dataset in one split, cut with the run's own ``split``
        fractions (those it was trained with), not the ones the dataset was prepared with.

        A dataset prepared again since the run was trained (another fingerprint) is an error:
        its test split would not be the one held out from training.
        """
        ds = Dataset.open(self.dataset)
        if self.dataset_fingerprint not in (None, ds.fingerprint):
            raise DetlearnError(
                f"{self.dataset}: prepared again since this run was trained (its fingerprint "
                "changed), so its test split is not the one held out from training; use the "
                "dataset the run was trained on, or train again"
            )
        return ds.load(
            columns,
            split=split,
            max_rows=max_rows,
            fractions=self.config.split.model_dump(mode="json"),
        )

    def weight_column(self) -> str | None:
        """The dataset's weight column (role ``weight``, the first: the one training used), or
        None for an unweighted dataset."""
        names = Dataset.open(self.dataset).names("weight")
        return names[0] if names else None

    @classmethod
    def describe(
        cls,
        cfg: RunConfig,
        ds: Dataset,
        train_part: Mapping[str, np.ndarray],
        context: Sequence[str],
        target: Sequence[TargetColumn],
        **extra: Any,
    ) -> RunInfo:
        """The record of a run of ``cfg`` trained on the ``train_part`` rows of ``ds``."""
        return cls(
            recipe=cfg.recipe,
            family=cfg.model.family,
            dataset=str(ds.root.resolve()),
            dataset_fingerprint=ds.fingerprint,
            context=[
                ContextColumn(
                    name=k,
                    unit=ds.columns[k]["unit"],
                    min=float(train_part[k].min()),
                    max=float(train_part[k].max()),
                )
                for k in context
            ],
            target=list(target),
            config=cfg,
            **extra,
        )

    def write(self, run_dir: str | Path) -> Path:
        """Write ``run_dir/run.json`` atomically; returns its path."""
        path = Path(run_dir) / RUN_FILE
        atomic_write_json(path, self.model_dump(mode="json"))
        return path


def read_run_info(
    run_dir: str | Path, recipe: str | None = None, family: str | None = None
) -> RunInfo:
    """The ``run.json`` of a run directory, checked for format, ``recipe`` and model ``family``.

    A directory that is not a run, was trained for another recipe or model family, or was
    written by an incompatible detlearn version gives a one-line :class:`DetlearnError`.
    """
    run_dir = Path(run_dir)
    path = run_dir / RUN_FILE
    if not path.is_file():
        raise DetlearnError(f"{run_dir}: not a detlearn run directory (no {RUN_FILE})")
    raw = read_json_object(path)
    if not isinstance(raw, dict) or raw.get("format") != RUN_FORMAT:
        got = raw.get("format") if isinstance(raw, dict) else None
        version = raw.get("detlearn_version") if isinstance(raw, dict) else None
        raise DetlearnError(
            f"{run_dir}: run format {got} written by detlearn {version} is not readable by "
            f"detlearn {__version__} (format {RUN_FORMAT}); retrain it"
        )
    try:
        info = RunInfo.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise DetlearnError(f"{path}: key '{key}': {first['msg']}") from None
    if recipe is not None and info.recipe != recipe:
        raise DetlearnError(
            f"{run_dir}: run was trained for recipe '{info.recipe}', not '{recipe}'"
        )
    if family is not None and info.family != family:
        raise DetlearnError(f"{run_dir}: run holds a {info.family}, not a {family}")
    return info
