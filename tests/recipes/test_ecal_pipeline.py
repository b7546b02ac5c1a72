"""The ecal-veto path on a small sample: simulate, prepare, train every classifier, evaluate,
export; and the reader's answers to bad files."""

from __future__ import annotations

import json

import awkward as ak
import numpy as np
import onnxruntime as ort
import pytest
import uproot
from rich.console import Console

from detlearn.config import deep_merge, validate_config
from detlearn.errors import DetlearnError
from detlearn.families import export_run, train
from detlearn.pipeline import evaluate, run_recipe
from detlearn.prepare import prepare
from detlearn.recipes import get_recipe
from detlearn.recipes.ecal_veto.evaluate import fiducial_columns
from detlearn.runs.classification import Classifier, network_inputs

SMALL = {
    "simulate": {"masses": [1.0, 5.0, 100.0], "threads": 1},
    "split": {"holdout": {"columns": ["mass"], "points": [[5.0]]}},
    "training": {"max_epochs": 2, "batch_size": 64},
    "executor": {"workers": 1},
    "model": {"classifier": {"conv_channels": [8, 8], "dense": [16], "max_hits": 16}},
}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("ecal")
    result = run_recipe("ecal-veto", out, 300, seed=1, overrides=SMALL, console=Console(quiet=True))
    return out, result


def _config(out, **model):
    raw = deep_merge(get_recipe("ecal-veto").default_config(), SMALL)
    raw = deep_merge(raw, {"data": {"inputs": [str(out / "sim")]}, "model": {"classifier": model}})
    return validate_config(raw)


def test_the_demo_path_writes_a_report_per_mass_and_an_exported_cnn(demo):
    out, result = demo
    metrics = json.loads((out / "report" / "cnn" / "metrics.json").read_text())
    rows = metrics["tables"][0]["rows"]
    assert [r["mass [MeV]"] for r in rows] == [1.0, 5.0, 100.0]
    assert [r["in training"] for r in rows] == [True, False, True]
    assert all(0 <= r["AUC"] <= 1 for r in rows)
    # Scored on fiducial events (the simulator writes the recoil angles), each sample's
    # fiducial fraction beside its figures.
    assert metrics["metrics"]["fiducial"]["used"] is True
    assert 0.5 < metrics["metrics"]["fiducial"]["background_fraction"] < 1
    assert all(0 < r["fiducial fraction"] <= 1 for r in rows)
    # A few hundred background events cannot resolve eff_B = 1e-3: no number is printed.
    assert all(r["ε_S at ε_B=0.001"] is None for r in rows)
    generic = metrics["sections"][0]["metrics"]
    assert 0 <= generic["auc"]["value"] <= 1 and generic["test_background_events"] > 0
    assert {"roc_per_mass.png", "gallery.png"} <= {f["file"] for f in metrics["figures"]}
    assert result["export"]["cnn"]["model"] == "classifier.onnx"
    assert result["export"]["cnn"]["parity_max_abs"] < 1e-4


def test_the_demo_compares_every_model_and_refuses_numbers_it_cannot_resolve(demo):
    out, result = demo
    assert result["report"] == out / "report" / "report.html"
    compared = json.loads((out / "report" / "metrics.json").read_text())
    assert [r["model"] for r in compared["tables"][0]["rows"]] == list(
        get_recipe("ecal-veto").variants
    )
    # Unresolved working points give no margin and no loss, and so unmet targets.
    assert compared["metrics"]["best_network_margin_over_bdt"] is None
    assert compared["metrics"]["heldout_mass_loss"] is None
    assert compared["passed"] is False
    assert result["export"]["bdt"] is None  # the BDT travels as LightGBM's text model


def test_every_event_is_a_row_and_empty_events_are_kept(demo):
    out, _ = demo
    from detlearn.io.dataset import Dataset

    rows = Dataset.open(out / "dataset").load(["x", "E", "label", "mass"])
    events = sum(uproot.open(f)["ecalHits"].num_entries for f in (out / "sim").glob("*.root"))
    assert len(rows["label"]) == events
    assert ak.all(ak.num(rows["x"]) == ak.num(rows["E"]))
    assert set(np.unique(rows["mass"][rows["label"] == 1])) == {1.0, 5.0, 100.0}


