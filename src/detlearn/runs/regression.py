"""The regressor family's trained run: :func:`train_regressor` writes it, :class:`Regression`
uses it.

Layout of a regressor run directory::

    run.json            the :class:`~detlearn.runs.artifact.RunInfo`
    regressor/          model.safetensors + model.json, history.csv, loss.png

Example:
    >>> r = Regression.load("runs/hcal", recipe="hcal-energy")         # doctest: +SKIP
    >>> energy = r.predict(inputs)       # inputs [N, 36] or {name: column}  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from detlearn._threads import adapt
from detlearn.config import RunConfig
from detlearn.data.selection import training_splits
from detlearn.errors import DetlearnError
from detlearn.io.dataset import GROUP_COLUMN
from detlearn.models import Regressor, load_model
from detlearn.models.regressors import MODEL4EXP_HIDDEN
from detlearn.runs.artifact import RunInfo, TargetColumn, read_run_info
from detlearn.runs.training_data import TrainingData, seeded
from detlearn.training import ModelSize, fit, meta_parameters

__all__ = ["Regression", "regressor_sizes", "train_regressor"]


def regressor_sizes(cfg: RunConfig, data: TrainingData) -> list[ModelSize]:
    """The size of the regressor :func:`train_regressor` trains (built on the meta device):
    per row its inputs and, per hidden layer, the layer's, its BatchNorm's and its
    activation's outputs."""
    rcfg, inputs = cfg.model.regressor, data.context
    parameters = meta_parameters(lambda: Regressor(len(inputs), rcfg, inputs))
    hidden = MODEL4EXP_HIDDEN if rcfg.arch == "model4exp" else rcfg.hidden
    return [ModelSize(parameters, len(inputs) + 3 * sum(hidden) + 1, ("model.regressor.hidden",))]


def train_regressor(
    cfg: RunConfig, data: TrainingData, out: Path, resume: bool = False, progress: bool = True
) -> Path:
    """Train a :class:`~detlearn.models.Regressor` of the one target column from the context
    columns (its inputs), scaling fitted on the training split; returns the run directory
    (``out/regressor/`` + ``out/run.json``)."""
    ds, inputs, target, weight = data.ds, data.context, data.target, data.weight
    if len(target) != 1:
        raise DetlearnError(
            f"{ds.root}: a regressor predicts one target column, the dataset has {target}"
        )
    splits, records = training_splits(cfg, ds, [*inputs, *target, *weight, GROUP_COLUMN], inputs)
    tensors = {}
    for name, part in splits.items():
        batch = {
            "inputs": np.stack([part[k] for k in inputs], 1),
            "target": part[target[0]],
        }
        if weight:
            batch["weight"] = part[weight[0]]
        tensors[name] = batch
    out.mkdir(parents=True, exist_ok=True)
    with seeded(cfg.training.seed):
        model = Regressor(len(inputs), cfg.model.regressor, inputs, target[0])
    fit(model, tensors["train"], tensors["val"], cfg.training, out / "regressor", resume, progress)
    column = TargetColumn(name=target[0], unit=ds.columns[target[0]]["unit"])
    RunInfo.describe(cfg, ds, splits["train"], inputs, [column], **records).write(out)
    return out


class Regression:
    """A trained regressor loaded from a run directory (physical units in and out).

    Example:
        >>> r = Regression.load("runs/hcal", recipe="hcal-energy")         # doctest: +SKIP
        >>> energy = r.predict(inputs)       # inputs [N, 36] or {name: column}  # doctest: +SKIP
    """

    def __init__(self, run_dir: Path, info: RunInfo, model: Regressor) -> None:
        self.run_dir, self.info, self.model = run_dir, info, model

    @classmethod
    def load(cls, run_dir: str | Path, recipe: str | None = None) -> Regression:
        """Load a regressor run directory written by :func:`train_regressor`."""
        run_dir = Path(run_dir)
        info = read_run_info(run_dir, recipe, family="regressor")
        return cls(run_dir, info, load_model(run_dir / "regressor"))

    @property
    def input_names(self) -> list[str]:
        """Names of the input columns, in model order."""
        return self.info.context_names

    @property
    def target_name(self) -> str:
        """Name of the predicted column."""
        return self.info.target_names[0]

    @torch.no_grad()
    def predict(
        self, inputs: Mapping[str, np.ndarray] | np.ndarray, batch_size: int = 1 << 16
    ) -> np.ndarray:
        """Predictions [N] in target units for inputs [N, F] (or a mapping name -> column)."""
        if isinstance(inputs, Mapping):
            missing = [k for k in self.input_names if k not in inputs]
            if missing:
                raise DetlearnError(
                    f"inputs: missing column '{missing[0]}' (needs {', '.join(self.input_names)})"
                )
            x = np.stack([np.asarray(inputs[k], dtype=np.float32) for k in self.input_names], 1)
        else:
            x = np.asarray(inputs, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != len(self.input_names):
            raise DetlearnError(
                f"inputs: expected shape [N, {len(self.input_names)}], got {list(x.shape)}"
            )
        t = torch.from_numpy(np.ascontiguousarray(x))
        parts = []
        for i in range(0, len(t), batch_size):
            adapt()
            parts.append(self.model(t[i : i + batch_size]))
        return torch.cat(parts).numpy() if parts else np.zeros(0, dtype=np.float32)
