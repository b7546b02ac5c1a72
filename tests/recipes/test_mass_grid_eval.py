"""mass-grid validation: held-out grid points never reach training, and are what evaluate scores."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

import detlearn.runs.surrogate
from detlearn.config import deep_merge, validate_config
from detlearn.data.holdout import checkerboard, holdout_mask
from detlearn.data.selection import SparseLabelWarning
from detlearn.errors import DetlearnError
from detlearn.families import train
from detlearn.io.dataset import Dataset
from detlearn.prepare import prepare
from detlearn.recipes import get_recipe
from detlearn.recipes.mass_grid import MassGridConfig, evaluate, grid_points, simulate
from detlearn.recipes.mass_grid.evaluate import compare_at_label
from detlearn.runs import ContextRangeWarning, Surrogate

# A 4 x 4 grid (m_Φ 100 … 1870 GeV, m_ω 0.25 … 3.175 GeV) where every event passes the selection.
SIMULATE = {"phi_points": 4, "omega_points": 4, "acceptance_max": 1.0, "acceptance_scale": 1.0}
CHECKERBOARD = [[690.0, 1.225], [1280.0, 2.2]]
CONTEXT = ["label_phi", "label_omega"]


def _config(tmp, **overrides):
    raw = deep_merge(
        get_recipe("mass-grid").default_config(),
        {
            "simulate": SIMULATE,
            "data": {"inputs": [str(tmp / "sim" / "*.root")]},
            "executor": {"workers": 1},
            "model": {"flow": {"transforms": 2, "hidden": [16, 16], "bins": 6}},
            "training": {"batch_size": 512, "max_epochs": 1},
            "evaluation": {"options": {"samples": 2000, "bootstrap": 4, "panels": 1}},
        },
    )
    return validate_config(deep_merge(raw, overrides))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The recipe defaults (checkerboard holdout) on the 4 x 4 grid; records what fit() saw."""
    tmp = tmp_path_factory.mktemp("mass_grid")
    cfg = _config(tmp)
    simulate(tmp / "sim", 250, 0, cfg.simulate)
    prepare(cfg, tmp / "ds", progress=False)
    seen = {}
    real_fit = detlearn.runs.surrogate.fit

    def recording_fit(model, train_data, val_data, *args, **kwargs):
        seen[type(model).__name__] = (train_data[1].numpy(), val_data[1].numpy())
        return real_fit(model, train_data, val_data, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(detlearn.runs.surrogate, "fit", recording_fit)
        train(cfg, tmp / "ds", tmp / "run", progress=False)
    return tmp, seen["ConditionalFlow"]


def test_default_holdout_is_the_interior_checkerboard_of_the_fedhex_grid():
    grid = grid_points(MassGridConfig())
    held = checkerboard(grid, CONTEXT)
    assert len(held) == 32
    # Every held-out point keeps its four grid neighbours in training.
    step = np.array([590.0, 0.975])
    for point in held:
        for d in ([1, 0], [-1, 0], [0, 1], [0, -1]):
            neighbour = point + np.array(d) * step
            assert holdout_mask(grid, neighbour[None]).sum() == 1
            assert not holdout_mask(neighbour[None], held).any()


def test_heldout_rows_never_reach_training(trained):
    tmp, (train_ctx, val_ctx) = trained
    info = json.loads((tmp / "run" / "run.json").read_text())
    assert info["holdout"]["columns"] == CONTEXT
    np.testing.assert_allclose(info["holdout"]["points"], CHECKERBOARD)
    for ctx in (train_ctx, val_ctx):
        assert not holdout_mask(ctx, np.array(CHECKERBOARD)).any()
    # The dataset does hold rows at those labels: they were dropped, not absent.
    ds = Dataset.open(tmp / "ds")
    for split, ctx in (("train", train_ctx), ("val", val_ctx)):
        rows = ds.load(CONTEXT, split=split)
        at = holdout_mask(np.stack([rows[c] for c in CONTEXT], 1), np.array(CHECKERBOARD))
        assert at.sum() == info["holdout"]["rows_held_out"][split] > 0
        assert len(ctx) == len(at) - at.sum()


def test_evaluate_scores_exactly_the_heldout_labels(trained):
    tmp, _ = trained
    report = evaluate(tmp / "run", tmp / "report")
    assert report == tmp / "report" / "report.html" and report.is_file()
    metrics = json.loads((tmp / "report" / "metrics.json").read_text())
    per_point, per_quantile = (t["rows"] for t in metrics["tables"])
    labels = [[r["label_phi"], r["label_omega"]] for r in per_point]
    np.testing.assert_allclose(labels, CHECKERBOARD)
    assert all(r["interior"] for r in per_point) and len(per_quantile) == 2 * len(labels)
    assert set(metrics["checks"]) == {"mean_pass_fraction", "width_pass_fraction"}
    for r in per_point:
        for f in ("phi", "omega"):
            assert r[f"width_{f}_floor"] > 0 and r[f"mean_{f}_floor"] > 0
            assert r[f"width_{f}_data"] > 0 and r[f"mean_{f}_data"] > 0
        assert r["energy_sim2"] > 0 and r["kl_error"] > 0
    assert metrics["metrics"]["samples_per_point"] == 2000
    assert metrics["metrics"]["labels_left_out"] == 0
    # The map of the errors over the grid, FEDHEX panels and marginals (panels: 1), the loss.
    figures = {f["file"] for f in metrics["figures"]}
    assert figures == {"error_maps.png", "panels_000.png", "marginals_000.png", "loss.png"}
    for name in figures:
        assert (tmp / "report" / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The data spread is measured with as many events as training held out at each label.
    info = json.loads((tmp / "run" / "run.json").read_text())
    assert sum(r["train_rows"] for r in per_point) == info["holdout"]["rows_held_out"]["train"]
    assert 0 <= metrics["metrics"]["width_within_data_fraction"] <= 1


def test_a_points_score_does_not_depend_on_whether_the_data_spread_is_computed(trained):
    """Same model, label and seed, scored with and without the training rows at the label: the
    errors and floors (hence the judgement) are the same; only the data spread is added."""
    tmp, _ = trained
    s = Surrogate.load(tmp / "run")
    sim_cfg = MassGridConfig(**SIMULATE)
    label = np.array(CHECKERBOARD[0])
    without, _, _ = compare_at_label(s, sim_cfg, label, 2000, bootstrap=4)
    with_data, _, _ = compare_at_label(s, sim_cfg, label, 2000, bootstrap=4, train_rows=300)
    assert with_data.keys() - without.keys() == {
        f"{st}_{f}_data" for st in ("mean", "width") for f in ("phi", "omega")
    }
    for key, value in without.items():
        assert with_data[key] == value, key


def test_same_seed_same_samples_after_reload_at_a_heldout_label(trained):
    tmp, _ = trained
    label = dict(zip(CONTEXT, CHECKERBOARD[0], strict=True))
    a = Surrogate.load(tmp / "run").sample(label, 500, seed=7)
    b = Surrogate.load(tmp / "run").sample(label, 500, seed=7)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (1, 500, 2) and (a[..., 0] > 0).all() and (a[..., 1] > 0.415).all()


def test_generation_outside_the_grid_warns_that_it_extrapolates(trained):
    tmp, _ = trained
    s = Surrogate.load(tmp / "run")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s.sample(dict(zip(CONTEXT, CHECKERBOARD[1], strict=True)), 10, seed=0)
    with pytest.warns(ContextRangeWarning, match=r"label_phi in \[100, 1870\].*extrapolates"):
        s.sample({"label_phi": 2500.0, "label_omega": 1.225}, 10, seed=0)


def test_a_label_outside_the_hull_of_the_training_labels_warns_inside_their_range(trained):
    """The corner (1870, 3.175) GeV held out: the training labels span the whole box of the
    4 x 4 grid, but no longer the corner triangle beyond (1280, 3.175)-(1870, 2.2)."""
    tmp, _ = trained
    corner = _config(tmp, split={"holdout": {"columns": CONTEXT, "points": [[1870.0, 3.175]]}})
    train(corner, tmp / "ds", tmp / "corner", progress=False)
    s = Surrogate.load(tmp / "corner")
    assert len(s.info.context_labels) == 15
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # Inside the hull, and on its new edge.
        s.sample({"label_phi": [1500.0, 1280.0], "label_omega": [2.5, 3.175]}, 10, seed=0)
    message = r"50\.0% of contexts lie inside .* outside the convex hull of the 15 training labels"
    with pytest.warns(ContextRangeWarning, match=message):
        s.sample({"label_phi": [1800.0, 1500.0], "label_omega": [3.1, 2.5]}, 10, seed=0)


class _Stop(Exception):
    """Raised by a stand-in for fit(): the test needs what train() would fit on, not a fit."""


@pytest.mark.parametrize(
    ("holdout", "absent"),
    [
        ({"columns": CONTEXT, "points": [[690.0, 2.2]]}, [[690.0, 2.2]]),
        ({"columns": ["label_phi"], "points": [[1280.0]]}, [[1280.0, m] for m in (0.25, 2.2)]),
    ],
)
def test_explicit_holdout_points_and_whole_grid_rows(trained, monkeypatch, holdout, absent):
    tmp, _ = trained
    seen = []

    def stop(model, train_data, val_data, *args, **kwargs):
        seen.extend([train_data[1].numpy(), val_data[1].numpy()])
        raise _Stop

    monkeypatch.setattr(detlearn.runs.surrogate, "fit", stop)
    with pytest.raises(_Stop):
        train(_config(tmp, split={"holdout": holdout}), tmp / "ds", tmp / "x", progress=False)
    for ctx in seen:
        assert not holdout_mask(ctx, np.array(absent)).any()
        assert holdout_mask(ctx, np.array([[690.0, 1.225]])).any()


def test_checkerboard_needs_a_grid_with_an_interior():
    with pytest.raises(DetlearnError, match=r"the 2 x 5 grid .* has no interior point"):
        checkerboard(np.array([[a, b] for a in (0, 1) for b in range(5)], float), CONTEXT)
    continuous = np.random.default_rng(0).uniform(size=(5000, 1))
    with pytest.raises(DetlearnError, match=r"column 'z' has \d+ distinct values, not a grid"):
        checkerboard(continuous, ["z"])


@pytest.mark.parametrize(
    ("split", "message"),
    [
        (
            {"holdout": {"columns": ["phi"], "points": [[600.0]]}},
            "split.holdout: column 'phi' is not a context column",
        ),
        (
            {"holdout": {"columns": ["mass"], "points": [[600.0]]}},
            "split.holdout: column 'mass' is not a context column",
        ),
        (
            {"holdout": {"columns": CONTEXT, "points": [[690.0, 1.3]]}},
            r"point \{'label_phi': 690.0, 'label_omega': 1.3\} matches no train or val row",
        ),
        (
            {"min_label_rows": {"columns": ["phi"], "rows": 5}},
            "split.min_label_rows: column 'phi' is not a context column",
        ),
        (
            {"min_label_rows": {"columns": CONTEXT, "rows": 10**6}},
            r"split.min_label_rows leaves the 'train' split of .* empty: 16 label\(s\) of "
            r"\['label_phi', 'label_omega'\] have fewer than 1000000 rows, the most \d+",
        ),
    ],
)
def test_a_bad_holdout_or_min_label_rows_is_an_error(trained, split, message):
    tmp, _ = trained
    cfg = _config(tmp, split=split)
    with pytest.raises(DetlearnError, match=message):
        train(cfg, tmp / "ds", tmp / "bad_run", progress=False)


def test_labels_with_too_few_rows_are_left_out_and_reported(tmp_path):
    """The default acceptance falls at low m_Φ: of 1500 events per point the m_Φ = 100 GeV
    labels keep ~14 rows each, the others >= ~70 (all splits together)."""
    cfg = _config(
        tmp_path,
        simulate={"acceptance_max": 0.08, "acceptance_scale": 800.0},
        split={"min_label_rows": {"columns": CONTEXT, "rows": 40}},
    )
    simulate(tmp_path / "sim", 1500, 0, cfg.simulate)
    prepare(cfg, tmp_path / "ds", progress=False)
    message = (
        r"4 label\(s\) of \['label_phi', 'label_omega'\] with fewer than 40 rows left out of "
        r"training \(rows per label\): \(100, 0.25\): \d+, \(100, 1.225\)"
    )
    with pytest.warns(SparseLabelWarning, match=message):
        train(cfg, tmp_path / "ds", tmp_path / "run", progress=False)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    record = info["sparse_labels"]
    assert record["labels"] == [[100.0, m] for m in (0.25, 1.225, 2.2, 3.175)]
    everything = Dataset.open(tmp_path / "ds").load(CONTEXT)
    values = np.stack([everything[c] for c in CONTEXT], 1)
    for label, rows in zip(record["labels"], record["rows"], strict=True):
        assert holdout_mask(values, np.array([label])).sum() == rows < 40
    assert (values[:, 0] > 100).sum() == len(values) - sum(record["rows"])
    # Trained on the 3 x 4 grid left, and the checkerboard is that grid's.
    assert info["context"][0]["min"] == 690.0
    assert info["holdout"]["points"] == [[1280.0, 1.225]]
    evaluate(tmp_path / "run", tmp_path / "report")
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())["metrics"]
    assert metrics["labels_left_out"] == 4 and metrics["heldout_points"] == 1


def test_constant_condition_column_is_an_error(tmp_path):
    cfg = _config(tmp_path, simulate={"omega_points": 1}, split={"holdout": None})
    simulate(tmp_path / "sim", 100, 0, cfg.simulate)
    prepare(cfg, tmp_path / "ds", progress=False)
    with pytest.raises(DetlearnError, match="context column 'label_omega' is constant"):
        train(cfg, tmp_path / "ds", tmp_path / "run", progress=False)


def test_evaluate_needs_a_holdout(trained, tmp_path):
    tmp, _ = trained
    info = json.loads((tmp / "run" / "run.json").read_text())
    run = tmp_path / "run"
    run.mkdir()
    (run / "flow").symlink_to(tmp / "run" / "flow")
    (run / "run.json").write_text(json.dumps({**info, "holdout": None}))
    with pytest.raises(DetlearnError, match=r"trained without split\.holdout"):
        evaluate(run, tmp_path / "report")


def test_the_floor_lets_the_simulator_pass_every_check_at_once():
    # "Every held-out point within the floor" is one claim over many checks: the simulator
    # against itself must pass all of them at once ~95 % of the time. A per-check 95 % floor
    # (z ~ 2) lets it pass all 16 far less often. 80 groups of 16 width checks, sim vs sim2
    # at one label, each floor from 20 bootstrap resamples, as evaluate computes it.
    from detlearn.evaluation.floors import floor_z, statistical_floor
    from detlearn.evaluation.metrics import width68
    from detlearn.recipes.mass_grid.density import sample_reco

    rng = np.random.default_rng(3)
    cfg, label = MassGridConfig(), np.full((2000, 2), [2460.0, 5.125])
    checks, groups, resamples = 16, 80, 20
    ratios = np.empty((groups, checks))  # |sim2 - sim| / (√2 σ_boot), per check
    for g in range(groups):
        for c in range(checks):
            a, b = (sample_reco(label, cfg, rng)[:, c % 2] for _ in range(2))
            unit = statistical_floor(a, width68, resamples, rng, z=1.0)
            ratios[g, c] = abs(width68(b) / width68(a) - 1.0) / unit
    all_at_once = np.mean((ratios <= floor_z(checks, resamples)).all(axis=1))
    per_check = np.mean((ratios <= 2.0).all(axis=1))
    slack = 3.0 * np.sqrt(0.95 * 0.05 / groups)  # three binomial standard deviations
    assert all_at_once >= 0.95 - slack, (all_at_once, per_check)
    assert per_check < 0.95 - slack, (all_at_once, per_check)
