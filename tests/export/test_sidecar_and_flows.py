"""Export: a flow run's three graphs against PyTorch, and the one sidecar contract every
graph has beside it (written, read back, tampered with)."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import write_tree

from detlearn.cli import app
from detlearn.config import validate_config
from detlearn.errors import DetlearnError
from detlearn.export import Sidecar, check_parity, read_sidecar
from detlearn.export.flow import LOG_PROB_RTOL, ROUNDOFF_FACTOR, float_roundoff, flow_log_prob
from detlearn.families import export_run, train
from detlearn.prepare import prepare
from detlearn.runs import Surrogate

GRAPHS = ["sample", "log_prob", "count"]
# Rows the export checks on: the test split has ~400, the rest are fresh for the tests.
EXPORT_ROWS = 200


def _config(tmp, columns, model, max_epochs=3):
    return validate_config(
        {
            "recipe": None,
            "data": {"inputs": [str(tmp / "toy.root")], "columns": columns},
            "executor": {"workers": 1},
            "model": model,
            "training": {"batch_size": 512, "max_epochs": max_epochs, "lr": 5e-3},
        }
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A two-target flow with a count model, exported: t ~ c LogNormal(0, 0.3) [ns] (> 0,
    relative to c), f ~ Beta(2 + c, 2) (in (0, 1)), N ~ Poisson(5 + 5c), c ~ U(0.5, 2) GeV
    seen as log c."""
    tmp = tmp_path_factory.mktemp("flow")
    rng = np.random.default_rng(1)
    n = 4000
    c = rng.uniform(0.5, 2, n)
    columns = {
        "c": c,
        "t": c * rng.lognormal(0, 0.3, n),
        "f": rng.beta(2 + c, 2),
        "n": rng.poisson(5 + 5 * c).astype(np.int64),
    }
    write_tree(tmp / "toy.root", "Events", columns)
    cfg = _config(
        tmp,
        {
            "c": {"role": "context", "unit": "GeV"},
            "t": {"role": "target", "unit": "ns", "lower": 0.0},
            "f": {"role": "target", "lower": 0.0, "upper": 1.0},
            "n": {"role": "observer"},
        },
        {
            "count": "negbinom",
            "count_column": "n",
            "count_hidden": [16],
            "count_max_epochs": 3,
            "flow": {
                "transforms": 2,
                "hidden": [16, 16],
                "bins": 6,
                "relative_to": {"t": "c"},
                "log_context": ["c"],
            },
        },
    )
    prepare(cfg, tmp / "ds", progress=False)
    train(cfg, tmp / "ds", tmp / "run", progress=False)
    summary = export_run(tmp / "run", tmp / "export", rows=EXPORT_ROWS)
    return tmp, summary


def _session(tmp, name):
    return ort.InferenceSession(
        str(tmp / "export" / f"{name}.onnx"), providers=["CPUExecutionProvider"]
    )


def _fresh_contexts(surrogate, rows, seed):
    lo, hi = surrogate.info.context_range()
    rng = np.random.default_rng(seed)
    return rng.uniform(lo, hi, (rows, len(lo))).astype(np.float32), rng


def test_a_flow_exports_three_graphs_each_with_its_sidecar(exported):
    tmp, summary = exported
    for name in GRAPHS:
        model = onnx.load(tmp / "export" / f"{name}.onnx")
        assert model.opset_import[0].version >= 17
        for tensor in [*model.graph.input, *model.graph.output]:
            assert tensor.type.tensor_type.shape.dim[0].dim_param, (name, tensor.name)
        sidecar = read_sidecar(tmp / "export" / f"{name}.json")
        assert sidecar.model == f"{name}.onnx" and sidecar.opset >= 17
        assert sidecar.parity.max_scaled <= 1 and sidecar.parity.rows == EXPORT_ROWS
        assert list(sidecar.context_ranges) == ["c"] and len(sidecar.config_hash) == 16
    assert sorted(summary["graphs"]) == sorted(f"{name}.onnx" for name in GRAPHS)
    assert not (tmp / "export" / "sampler.onnx").exists()