@pytest.mark.parametrize(
    ("arch", "mass_parameterized"), [("point_cloud", True), ("bdt", False), ("cnn", True)]
)
def test_each_classifier_trains_predicts_and_exports_faithfully(
    demo, tmp_path, arch, mass_parameterized
):
    out, _ = demo
    cfg = _config(out, arch=arch, mass_parameterized=mass_parameterized)
    run = train(cfg, out / "dataset", tmp_path / "run", progress=False)
    clf = Classifier.load(run)
    assert clf.signal_masses == [1.0, 100.0]  # the held-out 5 MeV never trained on
    test = clf.info.load_split([*clf.config.hits, "label", "mass"], "test")
    mass = test["mass"] if mass_parameterized else None
    if mass_parameterized:
        mass = np.where(test["label"] > 0.5, test["mass"], 100.0)
    p = clf.predict(test, mass)
    assert p.shape == (len(test["label"]),) and np.all((p >= 0) & (p <= 1))
    report = evaluate(run, tmp_path / "report")
    assert report.is_file()
    if arch == "bdt":
        with pytest.raises(DetlearnError, match="not exported to ONNX"):
            export_run(run, tmp_path / "export")
        return
    sidecar = export_run(run, tmp_path / "export")
    session = ort.InferenceSession(str(tmp_path / "export" / "classifier.onnx"))
    inputs = network_inputs(clf.config, test)
    feed = {
        name: np.ascontiguousarray(inputs[name]) for name in sidecar["inputs"] if name != "mass"
    }
    if mass_parameterized:
        feed["mass"] = np.asarray(mass, dtype=np.float32)
    logit = session.run(["logit"], feed)[0]
    np.testing.assert_allclose(1 / (1 + np.exp(-logit)), p, atol=1e-5)


def _write(path, n_hits, x_len=None, with_truth=False):
    counts = np.asarray(n_hits)
    lengths = counts if x_len is None else np.asarray(x_len)
    rng = np.random.default_rng(0)
    hits = {
        k: ak.unflatten(rng.normal(300, 50, lengths.sum()).astype(np.float32), lengths)
        for k in "xyz"
    }
    columns = {
        "eventNumber": np.arange(1, len(counts) + 1, dtype=np.int32),
        "nHits": counts.astype(np.int32),
        **hits,
        "E": ak.unflatten(rng.exponential(1, lengths.sum()).astype(np.float32), lengths),
    }
    if with_truth:
        columns |= {"label": np.ones(len(counts), np.int32), "mass": np.full(len(counts), 10.0)}
    with uproot.recreate(path) as f:
        f.mktree("ecalHits", {k: ak.type(ak.Array(v)).content for k, v in columns.items()})
        f["ecalHits"].extend(columns)
    return path


def _user_config(inputs):
    raw = deep_merge(get_recipe("ecal-veto").default_config(), {"executor": {"workers": 1}})
    return validate_config(deep_merge(raw, {"data": {"inputs": inputs}}))


def test_jagged_branches_whose_lengths_disagree_name_the_event_and_branch(tmp_path):
    path = _write(tmp_path / "bad.root", [2, 3, 1], x_len=[2, 4, 1], with_truth=True)
    with pytest.raises(DetlearnError, match=r"event 2: branch 'x' has 4 hits, nHits says 3"):
        prepare(_user_config([str(path)]), tmp_path / "ds", progress=False)
    assert not (tmp_path / "ds").exists()  # no empty dataset folder left behind


def test_a_users_file_takes_label_and_mass_from_the_config(tmp_path):
    sig = _write(tmp_path / "sig.root", [3, 0, 2])
    bkg = _write(tmp_path / "bkg.root", [5, 4])
    inputs = [
        {"path": str(sig), "columns": {"label": 1, "mass": 10.0}},
        {"path": str(bkg), "columns": {"label": 0, "mass": 0.0}},
    ]
    prepare(_user_config(inputs), tmp_path / "ds", progress=False)
    from detlearn.io.dataset import Dataset

    rows = Dataset.open(tmp_path / "ds").load(["label", "mass", "layer", "E"])
    assert sorted(rows["label"].tolist()) == [0, 0, 1, 1, 1]
    assert ak.to_list(ak.num(rows["E"])).count(0) == 1  # the empty signal event is a row
    assert ak.all(ak.num(rows["layer"]) == ak.num(rows["E"]))  # layers from z when absent
    # Without the recoil angles, evaluation scores every event, or refuses when told not to.
    assert fiducial_columns(tmp_path / "ds", "auto") == []
    with pytest.raises(DetlearnError, match=r"ds: .*no recoilTheta, recoilPhi column"):
        fiducial_columns(tmp_path / "ds", True)
    with pytest.raises(DetlearnError, match=r"evaluation.options.fiducial: expected auto"):
        fiducial_columns(tmp_path / "ds", "yes")
    with pytest.raises(DetlearnError, match="'label'"):
        prepare(_user_config([str(sig)]), tmp_path / "ds2", progress=False)


def test_a_sample_without_events_in_a_split_is_named(tmp_path):
    sig = _write(tmp_path / "sig.root", [3] * 40)
    cfg = _user_config([{"path": str(sig), "columns": {"label": 1, "mass": 10.0}}])
    cfg = validate_config(deep_merge(cfg.model_dump(mode="json"), {"split": {"holdout": None}}))
    prepare(cfg, tmp_path / "ds", progress=False)
    with pytest.raises(DetlearnError, match="the background sample has no events"):
        train(cfg, tmp_path / "ds", tmp_path / "run", progress=False)
