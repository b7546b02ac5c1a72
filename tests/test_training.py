"""fit(): learning, artifacts, resume from Lightning checkpoints, and DDP under torchrun."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from detlearn.config import FlowConfig, TrainingConfig
from detlearn.errors import DetlearnError
from detlearn.models import ConditionalFlow, load_model
from detlearn.recipes import load_config
from detlearn.training import epochs_line, fit, lr_factor, stretched

TORCHRUN = Path(sys.executable).with_name("torchrun")


def lognormal(size: int, seed: int) -> dict[str, np.ndarray]:
    """x ~ LogNormal(c, 0.3) given c ~ U(-1, 1): positive support, context-dependent scale."""
    rng = np.random.default_rng(seed)
    c = rng.uniform(-1, 1, (size, 1)).astype(np.float32)
    x = np.exp(c + 0.3 * rng.standard_normal((size, 1))).astype(np.float32)
    return {"target": x, "context": c}


def tiny_flow() -> ConditionalFlow:
    torch.manual_seed(0)
    return ConditionalFlow(1, 1, FlowConfig(hidden=[32, 32], transforms=2, bins=8), lower=[0.0])


def read_history(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "history.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_lr_schedule_warms_up_then_decays_to_one_percent():
    total = 1000
    factors = [lr_factor(s, total) for s in range(total + 1)]
    assert factors[0] == pytest.approx(1 / 20) and factors[19] == pytest.approx(1.0)
    assert (np.diff(factors[20:]) <= 0).all()
    assert factors[-1] == pytest.approx(0.01)
    assert lr_factor(500, total, "none") == 1.0


def test_fit_learns_a_conditional_lognormal_and_writes_artifacts(tmp_path):
    train, val = lognormal(4000, 0), lognormal(1000, 1)
    flow = tiny_flow()
    flow.fit_normalization(torch.as_tensor(train["target"]), torch.as_tensor(train["context"]))
    x_val, c_val = torch.as_tensor(val["target"]), torch.as_tensor(val["context"])
    with torch.no_grad():
        initial = -flow.log_prob(x_val, c_val).mean().item()

    cfg = TrainingConfig(batch_size=256, lr=5e-3, max_epochs=6, patience=6)
    result = fit(flow, train, val, cfg, tmp_path, progress=True)

    # The conditional scale is 0.3 against a marginal ~0.65 on the log scale: ~0.7 nats to gain.
    assert result.best_val_loss < initial - 0.3
    with torch.no_grad():
        assert -flow.log_prob(x_val, c_val).mean().item() == pytest.approx(result.best_val_loss)
    for name in ("model.safetensors", "model.json", "history.csv", "loss.png"):
        assert (tmp_path / name).is_file(), name
    assert {p.name for p in (tmp_path / "checkpoints").iterdir()} == {"best.ckpt", "last.ckpt"}
    rows = read_history(tmp_path)
    assert [int(r["epoch"]) for r in rows] == list(range(result.epochs))
    assert all(float(r["elapsed_s"]) > 0 and float(r["lr"]) > 0 for r in rows)
    assert min(float(r["val_loss"]) for r in rows) == pytest.approx(result.best_val_loss)
    reloaded = load_model(tmp_path)
    with torch.no_grad():
        assert torch.equal(reloaded.log_prob(x_val, c_val), flow.log_prob(x_val, c_val))


def test_training_stops_early_when_the_validation_loss_stops_improving(tmp_path):
    """Validation rows from another distribution (x ten times larger): fitting the training
    rows makes their NLL worse, so training stops after ``patience`` epochs without a new best
    and keeps the best epoch's weights."""
    train, val = lognormal(4000, 0), lognormal(1000, 1)
    val["target"] = val["target"] * 10
    flow = tiny_flow()
    cfg = TrainingConfig(batch_size=256, lr=5e-3, max_epochs=30, patience=3)
    result = fit(flow, train, val, cfg, tmp_path)
    losses = [float(r["val_loss"]) for r in read_history(tmp_path)]
    best = int(np.argmin(losses))
    assert result.epochs == len(losses) == best + 1 + cfg.patience < cfg.max_epochs
    assert result.best_val_loss == pytest.approx(losses[best])
    x_val, c_val = torch.as_tensor(val["target"]), torch.as_tensor(val["context"])
    with torch.no_grad():
        assert -flow.log_prob(x_val, c_val).mean().item() == pytest.approx(losses[best])


def test_resume_continues_from_the_last_checkpoint(tmp_path):
    train, val = lognormal(1000, 0), lognormal(300, 1)
    first = fit(tiny_flow(), train, val, TrainingConfig(batch_size=200, max_epochs=2), tmp_path)
    assert first.epochs == 2

    # weights_only=True loading: the checkpoint holds only tensors and plain containers.
    torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    resumed = fit(
        tiny_flow(),
        train,
        val,
        TrainingConfig(batch_size=200, max_epochs=4),
        tmp_path,
        resume=True,
        progress=False,
    )
    assert resumed.epochs == 4
    rows = read_history(tmp_path)
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]
    metrics = (tmp_path / "logs" / "version_1" / "metrics.csv").read_text().splitlines()
    resumed_epochs = {int(float(r["epoch"])) for r in csv.DictReader(metrics) if r["epoch"]}
    assert resumed_epochs == {2, 3}
    # Training time accumulates across the resume.
    assert float(rows[2]["elapsed_s"]) > float(rows[1]["elapsed_s"])


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(DetlearnError, match="no checkpoint to resume from"):
        fit(tiny_flow(), lognormal(10, 0), lognormal(10, 1), TrainingConfig(), tmp_path, True)


