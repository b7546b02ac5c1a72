"""A run is compared with its recipe's simulator only when its data came from that simulator,
with the same settings; otherwise evaluate says in one line which reference it used."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import KLM_TINY

from detlearn.cli import app
from detlearn.config import deep_merge, validate_config
from detlearn.families import train
from detlearn.io.provenance import read_provenance
from detlearn.prepare import prepare
from detlearn.recipes import get_recipe
from detlearn.recipes.klm_timing.simulate import KLMSimConfig, simulate_events, write_edm4hep

TINY = deep_merge(KLM_TINY, {"model": {"count_max_epochs": 1}})

# Contexts of the test split may fall outside a 300-event training range.
pytestmark = pytest.mark.filterwarnings("ignore::detlearn.runs.surrogate.ContextRangeWarning")


def _evaluate(tmp_path, files, runner):
    raw = deep_merge(get_recipe("klm-timing").default_config(), TINY)
    cfg = validate_config(deep_merge(raw, {"data": {"inputs": [str(files)]}}))
    prepare(cfg, tmp_path / "ds", progress=False)
    run = train(cfg, tmp_path / "ds", tmp_path / "run", progress=False)
    result = runner.invoke(app, ["evaluate", str(run)])
    assert result.exit_code == 0, result.output
    return result.output, json.loads((run / "report" / "metrics.json").read_text())


def test_a_users_own_file_is_validated_on_its_test_split_only(tmp_path, runner):
    cfg = KLMSimConfig()
    (tmp_path / "own").mkdir()
    events = simulate_events(300, cfg, np.random.default_rng(0))
    write_edm4hep(events, tmp_path / "own" / "ddsim.edm4hep.root", cfg)  # no detlearn record
    output, metrics = _evaluate(tmp_path, tmp_path / "own", runner)
    assert "reference: the run's own held-out test split, not klm-timing's simulator" in output
    assert "no detlearn record: your own file" in metrics["reference"]
    assert "kl_mean" not in metrics["metrics"] and metrics["sections"]  # no simulator truth


def test_simulator_files_with_other_settings_are_not_compared_with_the_defaults(tmp_path, runner):
    files = get_recipe("klm-timing").simulate(tmp_path / "sim", 300, 0, {"mode": "wls"})
    assert read_provenance(files[0])["options"]["mode"] == "wls"
    output, metrics = _evaluate(tmp_path, tmp_path / "sim", runner)
    assert "simulated with mode='wls', the run's config says simulate.mode=" in output
    assert "kl_mean" not in metrics["metrics"]
