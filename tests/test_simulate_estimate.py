"""simulate knows what it will take before it starts: a size that cannot fit on the disk or in
memory is refused in one line with nothing written, and the estimate it prints is near what
the simulators really write."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from detlearn import pipeline
from detlearn.cli import app
from detlearn.errors import DetlearnError
from detlearn.pipeline import estimate_simulation, simulate
from detlearn.recipes import RECIPES

#: Events per recipe for the comparison with real files: a few thousand events at least, and
#: enough per mass-grid point that each file's own overhead (~50 kB) does not dominate.
SMALL = {"klm-timing": 2000, "hcal-energy": 200_000, "mass-grid": 1000, "ecal-veto": 1000}


def _cli(runner, *args):
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, [line for line in result.output.splitlines() if line.strip()]


def test_more_events_than_the_disk_holds_are_refused_in_one_line_writing_nothing(tmp_path, runner):
    out = tmp_path / "sim"
    code, lines = _cli(runner, "simulate", "klm-timing", "--out", out, "--events", 10**12)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: klm-timing simulate: ~1,000,000,000,000 events need ~")
    assert "GB on disk" in lines[0] and "GB free" in lines[0] and "lower --events" in lines[0]
    assert not out.exists()
    out.mkdir()  # an existing empty folder stays empty; a count as physicists write it
    code, again = _cli(runner, "simulate", "klm-timing", "--out", out, "--events", "1e12")
    assert code == 2 and not any(out.iterdir())
    assert again[0].split(" on disk")[0] == lines[0].split(" on disk")[0]
    code, lines = _cli(runner, "simulate", "klm-timing", "--out", out, "--events", "1.5")
    assert code == 2 and not any(out.iterdir())
    assert any("'1.5' is not a whole number" in line for line in lines)


def test_the_disk_check_compares_with_the_free_space_of_the_out_folders_file_system(
    tmp_path, monkeypatch
):
    seen, disk_usage = [], shutil.disk_usage

    def nearly_full(path):
        seen.append(Path(path))
        return disk_usage(path)._replace(free=1_000_000)

    monkeypatch.setattr(pipeline.shutil, "disk_usage", nearly_full)
    out = tmp_path / "new" / "sim"
    with pytest.raises(DetlearnError, match=r"1\.08 GB on disk, 0\.001 GB free") as err:
        simulate("hcal-energy", out, 10_000_000)
    assert "\n" not in str(err.value) and seen == [tmp_path]  # the nearest existing folder
    assert not (tmp_path / "new").exists()


def test_more_events_held_at_once_than_memory_are_refused_writing_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "usable_memory", lambda: 1_000_000)
    out = tmp_path / "sim"
    # mass-grid holds a grid point's events at once: 10,000 of them ~3.6 MB.
    with pytest.raises(DetlearnError, match=r"GB of memory, 0\.001 GB available: lower --events"):
        simulate("mass-grid", out, 10_000, options={"phi_points": 2, "omega_points": 2})
    assert not out.exists()


def test_a_normal_size_prints_its_estimate_and_runs(tmp_path, runner):
    out = tmp_path / "sim"
    sets = ["--set", "phi_points=2", "--set", "omega_points=2"]
    code, lines = _cli(runner, "simulate", "mass-grid", "--out", out, "-n", 500, *sets)
    assert code == 0, lines
    assert re.fullmatch(r"simulate: ~2,000 events, ~[\d.]+ MB, ~[\d.]+ s", lines[0]), lines
    assert " ".join(" ".join(lines[1:]).split()) == f"wrote 4 file(s) to {out}"


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_the_estimate_is_within_a_factor_3_of_the_files_written(recipe, tmp_path):
    options = RECIPES[recipe].default_config().get("simulate", {})
    estimate = estimate_simulation(recipe, SMALL[recipe], options)
    files = simulate(recipe, tmp_path / "sim", SMALL[recipe], options=options)
    written = sum(f.stat().st_size for f in files)
    assert written / 3 < estimate.bytes < 3 * written, (estimate, written)
