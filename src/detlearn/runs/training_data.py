"""What every family's training shares: the dataset opened and checked, seeded weights.

:func:`open_training_data` opens a prepared dataset for a run config and checks it against the
config (data config hash, recipe, the roles the family needs); :func:`seeded` draws a model's
initial weights from the run's seed.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from detlearn.config import RunConfig, data_hash
from detlearn.errors import DetlearnError, DetlearnWarning
from detlearn.io.dataset import Dataset

__all__ = ["DatasetConfigWarning", "TrainingData", "open_training_data", "seeded"]


class DatasetConfigWarning(DetlearnWarning):
    """A dataset prepared from another ``data`` config than the run's (its columns apply)."""


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """torch's global generator seeded for the block (a model's initial weights), then restored.

    The weights are drawn before Lightning seeds the training, so without this they would
    depend on whatever used the generator before, and two trainings in one process differ.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@dataclass(frozen=True)
class TrainingData:
    """A prepared dataset opened for training, with its columns by role."""

    ds: Dataset
    context: list[str]
    target: list[str]
    weight: list[str]
    label: list[str]


def open_training_data(
    cfg: RunConfig,
    dataset: str | Path,
    roles: Sequence[str] = ("context", "target"),
    balance_ok: bool = False,
) -> TrainingData:
    """Open ``dataset`` for training ``cfg``'s model; warns when it was prepared from another
    data config, and gives a one-line error when it was prepared for another recipe, has no
    column of one of the ``roles`` the family needs, or ``training.balance`` names a column the
    family cannot balance (``balance_ok``: the family weighs rows by label)."""
    ds = Dataset.open(dataset)
    if ds.manifest.get("config_hash") != data_hash(cfg.data):
        warnings.warn(
            DatasetConfigWarning(
                f"{dataset}: prepared from another data config than this run's (columns, "
                "roles, selection or reading options differ); training uses the dataset's "
                "columns and roles: run detlearn prepare with this config to apply its own"
            ),
            stacklevel=3,
        )
    if cfg.recipe and ds.manifest.get("recipe") not in (None, cfg.recipe):
        raise DetlearnError(
            f"{dataset}: dataset was prepared for recipe '{ds.manifest['recipe']}', "
            f"the config is for '{cfg.recipe}'"
        )
    found = {role: ds.names(role) for role in ("context", "target", "weight", "label")}
    missing = [role for role in roles if not found[role]]
    if missing:
        have = ", ".join(f"{role} {names}" for role, names in found.items())
        raise DetlearnError(
            f"{dataset}: a {cfg.model.family} needs columns with role "
            f"{' and '.join(repr(r) for r in roles)} (found {have})"
        )
    context, target, weight = found["context"], found["target"], found["weight"]
    for col in cfg.training.balance:
        if col not in context or not balance_ok:
            raise DetlearnError(
                f"training.balance: '{col}' is not a context column of a flow "
                f"(model.family {cfg.model.family}; context: {', '.join(context)})"
            )
    return TrainingData(ds, list(context), list(target), list(weight), list(found["label"]))
