"""Train a tiny flow for one epoch; run by tests/test_training.py under torchrun (CPU, gloo)."""

from __future__ import annotations

import sys

import numpy as np

from detlearn.config import FlowConfig, TrainingConfig
from detlearn.models import ConditionalFlow
from detlearn.training import fit


def main(run_dir: str) -> None:
    rng = np.random.default_rng(0)
    c = rng.uniform(-1, 1, (512, 1)).astype(np.float32)
    x = np.exp(c + 0.3 * rng.standard_normal((512, 1))).astype(np.float32)
    flow = ConditionalFlow(1, 1, FlowConfig(hidden=[8], transforms=1, bins=4), lower=[0.0])
    cfg = TrainingConfig(batch_size=128, max_epochs=1, accelerator="cpu")
    fit(flow, (x[:384], c[:384]), (x[384:], c[384:]), cfg, run_dir, progress=False)


if __name__ == "__main__":
    main(sys.argv[1])
