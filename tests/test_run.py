"""The run API on a small synthetic problem: train, load, sample, export, and bad runs."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import write_tree

from detlearn.cli import app
from detlearn.config import validate_config
from detlearn.errors import DetlearnError
from detlearn.families import export_run, train
from detlearn.prepare import prepare
from detlearn.runs import ContextRangeWarning, DatasetConfigWarning, Surrogate


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """t ~ LogNormal(log(1 + c), 0.3) [ns] and N ~ Poisson(5 + 5c), c ~ U(0, 1)."""
    tmp = tmp_path_factory.mktemp("run")
    rng = np.random.default_rng(1)
    n = 6000
    c = rng.uniform(0, 1, n)
    write_tree(
        tmp / "toy.root",
        "Events",
        {
            "c": c,
            "t": rng.lognormal(np.log1p(c), 0.3),
            "n": rng.poisson(5 + 5 * c).astype(np.int64),
        },
    )
    cfg = validate_config(
        {
            "recipe": None,
            "data": {
                "inputs": [str(tmp / "toy.root")],
                "columns": {
                    "c": {"role": "context", "unit": "GeV"},
                    "t": {"role": "target", "unit": "ns", "lower": 0.0},
                    "n": {"role": "observer"},
                },
            },
            "executor": {"workers": 1},
            "model": {
                "count": "negbinom",
                "count_column": "n",
                "count_hidden": [16],
                "count_max_epochs": 8,
                "flow": {"transforms": 2, "hidden": [32, 32], "bins": 8},
            },
            "training": {"batch_size": 512, "max_epochs": 8, "lr": 5e-3},
        }
    )
    prepare(cfg, tmp / "ds", progress=False)
    train(cfg, tmp / "ds", tmp / "run", progress=False)
    return tmp


def test_run_directory_holds_no_pickle(trained):
    files = {p.name for p in (trained / "run").rglob("*") if p.is_file()}
    assert {"run.json", "model.safetensors", "model.json", "history.csv"} <= files
    info = json.loads((trained / "run" / "run.json").read_text())
    assert [c["name"] for c in info["context"]] == ["c"] and info["target"][0]["lower"] == 0.0


def test_samples_are_physical_and_follow_the_context(trained):
    s = Surrogate.load(trained / "run")
    x = s.sample({"c": [0.1, 0.9]}, 20_000, seed=0)
    assert x.shape == (2, 20_000, 1) and (x > 0).all()
    medians = np.median(x[:, :, 0], axis=1)
    # True medians are 1.1 and 1.9; the tolerance is loose: 8 epochs on 4800 rows.
    np.testing.assert_allclose(medians, [1.1, 1.9], rtol=0.15)


def test_same_seed_same_samples_after_reload(trained):
    a = Surrogate.load(trained / "run").sample({"c": [0.5]}, 100, seed=3)
    b = Surrogate.load(trained / "run").sample({"c": [0.5]}, 100, seed=3)
    np.testing.assert_array_equal(a, b)


def test_simulate_events_draws_counts_and_photons(trained):
    s = Surrogate.load(trained / "run")
    counts, event, x = s.simulate_events({"c": np.full(2000, 0.5)}, seed=0)
    assert len(event) == counts.sum() == len(x) and (x > 0).all()
    assert abs(counts.mean() - 7.5) < 0.15 * 7.5


def test_context_outside_training_range_warns_with_fraction(trained):
    s = Surrogate.load(trained / "run")
    with pytest.warns(ContextRangeWarning, match=r"50\.0% of contexts .* \(c in \["):
        s.sample({"c": [0.5, 3.0]}, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s.sample({"c": [0.5]}, 10)


def test_nonfinite_context_names_column_and_rows(trained):
    s = Surrogate.load(trained / "run")
    with pytest.raises(DetlearnError, match=r"column 'c' has 2 non-finite rows"):
        s.sample({"c": [np.nan, 0.5, np.inf]}, 10)


def test_wrong_recipe_and_incompatible_version(trained, tmp_path):
    with pytest.raises(DetlearnError, match="trained for recipe 'None', not 'klm-timing'"):
        Surrogate.load(trained / "run", recipe="klm-timing")
    with pytest.raises(DetlearnError, match="not a detlearn run directory"):
        Surrogate.load(tmp_path)
    (tmp_path / "run.json").write_text(json.dumps({"format": 99, "detlearn_version": "9.0"}))
    with pytest.raises(
        DetlearnError, match=r"run format 99 written by detlearn 9\.0 is not readable"
    ):
        Surrogate.load(tmp_path)


def test_export_matches_onnxruntime(trained, tmp_path):
    sidecar = export_run(trained / "run", tmp_path)
    assert sidecar["parity_max_scaled"] <= 1 and (tmp_path / "sample.onnx").is_file()
    assert sidecar["inputs"]["context"]["columns"][0]["name"] == "c"
    assert json.loads((tmp_path / "sample.json").read_text())["opset"] >= 17


def test_cli_sample_writes_parquet(trained, tmp_path, runner):
    out = tmp_path / "s.parquet"
    result = runner.invoke(
        app,
        ["sample", str(trained / "run"), "-c", "c=0.2", "-c", "c=0.7", "-n", "500", "-o", str(out)],
    )
    assert result.exit_code == 0, result.output
    table = pq.read_table(out).to_pydict()
    assert len(table["t"]) == 1000 and set(table["c"]) == {0.2, 0.7}


def test_cli_prints_a_warning_as_one_line(trained, tmp_path, runner):
    """Outside the training range the model extrapolates: the CLI says so in one line."""
    out = tmp_path / "s.parquet"
    result = runner.invoke(
        app, ["sample", str(trained / "run"), "-c", "c=1.5", "-n", "200", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "warning:" in line]
    assert len(lines) == 1 and "outside" in lines[0], result.output
    assert "warnings.warn" not in result.output  # no source line, no file:line prefix
    assert out.is_file()


def test_cli_sample_bad_context(trained, runner):
    result = runner.invoke(app, ["sample", str(trained / "run"), "-c", "x=0.2"])
    assert result.exit_code == 2 and "missing column 'c'" in result.output


def test_regressor_trains_from_a_flat_ntuple_config_only(tmp_path):
    """No recipe: a branch list (role context), a target, model.family regressor."""
    from detlearn.runs import Regression

    rng = np.random.default_rng(3)
    n = 8000
    a, b = rng.uniform(1, 5, (2, n))
    write_tree(tmp_path / "flat.root", "Events",
               {"a": a, "b": b, "y": a * b + rng.normal(0, 0.05, n)})  # fmt: skip
    cfg = validate_config(
        {
            "recipe": None,
            "data": {
                "inputs": [str(tmp_path / "flat.root")],
                "columns": {
                    "a": {"role": "context"},
                    "b": {"role": "context"},
                    "y": {"role": "target", "unit": "GeV"},
                },
            },
            "executor": {"workers": 1},
            "model": {
                "family": "regressor",
                "regressor": {"arch": "mlp", "hidden": [32, 32], "loss": "huber"},
            },
            "training": {"batch_size": 256, "max_epochs": 15, "lr": 1e-2},
        }
    )
    prepare(cfg, tmp_path / "ds", progress=False)
    train(cfg, tmp_path / "ds", tmp_path / "run", progress=False)
    reg = Regression.load(tmp_path / "run")
    assert reg.input_names == ["a", "b"] and reg.target_name == "y"
    grid = {"a": np.array([1.5, 2.5, 4.0]), "b": np.array([4.0, 2.0, 1.5])}
    # y = a b ranges over 1..25; a small MLP gets within a few % of it.
    np.testing.assert_allclose(reg.predict(grid), grid["a"] * grid["b"], rtol=0.08)
    with pytest.raises(DetlearnError, match="missing column 'b'"):
        reg.predict({"a": grid["a"]})
    sidecar = export_run(tmp_path / "run")
    assert sidecar["model"] == "regressor.onnx" and sidecar["parity_max_scaled"] <= 1


def test_a_run_stopped_before_its_count_model_resumes(trained, tmp_path):
    """The flow trained, the job was stopped before the count model began (no count checkpoint,
    no run.json): --resume continues the flow from its last checkpoint and trains the count
    model from the start."""
    import shutil

    cfg = validate_config(json.loads((trained / "run" / "run.json").read_text())["config"])
    run = tmp_path / "run"
    train(cfg, trained / "ds", run, progress=False)
    shutil.rmtree(run / "count")
    (run / "run.json").unlink()
    train(cfg, trained / "ds", run, resume=True, progress=False)
    s = Surrogate.load(run)
    counts, _, x = s.simulate_events({"c": np.full(2000, 0.5)}, seed=0)
    assert abs(counts.mean() - 7.5) < 0.15 * 7.5 and (x > 0).all()


def test_training_is_reproducible_within_one_process(tmp_path):
    """Initial weights come from training.seed, not from torch's global generator state."""
    import torch

    from detlearn.runs import Regression

    rng = np.random.default_rng(4)
    a = rng.uniform(0, 1, 2000)
    write_tree(tmp_path / "f.root", "Events", {"a": a, "y": 2 * a + 1})
    cfg = validate_config(
        {
            "recipe": None,
            "data": {
                "inputs": [str(tmp_path / "f.root")],
                "columns": {"a": {"role": "context"}, "y": {"role": "target"}},
            },
            "executor": {"workers": 1},
            "model": {"family": "regressor", "regressor": {"arch": "mlp", "hidden": [8]}},
            "training": {"batch_size": 256, "max_epochs": 1},
        }
    )
    prepare(cfg, tmp_path / "ds", progress=False)
    predictions = []
    for i in range(2):
        torch.rand(100 + i)  # a different global generator state before each training
        train(cfg, tmp_path / "ds", tmp_path / f"run{i}", progress=False)
        predictions.append(Regression.load(tmp_path / f"run{i}").predict({"a": a}))
    np.testing.assert_array_equal(predictions[0], predictions[1])


