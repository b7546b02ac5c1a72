"""The surrogate in the chain: ``detlearn fastsim`` writes the simulator's EDM4hep layout,
which prepare reads back exactly as the surrogate sampled it; reruns resume."""

from __future__ import annotations

import warnings

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pytest
from conftest import KLM_TINY
from rich.console import Console

from detlearn.cli import app
from detlearn.config import deep_merge, validate_config
from detlearn.errors import DetlearnError
from detlearn.io.dataset import Dataset
from detlearn.io.provenance import read_provenance
from detlearn.pipeline import run_recipe
from detlearn.prepare import prepare
from detlearn.recipes.klm_timing import fastsim
from detlearn.recipes.klm_timing.closure import closure
from detlearn.recipes.klm_timing.simulate import KLMSimConfig, gun_contexts
from detlearn.runs import Surrogate
from detlearn.runs.surrogate import ContextRangeWarning

# A 300-event run spans less of the simulator's range than the contexts drawn here.
pytestmark = pytest.mark.filterwarnings("ignore::detlearn.runs.surrogate.ContextRangeWarning")

TINY = deep_merge(
    KLM_TINY,
    {
        "simulate": {"events_per_file": 150},
        "evaluation": {
            "max_rows": 2000,
            "options": {"reference_events": 100, "closure_events": 50},
        },
    },
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("klm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ContextRangeWarning)
        run_recipe(
            "klm-timing", out, events=300, seed=1, overrides=TINY, console=Console(quiet=True)
        )
    return out


def _prepared(run_dir, files_dir, out):
    """prepare with the run's own config, reading ``files_dir``."""
    config = Surrogate.load(run_dir).info.config.model_dump(mode="json")
    cfg = validate_config(deep_merge(config, {"data": {"inputs": [str(files_dir)]}}))
    prepare(cfg, out, progress=False)
    return Dataset.open(out).load(["z", "theta", "p", "dt", "event", "n_photons", "photon"])


def test_prepare_reads_back_exactly_what_the_surrogate_sampled(run, tmp_path, runner):
    result = runner.invoke(
        app,
        ["fastsim", str(run / "run"), "-n", "200", "--out", str(tmp_path / "fs"), "--seed", "5"],
    )
    assert result.exit_code == 0, result.output
    files = sorted((tmp_path / "fs").glob("*.root"))
    assert [f.name for f in files] == ["fastsim_0000.edm4hep.root", "fastsim_0001.edm4hep.root"]
    rows = _prepared(run / "run", tmp_path / "fs", tmp_path / "ds")

    # The same draw by hand: contexts as the simulator draws them, file by file.
    surrogate = Surrogate.load(run / "run")
    cfg = KLMSimConfig.model_validate(surrogate.info.config.simulate)
    table = np.stack(gun_contexts(200, cfg, np.random.default_rng(5)), axis=1)
    seeds = np.random.SeedSequence(5).spawn(2)
    parts = [
        surrogate.simulate_events(table[s : s + 150], seed=int(q.generate_state(1)[0]))
        for s, q in zip((0, 150), seeds, strict=True)
    ]
    counts = np.concatenate([c for c, _, _ in parts])
    delays = [np.sort(d[e == k, 0]) for c, e, d in parts for k in range(len(c))]

    # Events are told apart by their context (z is continuous); photons by their Δt.
    by_z = np.argsort(table[:, 0])
    order = np.lexsort((rows["dt"], rows["z"]))
    z, photon = rows["z"][order], rows["photon"][order] > 0
    first = np.r_[True, z[1:] != z[:-1]]
    assert first.sum() == 200 and photon.sum() == counts.sum() > 0
    np.testing.assert_allclose(z[first], table[by_z, 0], rtol=1e-12)
    np.testing.assert_allclose(rows["theta"][order][first], table[by_z, 1], rtol=1e-9)
    np.testing.assert_allclose(rows["p"][order][first], table[by_z, 2], rtol=1e-9)
    np.testing.assert_array_equal(rows["n_photons"][order][first], counts[by_z])
    # Δt travels as an absolute float32 time t_hit + Δt: equal up to that rounding.
    expected = np.concatenate([delays[i] for i in by_z])
    np.testing.assert_allclose(rows["dt"][order][photon], expected, atol=4e-6)
    record = read_provenance(files[1])
    assert record["writer"] == "detlearn fastsim" and (record["file"], record["files"]) == (1, 2)


def test_a_rerun_keeps_finished_files_and_writes_the_missing_ones(run, tmp_path):
    files = fastsim(run / "run", tmp_path, events=200, seed=1)
    stamps = [f.stat().st_mtime_ns for f in files]
    files[1].unlink()
    stale = tmp_path / ".fastsim_0001.edm4hep.root.k1lled.tmp"  # what a kill leaves
    stale.write_bytes(b"half a file")
    again = fastsim(run / "run", tmp_path, events=200, seed=1)
    assert not stale.exists()
    assert again == files and again[0].stat().st_mtime_ns == stamps[0]
    assert read_provenance(again[1]) == read_provenance(files[1])
    # Another seed is another job: its files replace these, none is kept.
    fastsim(run / "run", tmp_path, events=200, seed=2)
    assert {read_provenance(f)["seed"] for f in files} == {2}


def test_contexts_from_a_file_give_one_event_per_row(run, tmp_path):
    contexts = {"z": [-500.0, 0.0, 400.0], "theta": [1.57, 1.3, 1.8], "p": [2.0, 5.0, 1.0]}
    pa_csv.write_csv(pa.table(contexts), tmp_path / "ctx.csv")
    files = fastsim(run / "run", tmp_path / "fs", seed=0, contexts=tmp_path / "ctx.csv")
    rows = _prepared(run / "run", tmp_path / "fs", tmp_path / "ds")
    first = np.unique(rows["event"], return_index=True)[1]
    np.testing.assert_allclose(rows["z"][first], contexts["z"], atol=1e-9)
    assert len(files) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({}, "give either --events or --contexts"),
        ({"events": 10, "contexts": "ctx.csv"}, "give either --events or --contexts"),
        ({"events": 0}, "--events must be positive"),
        ({"contexts": "bad.csv"}, "bad.csv: no column 'theta'"),
        ({"contexts": "nan.csv"}, "nan.csv: column 'p' row 1 is not finite"),
    ],
)
def test_bad_requests_are_one_line_errors(run, tmp_path, args, message):
    pa_csv.write_csv(pa.table({"z": [0.0], "p": [1.0]}), tmp_path / "bad.csv")
    pa_csv.write_csv(
        pa.table({"z": [0.0, 1.0], "theta": [1.5, 1.5], "p": [1.0, float("nan")]}),
        tmp_path / "nan.csv",
    )
    if "contexts" in args:
        args = {**args, "contexts": tmp_path / args["contexts"]}
    with pytest.raises(DetlearnError, match=message):
        fastsim(run / "run", tmp_path / "fs", **args)
    assert not list((tmp_path / "fs").glob("*.root")) if (tmp_path / "fs").exists() else True