def test_max_rows_and_missing_columns(tmp_path):
    train, val = lognormal(1000, 0), lognormal(200, 1)
    with pytest.raises(DetlearnError, match=r"missing column\(s\) \['context'\]"):
        fit(tiny_flow(), {"target": train["target"]}, val, TrainingConfig(), tmp_path)
    cfg = TrainingConfig(batch_size=100, max_epochs=1, max_rows=300)
    result = fit(tiny_flow(), train, val, cfg, tmp_path, progress=False)
    assert result.epochs == 1 and np.isfinite(result.best_val_loss)


def test_min_steps_stretches_epochs_and_patience_on_small_data(tmp_path):
    cfg = TrainingConfig(batch_size=200, max_epochs=2, patience=1, min_steps=20, lr=1e-2)
    # 1000 rows are 5 steps per epoch: 2 epochs make 10 steps, so both double.
    assert (stretched(cfg, 1000).max_epochs, stretched(cfg, 1000).patience) == (4, 2)
    assert stretched(cfg, 1000, world=2).max_epochs == 7  # 3 steps per epoch per process
    assert stretched(cfg, 2000) == cfg  # 20 steps already
    result = fit(tiny_flow(), lognormal(1000, 0), lognormal(300, 1), cfg, tmp_path, progress=False)
    rows = read_history(tmp_path)
    assert result.epochs == 4 and len(rows) == 4
    # The cosine schedule spans the stretched run: half-way down after 2 epochs, lr / 100 at the end.
    lrs = [float(r["lr"]) for r in rows]
    assert lrs[1] == pytest.approx(cfg.lr * lr_factor(10, 20), rel=1e-6)
    assert lrs[3] == pytest.approx(cfg.lr * lr_factor(20, 20), rel=1e-6)


def test_an_explicit_max_epochs_is_not_stretched_by_the_recipes_min_steps(tmp_path, capsys):
    # mass-grid's defaults: max_epochs 45, min_steps 1620; the user's max_epochs 2 was raised to
    # 1620 on a small data set.
    path = tmp_path / "run.yaml"
    path.write_text("recipe: mass-grid\ntraining: {max_epochs: 2, batch_size: 200}\n")
    cfg = load_config(path).training
    assert (cfg.max_epochs, cfg.min_steps) == (2, 0)
    assert stretched(cfg, 1000) == cfg
    line = epochs_line(cfg, stretched(cfg, 1000), 1000)
    assert line == (
        "max_epochs 2, patience 45, 5 steps per epoch (10 at most); not stretched: "
        f"training.max_epochs 2 from {path} wins over training.min_steps 1620 from recipe "
        "mass-grid's defaults"
    )
    # --set max_epochs wins over the file's min_steps; min_steps given with (or after) it counts.
    assert load_config(path, {"training": {"max_epochs": 3}}).training.min_steps == 0
    assert load_config(path, {"training": {"min_steps": 20}}).training.min_steps == 20
    path.write_text("recipe: mass-grid\ntraining: {max_epochs: 2, min_steps: 20}\n")
    assert load_config(path).training.min_steps == 20
    assert load_config(path, {"training": {"max_epochs": 3}}).training.min_steps == 0
    # Without the user's max_epochs the recipe's pair applies: stretched, and said so.
    path.write_text("recipe: mass-grid\ntraining: {batch_size: 200}\n")
    recipe = load_config(path).training
    assert (recipe.max_epochs, recipe.min_steps) == (45, 1620)
    assert epochs_line(recipe, stretched(recipe, 1000), 1000).startswith(
        "max_epochs 324, patience 324, 5 steps per epoch (1,620 at most); stretched from "
        "max_epochs 45 to make training.min_steps 1,620"
    )

    # fit prints the effective epochs when it starts.
    fit(tiny_flow(), lognormal(1000, 0), lognormal(300, 1), cfg, tmp_path / "flow")
    assert "flow: max_epochs 2, patience 45, 5 steps per epoch" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which(str(TORCHRUN)) is None, reason="torchrun is not installed")
def test_ddp_under_torchrun_writes_artifacts_once(tmp_path):
    script = Path(__file__).with_name("ddp_train_script.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(TORCHRUN), "--standalone", "--nproc_per_node=2", str(script), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("model.safetensors", "model.json", "history.csv", "loss.png"):
        assert (tmp_path / name).is_file(), name
    rows = read_history(tmp_path)
    assert len(rows) == 1 and np.isfinite(float(rows[0]["val_loss"]))
    assert isinstance(load_model(tmp_path), ConditionalFlow)
