"""Signed event weights (NLO generators): kept with their sign in the loss and every metric;
rows of weight 0 left out of training and counted; a non-positive total is a one-line error."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from conftest import write_tree
from scipy import stats

from detlearn.cli import app
from detlearn.config import RegressorConfig, TrainingConfig
from detlearn.data.tensors import flow_tensors
from detlearn.errors import DetlearnError
from detlearn.evaluation.metrics import ks_statistic, wasserstein1, weighted_quantile
from detlearn.evaluation.regression import bin_stats
from detlearn.models import Regressor
from detlearn.runs import Regression
from detlearn.runs.classification import _bdt_rows
from detlearn.training import fit, unit_mean_weights


def _cancelling(rng: np.random.Generator, n: int) -> tuple[np.ndarray, ...]:
    """``n`` values of weight 1, plus ``n`` others twice, once at +1 and once at -1."""
    keep = rng.normal(0, 1, n)
    cancelled = rng.normal(3, 1, n)
    x = np.concatenate([keep, cancelled, cancelled])
    w = np.concatenate([np.ones(n), np.ones(n), -np.ones(n)])
    return x, w, keep


def test_weighted_w1_ks_and_quantiles_take_negative_weights_with_their_sign():
    rng = np.random.default_rng(0)
    x, w, net = _cancelling(rng, 500)
    other = rng.normal(0.2, 1, 700)
    assert wasserstein1(x, other, w) == pytest.approx(wasserstein1(net, other), abs=1e-12)
    assert ks_statistic(x, other, w) == pytest.approx(ks_statistic(net, other), abs=1e-12)
    q = [0.1, 0.5, 0.9]
    np.testing.assert_array_equal(
        weighted_quantile(x, q, w), np.quantile(net, q, method="inverted_cdf")
    )
    # Positive weights: scipy's weighted distance; no weights: the unweighted metrics.
    positive = rng.uniform(0.5, 2, x.size)
    assert wasserstein1(x, other, positive) == pytest.approx(
        stats.wasserstein_distance(x, other, positive), rel=1e-10
    )
    assert wasserstein1(x, other, np.ones(x.size)) == pytest.approx(wasserstein1(x, other))
    assert ks_statistic(x, other, None, np.ones(other.size)) == pytest.approx(
        ks_statistic(x, other)
    )
    with pytest.raises(DetlearnError, match=r"^wasserstein1: the weights sum to -1 over 2 "):
        wasserstein1([0.0, 1.0], other, [-1.0, 0.0])
    with pytest.raises(DetlearnError, match="3 values but 2 weights"):
        ks_statistic([0.0, 1.0, 2.0], other, [1.0, 1.0])


def test_weighted_bin_stats_cancel_negative_rows():
    rng = np.random.default_rng(1)
    de, w, net = _cancelling(rng, 2000)
    e_gen = np.full(de.size, 10.0)
    weighted = bin_stats(e_gen + de, e_gen, 10.0, weights=w)
    plain = bin_stats(10.0 + net, np.full(net.size, 10.0), 10.0)
    assert weighted["mu"] == pytest.approx(plain["mu"], abs=0.02)
    assert weighted["sigma"] == pytest.approx(plain["sigma"], rel=0.02)


def test_loss_weights_keep_their_sign_and_a_non_positive_sum_is_an_error(tmp_path):
    keep, w = unit_mean_weights(np.array([3.0, 0.0, -1.0, 2.0]), "train")
    assert keep.tolist() == [True, False, True, True] and w.tolist() == [2.25, -0.75, 1.5]
    with pytest.raises(DetlearnError, match=r"^val data: the weights sum to 0 over 3 rows"):
        unit_mean_weights(np.zeros(3), "val")
    with pytest.raises(DetlearnError, match=r"sum to -1 over 2 rows \(1 negative, 1 zero\)"):
        unit_mean_weights(np.array([-1.0, 0.0]), "train")
    # The flow's rows: negative weights stay (they were silently dropped by a w > 0 filter).
    part = {"x": np.arange(4.0), "c": np.ones(4), "w": np.array([1.0, -1.0, 0.0, 2.0])}
    x, _, weight = flow_tensors(part, ["c"], ["x"], ["w"], [])
    assert x[:, 0].tolist() == [0.0, 1.0, 3.0] and weight.tolist() == [1.0, -1.0, 2.0]

    model = Regressor(1, RegressorConfig(arch="mlp", hidden=[4]), ["a"], "y")
    a = np.linspace(0, 1, 64, dtype=np.float32)[:, None]
    data = {"inputs": a, "target": a[:, 0], "weight": -np.ones(64)}
    good = {**data, "weight": np.ones(64)}
    with pytest.raises(DetlearnError, match=r"^train data: the weights sum to -64 over 64"):
        fit(model, data, good, TrainingConfig(max_epochs=1), tmp_path, progress=False)


def test_loss_is_the_split_mean_of_signed_weighted_losses():
    """A batch whose weights sum to <= 0 keeps the sign of its gradient: mean(w l), not a ratio."""
    model = Regressor(1, RegressorConfig(arch="mlp", hidden=[4], batch_norm=False), ["a"], "y")
    x = torch.linspace(0, 1, 4)[:, None]
    y = torch.tensor([0.0, 1.0, 2.0, 3.0])
    w = torch.tensor([1.0, -2.0, 0.5, 0.5])
    per_row = ((model(x) - y - model.y_mean) / model.y_std) ** 2
    torch.testing.assert_close(model.loss((x, y, w)), (per_row * w).mean())


def test_bdt_refuses_negative_weights_with_a_clear_message():
    batch = {"features": np.zeros((3, 2)), "label": np.ones(3), "weight": np.array([2.0, -1, 0])}
    with pytest.raises(DetlearnError, match=r"^model.classifier.arch bdt: 1 training events have"):
        _bdt_rows(batch)
    kept = _bdt_rows({**batch, "weight": np.array([2.0, 1.0, 0.0])})
    assert len(kept["label"]) == 2 and kept["weight"].tolist() == pytest.approx([4 / 3, 2 / 3])


def _signed_file(tmp_path, total_negative: bool = False):
    """y = 2a; rows of y = 2a + 3 that cancel in pairs (+1 and -1, one event each pair, so
    they share a split); and rows of weight 0 whose y is nonsense."""
    rng = np.random.default_rng(2)
    n, m, z = 3000, 1500, 200
    a = rng.uniform(0, 1, n + m + z)
    a = np.concatenate([a[:n], a[n : n + m], a[n : n + m], a[n + m :]])
    y = np.concatenate([2 * a[:n], 2 * a[n : n + 2 * m] + 3, np.full(z, 100.0)])
    w = np.concatenate([np.ones(n), np.ones(m), -np.ones(m), np.zeros(z)])
    event = np.concatenate([np.arange(n), n + np.arange(m), n + np.arange(m), n + m + np.arange(z)])
    if total_negative:
        w = -np.abs(w)
    write_tree(tmp_path / "signed.root", "Events", {"a": a, "y": y, "w": w, "ev": event})
    cfg = {
        "data": {
            "inputs": ["signed.root"],
            "columns": {
                "a": {"role": "context"},
                "y": {"role": "target", "unit": "GeV"},
                "w": {"role": "weight"},
                "ev": {"role": "group"},
            },
        },
        "executor": {"workers": 1},
        "model": {"family": "regressor", "regressor": {"arch": "mlp", "hidden": [16, 16]}},
        "training": {"batch_size": 256, "max_epochs": 25, "lr": 1e-2, "patience": 25},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_signed_weights_through_prepare_train_and_evaluate(tmp_path, runner):
    config = _signed_file(tmp_path)
    result = runner.invoke(app, ["prepare", str(config), "--out", str(tmp_path / "ds"), "--quiet"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "rows of weight 0 ('w'), left out of training: 200" in text
    assert "rows of negative weight ('w'), kept with their sign: 1,500" in text
    for command in (
        ["train", str(config), "--data", str(tmp_path / "ds"), "--out", str(tmp_path / "run")],
        ["evaluate", str(tmp_path / "run")],
    ):
        result = runner.invoke(app, [*command, "--quiet"] if command[0] == "train" else command)
        assert result.exit_code == 0, result.output
    reg = Regression.load(tmp_path / "run")
    # The cancelled rows (y = 2a + 3) and the weight-0 rows (y = 100) leave y = 2a.
    grid = np.array([0.2, 0.5, 0.8])
    np.testing.assert_allclose(reg.predict({"a": grid}), 2 * grid, atol=0.15)
    metrics = json.loads((tmp_path / "run" / "report" / "metrics.json").read_text())
    test = reg.info.load_split(["a", "y", "w"], "test")
    w = test["w"]
    residual = reg.predict(test) - test["y"]
    expected_bias = np.sum(w * residual) / np.sum(w)
    assert abs(expected_bias) < 0.1
    (section,) = metrics["sections"]
    assert section["metrics"]["test_bias"] == pytest.approx(expected_bias, rel=1e-6)
    assert abs(np.mean(residual[w != 0])) > 1  # (which the cancelled rows would pull by ~1.5)


def test_weights_summing_to_zero_or_less_are_a_one_line_error_at_prepare(tmp_path, runner):
    config = _signed_file(tmp_path, total_negative=True)
    result = runner.invoke(app, ["prepare", str(config), "--out", str(tmp_path / "ds"), "--quiet"])
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "the weight column 'w' sums to -6000 over 6,200 rows (6,000 negative, 200 zero)" in text
