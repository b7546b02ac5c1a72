"""Same config and seed, twice, into separate folders: the same dataset bytes, the same trained
weights (CPU), the same samples and the same exported files; and the same weights whatever
thread counts the machine's load gives the training."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from conftest import write_tree

from detlearn import training
from detlearn.config import FlowConfig, TrainingConfig, validate_config
from detlearn.families import export_run, train
from detlearn.models import BoostedTrees, ConditionalFlow
from detlearn.prepare import prepare
from detlearn.runs import Surrogate
from detlearn.training import fit


@pytest.fixture(scope="module")
def twice(tmp_path_factory):
    """The toy surrogate path (prepare, train, export) run twice from one ROOT file."""
    tmp = tmp_path_factory.mktemp("twice")
    rng = np.random.default_rng(4)
    c = rng.uniform(0, 1, 3000)
    write_tree(
        tmp / "toy.root",
        "Events",
        {"c": c, "t": rng.lognormal(np.log1p(c), 0.3), "n": rng.poisson(3 + 3 * c)},
    )
    cfg = validate_config(
        {
            "recipe": None,
            "data": {
                "inputs": [str(tmp / "toy.root")],
                "columns": {
                    "c": {"role": "context"},
                    "t": {"role": "target", "unit": "ns", "lower": 0.0},
                    "n": {"role": "observer"},
                },
            },
            "executor": {"workers": 2},
            "model": {
                "count": "negbinom",
                "count_column": "n",
                "count_hidden": [8],
                "count_max_epochs": 2,
                "flow": {"transforms": 1, "hidden": [16], "bins": 4},
            },
            "split": {"seed": 7},
            "training": {"batch_size": 256, "max_epochs": 2, "seed": 7},
        }
    )
    runs = []
    for name in ("a", "b"):
        out = tmp / name
        prepare(cfg, out / "ds", progress=False)
        train(cfg, out / "ds", out / "run", progress=False)
        export_run(out / "run", out / "export")
        runs.append(out)
    return runs


def _files(root, pattern):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob(pattern))}


def test_the_same_dataset_bytes(twice):
    a, b = twice
    shards = _files(a / "ds", "*.parquet")
    assert shards and shards == _files(b / "ds", "*.parquet")
    checksums = [
        [s["checksum"] for s in json.loads((r / "ds" / "manifest.json").read_text())["shards"]]
        for r in twice
    ]
    assert checksums[0] == checksums[1]


def test_the_same_trained_weights(twice):
    a, b = twice
    weights = _files(a / "run", "*.safetensors")
    assert len(weights) == 2  # the flow and the count model
    assert weights == _files(b / "run", "*.safetensors")


def test_the_same_samples(twice):
    draws = [Surrogate.load(r / "run").sample({"c": [0.2, 0.7]}, 500, seed=3) for r in twice]
    np.testing.assert_array_equal(*draws)
    events = [Surrogate.load(r / "run").simulate_events({"c": np.full(50, 0.5)}, seed=1)
              for r in twice]  # fmt: skip
    for x, y in zip(*events, strict=True):
        np.testing.assert_array_equal(x, y)


def test_the_same_exported_files(twice):
    a, b = twice
    graphs = _files(a / "export", "*.onnx")
    assert {"sample.onnx", "log_prob.onnx", "count.onnx"} <= set(graphs)
    assert graphs == _files(b / "export", "*.onnx")
    sidecars = _files(a / "export", "*.json")
    assert sidecars and sidecars == _files(b / "export", "*.json")


def _thread_schedule(counts):
    """An ``adapt`` that sets torch's threads to ``counts`` in turn, as load would."""
    turn = iter(counts * 1000)

    def adapt():
        threads = next(turn)
        torch.set_num_threads(threads)
        return threads

    return adapt


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="thread counts differ from two CPUs")
def test_the_same_weights_whatever_thread_counts_the_load_gives(tmp_path, monkeypatch):
    # detlearn fits its threads to the free CPUs batch by batch (detlearn._threads.adapt); a
    # flow trained on one thread, two, or a mix must come out bit for bit the same.
    rng = np.random.default_rng(0)
    c = rng.uniform(-1, 1, (12_000, 1)).astype(np.float32)
    x = np.exp(c + 0.3 * rng.standard_normal((12_000, 1))).astype(np.float32)
    train, val = (
        {"target": x[:10_000], "context": c[:10_000]},
        {"target": x[10_000:], "context": c[10_000:]},
    )
    weights = []
    for counts in ([2], [1], [1, 2]):
        monkeypatch.setattr(training, "adapt", _thread_schedule(counts))
        torch.manual_seed(0)
        flow = ConditionalFlow(
            1, 1, FlowConfig(hidden=[128, 128], transforms=2, bins=8), lower=[0.0]
        )
        cfg = TrainingConfig(batch_size=2048, max_epochs=2, patience=2)
        fit(flow, train, val, cfg, tmp_path / str(counts), progress=False)
        weights.append(b"".join(p.detach().numpy().tobytes() for p in flow.parameters()))
    assert weights[0] == weights[1] == weights[2]


def test_boosted_trees_do_not_depend_on_their_thread_count():
    rng = np.random.default_rng(0)
    x = rng.random((20_000, 4))
    y = (x[:, 0] + x[:, 1] * x[:, 2] + 0.3 * rng.random(20_000) > 0.9).astype(int)
    models = [
        BoostedTrees.train(
            x[:15_000], y[:15_000], None, x[15_000:], y[15_000:], list("abcd"), threads=t,
            iterations=40,
        ).booster.model_to_string()
        # The trees; the parameters that follow them name the thread count.
        .split("\nparameters:")[0]
        for t in (1, 2)
    ]  # fmt: skip
    assert models[0] == models[1]
