"""The whole path typed as a physicist would: every subcommand through the CLI, on a 4 x 4 grid."""

from __future__ import annotations

import json
import re

import yaml

from detlearn.cli import app

# Every event passes the selection, so each of the 16 grid points keeps its 250 events.
GRID = {"phi_points": 4, "omega_points": 4, "acceptance_max": 1.0, "acceptance_scale": 1.0}


def test_every_subcommand_from_simulate_to_export(tmp_path, runner):
    def run(*args: object) -> str:
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, result.output
        return " ".join(result.output.split())

    assert all(name in run("recipes") for name in ("klm-timing", "mass-grid", "hcal-energy"))
    sets = [f"--set={k}={v}" for k, v in GRID.items()]
    shown = run("simulate", "mass-grid", "--out", tmp_path / "sim", "-n", 250, "--seed", 3, *sets)
    wrote = re.escape(f"wrote 16 file(s) to {tmp_path / 'sim'}")
    assert re.fullmatch(rf"simulate: ~4,000 events, ~[\d.]+ MB, ~[\d.e-]+ s {wrote}", shown), shown
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "recipe": "mass-grid",
                "simulate": GRID,
                "data": {"inputs": [str(tmp_path / "sim" / "*.root")]},
                "model": {"flow": {"transforms": 2, "hidden": [16, 16], "bins": 6}},
                "training": {"batch_size": 512, "max_epochs": 1},
                "evaluation": {"options": {"samples": 2000, "bootstrap": 4, "panels": 1}},
            }
        )
    )
    summary = run("prepare", config, "--out", tmp_path / "ds", "--workers", 2, "--quiet")
    assert re.fullmatch(
        r"files 16 shards 16 rows 4,000 rows/s [\d,]+ skipped 0 failed 0.*", summary
    ), summary
    run("train", config, "--data", tmp_path / "ds", "--out", tmp_path / "run", "--quiet",
        "--set", "training.seed=5")  # fmt: skip
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["config"]["training"]["seed"] == 5 and info["holdout"]["points"]
    report = run("evaluate", tmp_path / "run", "--out", tmp_path / "report")
    assert re.search(r"(pass|FAIL) mean_pass_fraction = [\d.]+ \(target >= 1\)", report)
    assert re.search(r"(pass|FAIL) width_pass_fraction = [\d.]+ \(target >= 1\)", report)
    assert (tmp_path / "report" / "report.html").is_file()
    run("export", tmp_path / "run", "--out", tmp_path / "export")
    assert any(p.suffix == ".onnx" for p in (tmp_path / "export").iterdir())