def test_the_summary_keeps_what_the_cli_prints(exported, tmp_path, runner):
    tmp, summary = exported
    assert summary["model"] == "sample.onnx" and summary["opset"] >= 17
    assert summary["parity_max_abs"] == summary["parity"]["max_abs"]
    assert summary["parity_rows"] == EXPORT_ROWS and summary["parity_max_scaled"] <= 1
    result = runner.invoke(app, ["export", str(tmp / "run"), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    for name in GRAPHS:  # every graph, each with its own parity
        assert f"exported {name}.onnx (opset 17)" in result.output
    assert result.output.count("held-out rows") == len(GRAPHS)


def test_sidecars_name_columns_units_ranges_and_support(exported):
    tmp, _ = exported
    sample = read_sidecar(tmp / "export" / "sample.json")
    assert list(sample.inputs) == ["noise", "context"] and list(sample.outputs) == ["sample"]
    assert [(c.name, c.unit) for c in sample.outputs["sample"].columns] == [
        ("t", "ns"),
        ("f", ""),
    ]
    assert sample.inputs["context"].columns[0].unit == "GeV"
    assert 0.5 <= sample.context_ranges["c"].min < sample.context_ranges["c"].max <= 2
    assert sample.support["t"].lower == 0 and sample.support["t"].upper is None
    assert (sample.support["f"].lower, sample.support["f"].upper) == (0, 1)
    assert sample.normalization["sample"].relative_to == {"t": "c"}
    assert sample.normalization["context"].log_columns == ["c"]
    log_prob = read_sidecar(tmp / "export" / "log_prob.json")
    assert list(log_prob.inputs) == ["x", "context"] and log_prob.outputs["log_prob"].unit == "nat"
    count = read_sidecar(tmp / "export" / "count.json")
    assert list(count.outputs) == ["mean", "dispersion"] and count.support == {}
    assert "Gamma(n + r)" in count.description and "Poisson" in count.description


@pytest.mark.parametrize("rows", [1, 37, 3000])
def test_sample_graph_matches_pytorch_at_any_batch_size(exported, rows):
    tmp, _ = exported
    surrogate = Surrogate.load(tmp / "run")
    context, rng = _fresh_contexts(surrogate, rows, seed=11 + rows)
    noise = rng.standard_normal((rows, 2)).astype(np.float32)
    (got,) = _session(tmp, "sample").run(None, {"noise": noise, "context": context})
    with torch.no_grad():
        want = surrogate.flow.sample_from_noise(torch.from_numpy(noise), torch.from_numpy(context))
    np.testing.assert_allclose(got, want.numpy(), rtol=5e-5, atol=1e-5)
    assert (got[:, 0] > 0).all() and ((got[:, 1] > 0) & (got[:, 1] < 1)).all()


@pytest.mark.parametrize("rows", [1, 150])
def test_log_prob_graph_matches_pytorch_on_held_out_rows(exported, rows):
    """Test-split rows the export did not check (it used the first EXPORT_ROWS), within
    1e-5 max(1, |log p|) + twice PyTorch's own float32 round-off; and rows outside the
    support: -inf from both."""
    tmp, _ = exported
    surrogate = Surrogate.load(tmp / "run")
    flow, info = surrogate.flow, surrogate.info
    test = info.load_split([*info.context_names, *info.target_names], "test")
    assert len(test["t"]) >= EXPORT_ROWS + rows
    x = np.stack([test["t"], test["f"]], 1)[-rows:].astype(np.float32)
    context = test["c"][-rows:, None].astype(np.float32)
    # t < 0, f > 1, t NaN, and c < 0 (t is relative to c): outside the support.
    x = np.concatenate([x, [[-1.0, 0.5], [1.0, 1.5], [np.nan, 0.5], [1.0, 0.5]]])
    context = np.concatenate([context, [[1.0], [1.0], [1.0], [-1.0]]])
    x, context = x.astype(np.float32), context.astype(np.float32)
    (got,) = _session(tmp, "log_prob").run(None, {"x": x, "context": context})
    want = flow_log_prob(flow, x, context)
    roundoff = float_roundoff(want, flow_log_prob(copy.deepcopy(flow).double(), x, context))
    assert got.shape == (rows + 4,) and np.isfinite(got[:-4]).all()
    assert np.all(got[-4:] == -np.inf) and np.all(want[-4:] == -np.inf)
    bound = LOG_PROB_RTOL * np.maximum(1, np.abs(want[:-4])) + ROUNDOFF_FACTOR * roundoff
    np.testing.assert_array_less(np.abs(got[:-4] - want[:-4]), bound)


@pytest.mark.parametrize("rows", [1, 250])
def test_count_graph_gives_the_negative_binomial_parameters(exported, rows):
    tmp, _ = exported
    surrogate = Surrogate.load(tmp / "run")
    context, _ = _fresh_contexts(surrogate, rows, seed=5)
    mean, dispersion = _session(tmp, "count").run(None, {"context": context})
    with torch.no_grad():
        log_mu, log_r = surrogate.count._params(torch.from_numpy(context))
        np.testing.assert_allclose(mean, surrogate.count.mean(torch.from_numpy(context)), rtol=1e-5)
    np.testing.assert_allclose(mean, log_mu.exp().numpy(), rtol=1e-5)
    np.testing.assert_allclose(dispersion, log_r.exp().numpy(), rtol=1e-5)
    assert mean.shape == dispersion.shape == (rows,) and (dispersion > 0).all()


def test_sidecar_round_trips_through_read_sidecar(exported):
    tmp, summary = exported
    for name in GRAPHS:
        path = tmp / "export" / f"{name}.json"
        sidecar = read_sidecar(path)
        assert sidecar.model_dump(mode="json") == json.loads(path.read_text())
        assert sidecar == Sidecar.model_validate(summary["graphs"][f"{name}.onnx"])


def _set(raw, keys, value):
    for key in keys[:-1]:
        raw = raw[key]
    raw[keys[-1]] = value


@pytest.mark.parametrize(
    ("keys", "value", "message"),
    [
        (["extra"], 1, r"key 'extra': Extra inputs are not permitted"),
        (["inputs", "context", "scale"], 1.0, r"key 'inputs\.context\.scale'"),
        (["inputs", "noise", "shape"], "batch, 2", r"key 'inputs\.noise\.shape'"),
        (["inputs", "noise", "shape"], ["batch", 2.5], r"key 'inputs\.noise\.shape\.1"),
        (
            ["inputs", "noise", "shape"],
            [2, "batch"],
            r"key 'inputs\.noise': .* the first axis, only, is 'batch'",
        ),
        (["inputs", "noise", "dtype"], "float64", r"key 'inputs\.noise\.dtype'"),
        (["opset"], "17", r"key 'opset'"),
        (["opset"], 13, r"key 'opset'"),
        (["context_ranges", "c", "max"], -1e9, r"key 'context_ranges\.c'"),
        (["parity", "max_abs"], math.nan, r"not valid JSON \(NaN is not JSON\)"),
        (["parity"], None, r"key 'parity'"),
    ],
)
def test_a_tampered_sidecar_is_refused_naming_the_file(exported, tmp_path, keys, value, message):
    tmp, _ = exported
    raw = json.loads((tmp / "export" / "sample.json").read_text())
    _set(raw, keys, value)
    path = tmp_path / "sample.json"
    path.write_text(json.dumps(raw))  # NaN written as the non-JSON token NaN
    with pytest.raises(DetlearnError, match=message) as err:
        read_sidecar(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_missing_key_is_refused(exported, tmp_path):
    tmp, _ = exported
    raw = json.loads((tmp / "export" / "count.json").read_text())
    del raw["config_hash"]
    path = tmp_path / "count.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(DetlearnError, match=r"count\.json: key 'config_hash': Field required"):
        read_sidecar(path)


def test_parity_refuses_a_difference_and_a_mismatched_infinity(tmp_path):
    want = np.array([1.0, -np.inf, 2.0])
    record = check_parity(want.copy(), want, 1e-5, "exact", tmp_path / "g.onnx")
    assert record.max_abs == 0 and record.rows == 3
    for got in ([1.001, -np.inf, 2.0], [1.0, 0.0, 2.0], [1.0, -np.inf, np.nan]):
        with pytest.raises(DetlearnError, match=r"g\.onnx: onnxruntime differs from PyTorch"):
            check_parity(np.array(got), want, 1e-5, "exact", tmp_path / "g.onnx")


def test_a_regressor_writes_the_same_sidecar_contract(tmp_path):
    rng = np.random.default_rng(3)
    n = 3000
    a, b = rng.uniform(1, 5, (2, n))
    write_tree(tmp_path / "toy.root", "Events", {"a": a, "b": b, "y": a * b})
    cfg = _config(
        tmp_path,
        {
            "a": {"role": "context"},
            "b": {"role": "context"},
            "y": {"role": "target", "unit": "GeV"},
        },
        {"family": "regressor", "regressor": {"arch": "mlp", "hidden": [16]}},
    )
    prepare(cfg, tmp_path / "ds", progress=False)
    train(cfg, tmp_path / "ds", tmp_path / "run", progress=False)
    summary = export_run(tmp_path / "run")
    sidecar = read_sidecar(tmp_path / "run" / "export" / "regressor.json")
    assert summary["model"] == "regressor.onnx" and summary["parity_rows"] == sidecar.parity.rows
    assert list(sidecar.context_ranges) == ["a", "b"] and sidecar.outputs["y"].unit == "GeV"
    assert isinstance(sidecar.normalization["inputs"].center_folded, bool)
    assert sidecar.support["y"].lower is None and sidecar.support["y"].upper is None


def test_an_export_removes_an_earlier_exports_graphs_and_keeps_other_files(exported, tmp_path):
    tmp, _ = exported
    export = tmp_path / "export"
    export_run(tmp / "run", export, rows=64)
    stale = json.loads((export / "count.json").read_text()) | {"model": "old.onnx"}
    (export / "old.json").write_text(json.dumps(stale))  # a graph this run no longer has
    (export / "old.onnx").write_bytes((export / "count.onnx").read_bytes())
    (export / "notes.json").write_text('{"mine": true}')  # not a detlearn sidecar
    (export / "notes.onnx").write_bytes(b"user's own")
    export_run(tmp / "run", export, rows=64)
    names = {p.name for p in export.iterdir()}
    assert not {"old.json", "old.onnx"} & names
    assert {"notes.json", "notes.onnx", "sample.onnx", "count.json"} <= names
