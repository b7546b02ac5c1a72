"""klm-timing prepare: photons that reach the sensor before light could are reported once."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml

from detlearn.cli import app
from detlearn.errors import DetlearnError, DetlearnWarning
from detlearn.prepare import prepare
from detlearn.recipes import load_config
from detlearn.recipes.klm_timing.features import AcausalPhotonsError
from detlearn.recipes.klm_timing.simulate import (
    KLMEvents,
    KLMSimConfig,
    simulate_events,
    write_edm4hep,
)

CFG = KLMSimConfig(gun_z_max=740.0)


def sped_up(events: KLMEvents, factor: float) -> KLMEvents:
    """The events with every photon's flight from its creation to the sensor ``factor`` times
    as long: what Geant4 does when reflected photons take the speed c of a volume without
    GROUPVEL."""
    flight = events.photon_time - events.photon_emit_time
    events.photon_time = events.photon_emit_time + np.float32(factor) * flight
    return events


def write(tmp_path: Path, name: str, factor: float = 1.0, seed: int = 0) -> Path:
    events = simulate_events(120, CFG, np.random.default_rng(seed))
    return write_edm4hep(sped_up(events, factor), tmp_path / name, CFG)


def config(tmp_path: Path, inputs: list[Path], **options: str) -> Path:
    path = tmp_path / "run.yaml"
    data = {"inputs": [str(p) for p in inputs], "step_size": 40, "options": options}
    path.write_text(yaml.safe_dump({"recipe": "klm-timing", "data": data}))
    return path


def run(tmp_path: Path, inputs: list[Path], **options: str) -> list[warnings.WarningMessage]:
    """prepare, with 40-event work items; the DetlearnWarnings it gave."""
    cfg = load_config(config(tmp_path, inputs, **options))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepare(cfg, tmp_path / "ds", force=True, progress=False)
    return [w for w in caught if issubclass(w.category, DetlearnWarning)]


def test_simulator_files_give_no_warning(tmp_path):
    assert run(tmp_path, [write(tmp_path, "a.root"), write(tmp_path, "b.root", seed=1)]) == []


def test_sped_up_photons_give_one_warning_naming_cause_and_fix(tmp_path):
    files = [write(tmp_path, "fast.root", 0.6), write(tmp_path, "ok.root", seed=1)]
    caught = run(tmp_path, files)
    assert len(caught) == 1  # one line for the dataset, not one per work item
    message = str(caught[0].message)
    assert "\n" not in message
    assert message.startswith(f"{files[0]}: ") and "ok.root" not in message
    assert "GROUPVEL" in message and "track length" in message
    # A photon at μ = |cos α| > 0.6 now beats d n_g / c: about a third of the sped-up file's,
    # half the dataset's photons.
    fraction = float(message.split("%")[0].split()[-1]) / 100
    assert 0.1 < fraction < 0.25


def test_error_mode_stops_naming_the_file(tmp_path):
    files = [write(tmp_path, "ok.root", seed=1), write(tmp_path, "fast.root", 0.6)]
    with pytest.raises(AcausalPhotonsError, match=r"fast\.root: [0-9.]+% of optical photons"):
        run(tmp_path, files, causality="error")
    assert not (tmp_path / "ds" / "manifest.json").exists()
    assert run(tmp_path, files[:1], causality="error") == []


def test_off_skips_the_check_and_a_bad_mode_is_an_error(tmp_path):
    files = [write(tmp_path, "fast.root", 0.6)]
    assert run(tmp_path, files, causality="off") == []
    with pytest.raises(DetlearnError, match=r"data\.options\.causality: 'loud'"):
        run(tmp_path, files, causality="loud")


def test_cli_prints_the_warning_as_one_line(tmp_path, runner):
    path = config(tmp_path, [write(tmp_path, "fast.root", 0.6)])
    result = runner.invoke(app, ["prepare", str(path), "--out", str(tmp_path / "ds"), "--quiet"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "GROUPVEL" in line]
    assert len(lines) == 1 and lines[0].startswith("warning: ")
