"""The hcal-energy path on a small sample: simulate, prepare, train, evaluate, export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from rich.console import Console
from scipy import stats

from detlearn.cli import app
from detlearn.errors import DetlearnError
from detlearn.evaluation.regression import bin_stats, sigma_eff
from detlearn.pipeline import run_recipe
from detlearn.recipes.hcal_energy.evaluate import TARGETS
from detlearn.runs import Regression, Surrogate

SMALL = {
    "training": {"max_epochs": 4, "batch_size": 256},
    "evaluation": {
        "options": {"min_rows": 30, "pu_edges": [0, 50, 110], "timing_batches": [256, 1024]}
    },
    "executor": {"workers": 1},
    "simulate": {"threads": 1, "channels_per_file": 20_000},
}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("hcal")
    return out, run_recipe(
        "hcal-energy", out, events=40_000, seed=2, overrides=SMALL, console=Console(quiet=True)
    )


def test_report_scores_every_populated_bin_for_all_three_methods(demo):
    out, _ = demo
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert set(metrics["checks"]) == set(TARGETS)
    assert metrics["metrics"]["parameters_keras_count"] == 2111
    rows = metrics["tables"][0]["rows"]
    assert {r["PU"] for r in rows} <= {"[0, 50)", "[50, 110)"} and len(rows) >= 8
    for method in ("DNN", "MAHI-lite", "M0"):
        assert all(np.isfinite(r[f"{method} res."]) and r[f"{method} res."] > 0 for r in rows)
        # σ_eff of E/E_gen per bin (unitless), finite and positive.
        assert all(0 < r[f"{method} σ_eff"] < 10 for r in rows)
        assert metrics["metrics"][f"sigma_eff_{method}"] > 0
    assert metrics["metrics"]["test_channels_without_deposit"] == 0
    # The bins' channels, counted beside all test channels: the rest lie outside their span.
    binned = metrics["metrics"]["test_channels_binned"]
    assert sum(r["n"] for r in rows) <= binned < metrics["metrics"]["test_channels"]
    figures = {f["file"] for f in metrics["figures"]}
    assert {"response_0.png", "resolution_0.png", "dE_0.png", "timing.png"} <= figures
    # Bins listed as "not better" are exactly those where the DNN's resolution is not lower.
    worse = [r for r in rows if r["DNN res."] >= r["MAHI-lite res."]]
    assert len(metrics["tables"][1]["rows"]) == len(worse)
    assert metrics["metrics"]["dnn_beats_mahi_fraction"] == pytest.approx(
        1 - len(worse) / len(rows)
    )


def test_regression_predicts_energy_close_to_the_truth(demo):
    out, _ = demo
    reg = Regression.load(out / "run", recipe="hcal-energy")
    assert len(reg.input_names) == 36 and reg.target_name == "genE"
    from detlearn.io.dataset import Dataset

    test = Dataset.open(out / "dataset").load([*reg.input_names, "genE"], split="test")
    pred = reg.predict(test)
    high = test["genE"] > 20
    # Four epochs on 32k channels: the response at high energy is already within 10 %.
    assert abs(np.median(pred[high] / test["genE"][high]) - 1) < 0.1


def test_export_matches_pytorch_to_1e_5_of_the_target_scale(demo):
    out, result = demo
    sidecar = json.loads((out / "run" / "export" / "regressor.json").read_text())
    assert result["export"]["model"] == "regressor.onnx"
    assert sidecar["parity"]["max_scaled"] <= 1 and sidecar["parity"]["rows"] > 1000
    assert isinstance(sidecar["normalization"]["inputs"]["center_folded"], bool)
    assert len(sidecar["inputs"]["inputs"]["columns"]) == 36
    assert sidecar["outputs"]["genE"]["unit"] == "GeV"


def test_flow_and_regressor_loaders_refuse_each_others_runs(demo):
    out, _ = demo
    with pytest.raises(DetlearnError, match="holds a regressor, not a flow"):
        Surrogate.load(out / "run")


def test_bin_stats_follow_facile_definitions():
    rng = np.random.default_rng(0)
    n, mu0, sigma0, e_ref = 200_000, 1.5, 2.0, 20.0
    e_gen = rng.uniform(15, 25, n)
    e = e_gen + rng.normal(mu0, sigma0, n)
    s = bin_stats(e, e_gen, e_ref)
    # A Gaussian trimmed to its 2-98 % quantiles keeps its mean; its standard deviation
    # shrinks by sqrt(1 - 2 z phi(z) / 0.96), z = the 98 % quantile.
    z = stats.norm.ppf(0.98)
    shrink = np.sqrt(1 - 2 * z * stats.norm.pdf(z) / 0.96)
    assert s["mu"] == pytest.approx(mu0, abs=5 * sigma0 / np.sqrt(n))
    assert s["sigma"] == pytest.approx(sigma0 * shrink, rel=5 / np.sqrt(2 * n))
    response = 1 - s["mu"] / e_ref
    assert s["response"] == pytest.approx(response)
    # The response correction c >= 1: here 1 - mu/E < 1, so c = 1/(1 - mu/E).
    assert s["resolution"] == pytest.approx(s["sigma"] / e_ref / response)


def test_sigma_eff_of_a_gaussian_is_its_sigma():
    x = np.random.default_rng(1).normal(1.0, 0.1, 100_000)
    assert sigma_eff(x) == pytest.approx(0.1, rel=0.02)


@pytest.mark.parametrize("samples", [6, 10])
def test_branch_with_wrong_number_of_samples_names_it(tmp_path, runner, samples):
    import uproot

    from detlearn.recipes.hcal_energy import HcalSimConfig, generate_channels

    ch = generate_channels(300, HcalSimConfig(), np.random.default_rng(0)).branches()
    ch["raw"] = np.concatenate([ch["raw"], ch["raw"]], axis=1)[:, :samples]
    ch |= {"energy": ch["genE"], "eraw": ch["genE"]}
    path = tmp_path / f"samples{samples}.root"
    with uproot.recreate(path) as f:
        f.mktree("Events", {k: (v.dtype, v.shape[1:]) for k, v in ch.items()})
        f["Events"].extend(ch)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"recipe": "hcal-energy", "data": {"inputs": [str(path)]},
                                      "executor": {"workers": 1}}))  # fmt: skip
    result = runner.invoke(app, ["prepare", str(config), "--out", str(tmp_path / "ds")])
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert f"samples{samples}.root" in message
    assert "data.require 'ak.num(raw) == 8' fails for 300 of 300 entries" in message
    assert not (tmp_path / "ds" / "manifest.json").exists()
