"""The example configs a user copies must stay valid, and the generic ones run as written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import yaml
from conftest import write_tree

from detlearn.cli import app
from detlearn.config import RunConfig
from detlearn.recipes import load_config

FOLDER = Path(__file__).parents[1] / "examples"
EXAMPLES = sorted(FOLDER.glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_config_validates(path):
    cfg = load_config(path)
    assert cfg.data.inputs and (cfg.recipe or path.stem.startswith("generic_"))


def write_events(path: Path, n: int = 6000, seed: int = 0) -> None:
    """The file the generic examples describe: one entry per particle, the calorimeter's
    response recoE / genE ~ N(0.9 + 0.02 |eta|, 0.03 + 0.1 / sqrt(genE))."""
    rng = np.random.default_rng(seed)
    gen_e = rng.uniform(0.5, 50.0, n)
    eta = rng.uniform(-2.5, 2.5, n)
    response = rng.normal(0.9 + 0.02 * np.abs(eta), 0.03 + 0.1 / np.sqrt(gen_e))
    counts = rng.poisson(gen_e / 5.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = {
        "eventNumber": np.arange(n, dtype=np.int64),
        "genE": gen_e,
        "genEta": eta,
        "recoE": response * gen_e,
        "hitE": ak.unflatten(rng.exponential(1.0, counts.sum()), counts),
        "weight": rng.uniform(0.5, 1.5, n),
    }
    write_tree(path, "events", columns)


@pytest.mark.parametrize("name", ["generic_flow", "generic_regressor"])
def test_generic_example_runs_on_the_file_it_describes(tmp_path, runner, name):
    shutil.copy(FOLDER / f"{name}.yaml", tmp_path / "run.yaml")
    write_events(tmp_path / "data" / "events.root")

    def run(*args: object) -> str:
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, result.output
        return result.output

    config = tmp_path / "run.yaml"
    run("prepare", config, "--out", tmp_path / "ds", "--quiet")
    run("train", config, "--data", tmp_path / "ds", "--out", tmp_path / "run", "--quiet",
        "--set", "training.max_epochs=3")  # fmt: skip
    run("evaluate", tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "report" / "metrics.json").read_text())
    (section,) = metrics["sections"]
    family = yaml.safe_load(config.read_text())["model"]["family"]
    expected = {"flow": ("test_nll", "w1_response"), "regressor": ("test_rmse", "test_bias")}
    assert set(expected[family]) <= set(section["metrics"])
    run("export", tmp_path / "run")
    assert any(p.suffix == ".onnx" for p in (tmp_path / "run" / "export").iterdir())


def test_config_show_generic_prints_every_key_with_its_meaning(runner):
    result = runner.invoke(app, ["config", "show", "generic"])
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.output)
    assert RunConfig.model_validate(shown) == RunConfig()
    lines = result.output.splitlines()
    # The keys of a column, an input with constant columns and an unset holdout, as comments.
    for key in ("expr", "role", "unit", "lower", "upper", "path", "points", "rows"):
        assert any(line.lstrip("# -").startswith(f"{key}: ") and "  # " in line
                   for line in lines), key  # fmt: skip
    assert all("  # " in line for line in lines if not line.lstrip().startswith("#"))
    result = runner.invoke(app, ["config", "show", "genric"])
    assert result.exit_code == 2 and "or 'generic' for a config of your own files" in result.output
