"""The whole klm-timing path on a tiny sample: simulate, prepare, train, evaluate, export."""

from __future__ import annotations

import json

import pytest
from conftest import KLM_TINY
from rich.console import Console

from detlearn.cli import app
from detlearn.config import deep_merge
from detlearn.errors import DetlearnError
from detlearn.pipeline import run_recipe
from detlearn.recipes.klm_timing.evaluate import TARGETS

TINY = deep_merge(
    KLM_TINY,
    {"evaluation": {"max_rows": 3000, "options": {"reference_events": 200, "closure_events": 100}}},
)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, run_recipe(
        "klm-timing", out, events=300, seed=1, overrides=TINY, console=Console(quiet=True)
    )


def test_report_has_every_target_and_figure(demo):
    out, result = demo
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert set(metrics["checks"]) == set(TARGETS)
    assert metrics["metrics"]["unphysical_fraction"]["value"] == 0.0
    html = result["report"].read_text()
    assert html.count("<img") >= 10 and "kl_mean" in html and "c2st_auc" in html
    rows = metrics["tables"][0]["rows"]
    assert {r["variable"] for r in rows} == {"z", "theta", "p"} and len(rows) == 10 + 4 + 3
    # Whole events at the reference contexts: the photon-count distributions, each figure
    # beside a second simulated sample.
    events = next(t["rows"] for t in metrics["tables"] if "mean_N_sim2" in t["rows"][0])
    for r in events:
        assert r["std_N_sim"] > 0 and r["std_N_sim2"] > 0 and r["std_N_model"] > 0
        assert r["w1_N_model"] >= 0 and r["w1_N_sim2"] >= 0


def test_export_sidecar_names_inputs_and_units(demo):
    out, result = demo
    sidecar = json.loads((out / "run" / "export" / "sample.json").read_text())
    assert [c["name"] for c in sidecar["inputs"]["context"]["columns"]] == ["z", "theta", "p"]
    assert sidecar["outputs"]["sample"]["columns"][0]["unit"] == "ns"
    assert sidecar["parity"]["max_scaled"] <= 1 and result["timings"]["total"] > 0


def test_evaluate_rejects_a_run_of_another_recipe(demo, tmp_path):
    out, _ = demo
    info = json.loads((out / "run" / "run.json").read_text())
    other = tmp_path / "run"
    other.mkdir()
    (other / "run.json").write_text(json.dumps({**info, "recipe": "mass-grid"}))
    from detlearn.recipes.klm_timing import evaluate

    with pytest.raises(DetlearnError, match="trained for recipe 'mass-grid', not 'klm-timing'"):
        evaluate(other, tmp_path / "report")


def test_a_demo_folder_of_another_recipe_is_refused_before_anything_is_written(demo, runner):
    out, _ = demo
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    result = runner.invoke(app, ["demo", "--recipe", "mass-grid", "--out", str(out)])
    assert result.exit_code == 2
    assert "holds a 'klm-timing' run" in result.output and "--out" in result.output
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


def test_cli_evaluate_on_a_folder_that_is_not_a_run(tmp_path, runner):
    result = runner.invoke(app, ["evaluate", str(tmp_path)])
    assert result.exit_code == 2 and "not a detlearn run directory" in result.output