def test_the_runs_split_fractions_decide_not_the_prepared_ones(trained):
    """Splits are cut on loading: a run's ``split`` applies to a dataset prepared with others."""
    from detlearn.data.selection import training_splits
    from detlearn.io.dataset import Dataset

    ds = Dataset.open(trained / "ds")
    info = json.loads((trained / "run" / "run.json").read_text())
    for train_fraction in (0.8, 0.5):
        split = {"train": train_fraction, "val": 1 - train_fraction, "test": 0.0}
        cfg = validate_config({**info["config"], "split": split})
        parts, _ = training_splits(cfg, ds, ["c", "_group"], ["c"])
        rows = {name: len(part["c"]) for name, part in parts.items()}
        assert rows["train"] + rows["val"] == ds.rows  # nothing left for test
        sigma = np.sqrt(train_fraction * (1 - train_fraction) / ds.rows)
        assert abs(rows["train"] / ds.rows - train_fraction) < 5 * sigma
        # Evaluation reads the test split with the run's fractions too: none here.
        assert len(ds.load(["c"], split="test", fractions=cfg.split.model_dump())["c"]) == 0


def test_balance_weighs_every_label_alike_and_keeps_row_weights():
    from detlearn.data.tensors import flow_tensors

    label = np.repeat([0.0, 1.0, 2.0], [900, 90, 10])
    part = {"c": label, "t": np.ones(1000), "w": np.where(np.arange(1000) % 2, 2.0, 0.0)}
    _, c, w = flow_tensors(part, ["c"], ["t"], [], ["c"])
    totals = [float(w[c[:, 0] == v].sum()) for v in (0, 1, 2)]
    np.testing.assert_allclose(totals, [1000 / 3] * 3, rtol=1e-6)  # equal shares, mean weight 1
    # With a weight column: rows of weight 0 are dropped, the others keep their factor 2.
    _, c, w = flow_tensors(part, ["c"], ["t"], ["w"], ["c"])
    assert len(w) == 500
    totals = [float(w[c[:, 0] == v].sum()) for v in (0, 1, 2)]
    np.testing.assert_allclose(totals, [1000 / 3] * 3, rtol=1e-6)