def test_a_folder_with_other_root_files_is_refused(run, tmp_path, runner):
    (tmp_path / "klm_0000.edm4hep.root").write_bytes(b"")
    result = runner.invoke(app, ["fastsim", str(run / "run"), "-n", "5", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "holds klm_0000.edm4hep.root" in result.output and "empty folder" in result.output


def test_the_simulator_marks_its_files_and_fastsim_needs_a_klm_run(run, tmp_path, runner):
    record = read_provenance(next((run / "sim").glob("*.root")))
    assert record["writer"] == "detlearn simulate" and record["recipe"] == "klm-timing"
    assert record["options"]["events_per_file"] == 150
    (tmp_path / "run.json").write_text((run / "run" / "run.json").read_text())
    result = runner.invoke(app, ["fastsim", str(tmp_path), "-n", "5", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2  # not a whole run: refused in one line
    assert "Traceback" not in result.output


def test_the_closure_compares_fastsim_and_simulator_through_the_reader(run):
    surrogate = Surrogate.load(run / "run")
    rows, summary = closure(surrogate, KLMSimConfig(), 120, seed=2, bins=3)
    assert [r["quantity"] for r in rows][-2:] == [
        "photons per event",
        "first-photon Δt (≥ 5 photons)",
    ]
    assert len(rows) == 5 and all(r["n_sim"] > 0 and r["n_fastsim"] > 0 for r in rows)
    for r in rows:
        unit = "photons" if r["quantity"] == "photons per event" else "ns"
        assert r[f"w1_floor [{unit}]"] > 0
        assert r["pass"] == (r[f"w1 [{unit}]"] <= 2 * r[f"w1_floor [{unit}]"])
    assert summary["closure_pass_fraction"] == np.mean([r["pass"] for r in rows])


def test_the_closure_floor_tells_a_shifted_sample_from_a_second_draw():
    from detlearn.evaluation.metrics import wasserstein1
    from detlearn.recipes.klm_timing.closure import _beside_floor

    rng = np.random.default_rng(0)
    a, b, same = (rng.normal(0, 1, 20_000) for _ in range(3))
    value, floor = _beside_floor(a, same, b, wasserstein1, rng, draws=5)
    assert value < 2 * floor  # a third draw is within the floor
    value, floor = _beside_floor(a, same + 5 * floor, b, wasserstein1, rng, draws=5)
    assert value > 2 * floor
