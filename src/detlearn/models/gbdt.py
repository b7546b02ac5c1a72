"""Gradient-boosted trees (LightGBM): the classifier baseline on engineered features.

LightGBM rather than scikit-learn's HistGradientBoosting: its text model format is a plain,
complete description of the trees, safe to load from a file someone sent (scikit-learn models
only persist as pickles). The model is saved as ``model.txt`` (LightGBM's text format) beside
``model.json`` (the feature names and settings), and trained with early stopping on the
validation split; ``history.csv`` holds the binary log-loss per iteration.

Example:
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(400, 2)).astype(np.float32); y = (x[:, 0] > 0).astype(np.float32)
    >>> trees = BoostedTrees.train(x, y, None, x, y, ["a", "b"], iterations=20)
    >>> bool(((trees.predict_proba(x) > 0.5) == (y > 0)).mean() > 0.9)
    True
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightgbm
import numpy as np

from detlearn._files import (
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    file_checksum,
    read_json_object,
)
from detlearn._threads import adapt, adapting
from detlearn.errors import DetlearnError

__all__ = ["BoostedTrees"]

MODEL_FILE = "model.txt"
SPEC_FILE = "model.json"


def _adapt_threads(env: lightgbm.callback.CallbackEnv) -> None:
    """Before each boosting iteration, fit LightGBM's threads to the CPUs free now (its
    OpenMP runtime is torch's, which spins: :mod:`detlearn._threads`)."""
    threads = adapt()
    if threads != env.params.get("num_threads"):
        env.model.reset_parameter({"num_threads": threads})
        env.params["num_threads"] = threads


_adapt_threads.before_iteration = True  # type: ignore[attr-defined]


class BoostedTrees:
    """A trained binary classifier of gradient-boosted trees on named features."""

    kind = "boosted_trees"

    def __init__(self, booster: lightgbm.Booster, features: Sequence[str]) -> None:
        self.booster, self.features = booster, list(features)

    @classmethod
    def train(
        cls,
        x: np.ndarray,
        y: np.ndarray,
        weight: np.ndarray | None,
        x_val: np.ndarray,
        y_val: np.ndarray,
        features: Sequence[str],
        *,
        val_weight: np.ndarray | None = None,
        iterations: int = 300,
        learning_rate: float = 0.1,
        leaves: int = 31,
        patience: int = 20,
        seed: int = 0,
        threads: int = 1,
    ) -> BoostedTrees:
        """Fit on features ``x`` [N, F] and labels ``y`` [N] (1 = signal), early stopping on
        the validation log-loss (weighted by ``val_weight`` when given, as the training rows
        are by ``weight``) after ``patience`` iterations without improvement."""
        params = {
            "objective": "binary",
            "learning_rate": learning_rate,
            "num_leaves": leaves,
            "seed": seed,
            "deterministic": True,
            "num_threads": threads,
            "verbose": -1,
        }
        train = lightgbm.Dataset(x, y, weight=weight, feature_name=list(features))
        val = lightgbm.Dataset(x_val, y_val, weight=val_weight, reference=train)
        history: dict[str, Any] = {}
        booster = lightgbm.train(
            params,
            train,
            num_boost_round=iterations,
            valid_sets=[train, val],
            valid_names=["train", "val"],
            callbacks=[
                lightgbm.early_stopping(patience, verbose=False),
                lightgbm.record_evaluation(history),
                *([_adapt_threads] if adapting() else []),
            ],
        )
        trees = cls(booster, features)
        trees.history = [
            {"epoch": i, "train_loss": a, "val_loss": b}
            for i, (a, b) in enumerate(
                zip(
                    history["train"]["binary_logloss"],
                    history["val"]["binary_logloss"],
                    strict=True,
                )
            )
        ]
        return trees

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """P(signal) [N] for features ``x`` [N, F]."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != len(self.features):
            raise DetlearnError(
                f"boosted trees: expected features [N, {len(self.features)}], got {list(x.shape)}"
            )
        best = self.booster.best_iteration or None
        # On the CPUs free now (detlearn._threads), not the count the training ended with.
        scores = self.booster.predict(x, num_iteration=best, num_threads=adapt())
        return np.asarray(scores, dtype=np.float64)

    def save(self, directory: str | Path) -> Path:
        """Write ``model.txt``, ``model.json`` (and ``history.csv`` after training), atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        text = self.booster.model_to_string(num_iteration=self.booster.best_iteration or None)
        atomic_write_bytes(directory / MODEL_FILE, text.encode())
        spec = {"kind": self.kind, "features": self.features}
        atomic_write_json(
            directory / SPEC_FILE, spec | {"model_checksum": file_checksum(directory / MODEL_FILE)}
        )
        if getattr(self, "history", None):
            with atomic_path(directory / "history.csv") as tmp, tmp.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=["epoch", "train_loss", "val_loss"])
                writer.writeheader()
                writer.writerows(self.history)
        return directory / MODEL_FILE

    @classmethod
    def load(cls, directory: str | Path) -> BoostedTrees:
        """Read a model written by :meth:`save` (plain text; nothing is unpickled), refusing a
        ``model.txt`` that changed since (its checksum in ``model.json``)."""
        directory = Path(directory)
        spec = read_json_object(directory / SPEC_FILE)
        if spec.get("kind") != cls.kind or not isinstance(spec.get("features"), list):
            raise DetlearnError(f"{directory / SPEC_FILE}: not a boosted-trees model spec")
        path = directory / MODEL_FILE
        recorded = spec.get("model_checksum")
        if recorded is not None and path.is_file() and file_checksum(path) != recorded:
            raise DetlearnError(
                f"{path}: checksum {file_checksum(path)} differs from {recorded} recorded in "
                f"{SPEC_FILE} (the model changed since it was saved)"
            )
        try:
            booster = lightgbm.Booster(model_str=path.read_text())
        except (OSError, UnicodeDecodeError, lightgbm.basic.LightGBMError) as err:
            raise DetlearnError(f"{path}: unreadable boosted-trees model ({err})") from None
        if booster.num_feature() != len(spec["features"]):
            raise DetlearnError(f"{path}: {booster.num_feature()} features, the spec names others")
        return cls(booster, spec["features"])