def test_tempered_balance_weighs_labels_by_the_root_of_their_rows():
    from detlearn.data.tensors import flow_tensors

    label = np.repeat([0.0, 1.0, 2.0], [900, 100, 25])
    part = {"c": label, "t": np.ones(len(label))}
    _, c, w = flow_tensors(part, ["c"], ["t"], [], ["c"], 0.5)
    totals = np.array([float(w[c[:, 0] == v].sum()) for v in (0, 1, 2)])
    np.testing.assert_allclose(totals / totals[2], [6.0, 2.0, 1.0], rtol=1e-6)  # √(n / 25)
    assert float(w.mean()) == pytest.approx(1.0)
    _, _, w = flow_tensors(part, ["c"], ["t"], [], ["c"], 0.0)
    np.testing.assert_allclose(w.numpy(), 1.0, rtol=1e-6)  # power 0: plain rows


def test_training_warns_when_the_dataset_came_from_another_data_config(trained):
    config = json.loads((trained / "run" / "run.json").read_text())["config"]
    changed = {**config["data"], "selection": "c > 0.5"}  # not what the dataset was made with
    # An invalid balance stops the training right after the check, before any fitting.
    cfg = validate_config({**config, "data": changed, "training": {"balance": ["t"]}})
    with (
        pytest.warns(DatasetConfigWarning, match="prepared from another data config"),
        pytest.raises(DetlearnError, match=r"training\.balance"),
    ):
        train(cfg, trained / "ds", trained / "run_other_data", progress=False)


def test_balance_must_name_a_context_column(trained):
    config = json.loads((trained / "run" / "run.json").read_text())["config"]
    cfg = validate_config({**config, "training": {**config["training"], "balance": ["t"]}})
    with pytest.raises(DetlearnError, match=r"training.balance: 't' is not a context column"):
        train(cfg, trained / "ds", trained / "run_balance", progress=False)


@pytest.mark.parametrize(("n", "message"), [(10**12, "GB of memory"), (0, "must be >= 1")])
def test_sample_refuses_more_than_memory_holds_up_front(trained, tmp_path, runner, n, message):
    out = tmp_path / "s.parquet"
    args = ["sample", str(trained / "run"), "-c", "c=0.5", "-n", str(n), "-o", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and message in result.output, result.output
    assert not out.exists()
