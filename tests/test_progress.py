"""Progress in logs: plain lines where no terminal watches (CI, SLURM, ``| tee``)."""

from __future__ import annotations

import numpy as np
import torch

from detlearn._progress import progress, track
from detlearn.config import FlowConfig, TrainingConfig
from detlearn.models import ConditionalFlow
from detlearn.training import fit


def test_work_items_print_a_line_per_tenth_without_a_terminal(capsys):
    with progress(20, "preparing", min_gap_s=0) as advance:
        for _ in range(20):
            advance()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 10
    assert lines[0].startswith("preparing: 2/20 (10 %)") and lines[-1].startswith(
        "preparing: 20/20"
    )


def test_quick_work_a_single_item_and_disabled_progress_print_nothing(capsys):
    assert list(track(range(16), "simulating")) == list(range(16))
    assert list(track([1], "simulating")) == [1]
    with progress(5, "quiet", enabled=False) as advance:
        advance()
    assert capsys.readouterr().err == ""


def test_training_prints_one_line_per_epoch_without_a_terminal(tmp_path, capsys):
    rng = np.random.default_rng(0)
    c = rng.uniform(-1, 1, (512, 1)).astype(np.float32)
    data = {"target": np.exp(c + 0.3 * rng.standard_normal((512, 1))).astype(np.float32),
            "context": c}  # fmt: skip
    torch.manual_seed(0)
    flow = ConditionalFlow(1, 1, FlowConfig(hidden=[8], transforms=1, bins=4), lower=[0.0])
    fit(flow, data, data, TrainingConfig(batch_size=256, max_epochs=3), tmp_path / "run")
    lines = [line for line in capsys.readouterr().err.splitlines() if ": epoch " in line]
    assert [line.split()[2] for line in lines] == ["1/3", "2/3", "3/3"]
    assert all("val_loss" in line for line in lines)
