"""Trained run directories: the typed artifact, and each family's training and handle.

- :mod:`.artifact`: :class:`RunInfo`, the ``run.json`` every consumer reads;
- :mod:`.training_data`: the dataset opened and checked for a run config, seeded weights;
- :mod:`.surrogate`: the flow family (:func:`train_flow`, :class:`Surrogate`);
- :mod:`.regression`: the regressor family (:func:`train_regressor`, :class:`Regression`).

Which family a config trains is decided by :mod:`detlearn.families`, not here.
"""

from __future__ import annotations

from detlearn.runs.artifact import RUN_FILE, RunInfo, read_run_info
from detlearn.runs.regression import Regression, train_regressor
from detlearn.runs.surrogate import ContextRangeWarning, Surrogate, train_flow, write_samples
from detlearn.runs.training_data import DatasetConfigWarning, open_training_data

__all__ = [
    "RUN_FILE",
    "ContextRangeWarning",
    "DatasetConfigWarning",
    "Regression",
    "RunInfo",
    "Surrogate",
    "open_training_data",
    "read_run_info",
    "train_flow",
    "train_regressor",
    "write_samples",
]
