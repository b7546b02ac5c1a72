"""Same config and seed, twice, into separate folders: the same dataset bytes, the same trained
weights (CPU), the same samples and the same exported files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import write_tree

from detlearn.config import validate_config
from detlearn.families import export_run, train
from detlearn.prepare import prepare
from detlearn.runs import Surrogate


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
