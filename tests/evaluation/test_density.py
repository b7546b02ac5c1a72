"""End-to-end tests of the binned conditional-density validation on a synthetic 'simulator'."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats
from threadpoolctl import threadpool_limits

from detlearn.errors import DetlearnError
from detlearn.evaluation.density import context_bin_masks, validate_conditional
from detlearn.evaluation.metrics import Score

N = 8000
BINS = {"z": np.linspace(0, 100, 11), "theta": np.linspace(0.2, 1.2, 5)}
SHIFTED_BIN = 3  # z in [30, 40)


@pytest.fixture(autouse=True)
def _one_openmp_thread():
    # Shared 2-core machine: OpenMP threads of the C2ST's boosted trees would wait on each other.
    with threadpool_limits(1):
        yield


def _simulate(rng, z, theta, shift=0.0):
    """Δt = z/20 + Gamma(3, scale 1 + θ) [ns]: a delay growing with z, a width with θ."""
    return z / 20 + rng.gamma(3.0, 1.0 + theta) + shift


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    z, theta = rng.uniform(0, 100, N), rng.uniform(0.2, 1.2, N)
    sim, sim2, model = (_simulate(rng, z, theta) for _ in range(3))
    in_bin = (z >= 30) & (z < 40)
    bad = model + np.where(in_bin, 1.0, 0.0)
    logp = stats.gamma.logpdf(sim - z / 20, 3.0, scale=1.0 + theta)
    return {
        "sim": sim,
        "sim2": sim2,
        "model": model,
        "bad": bad,
        "ctx": np.column_stack([z, theta]),
        "logp": logp,
        "pit": stats.gamma.cdf(sim - z / 20, 3.0, scale=1.0 + theta),
    }


def _validate(d, model, **kw):
    return validate_conditional(
        d["sim"], d["ctx"], model, d["sim2"], ["z", "theta"], BINS,
        c2st_folds=2, c2st_max_n=3000, **kw,
    )  # fmt: skip


def test_model_equal_to_simulation_scores_like_simulation(data):
    res = _validate(data, data["model"], pit=data["pit"], log_p_true=data["logp"],
                    log_q_model=data["logp"])  # fmt: skip
    assert [(r["variable"], r["bin"]) for r in res.rows][:2] == [("z", 0), ("z", 1)]
    assert len(res.rows) == 10 + 4
    ratios = np.array([r["w1_ratio"] for r in res.rows])
    assert 0.6 < np.median(ratios) < 1.6
    assert res.summary["w1_pass_fraction"] == 1.0  # ~1–2 % of bins fail by chance (see docs)
    auc = res.summary["c2st_auc"]
    assert abs(auc.value - 0.5) < 4 * auc.error
    assert abs(auc.baseline - 0.5) < 4 * auc.error
    assert res.summary["kl_mean"].value == 0.0
    assert res.summary["pit_ks"].ratio < 3
    for r in res.rows:
        # Same distribution and same events: model and sim2 χ² are both ~ndf.
        assert abs(r["chi2_ndf"] - 1) < 5 * np.sqrt(2 / r["ndf"])
        assert abs(r["cov68"] - 0.68) < 5 * np.sqrt(0.68 * 0.32 / r["n"])


def test_shift_in_one_z_bin_is_flagged_in_that_bin(data):
    res = _validate(data, data["bad"])
    z_rows = [r for r in res.rows if r["variable"] == "z"]
    flagged = z_rows[SHIFTED_BIN]
    assert not flagged["w1_ok"]
    assert flagged["w1_ratio"] > 3
    assert flagged["w1"] == pytest.approx(1.0, abs=0.2)  # W1 of a pure shift is the shift
    assert max(z_rows, key=lambda r: r["w1_ratio"]) is flagged
    assert all(r["w1_ok"] for r in z_rows if r is not flagged)
    assert res.summary["w1_ratio_max"] == flagged["w1_ratio"]


def test_kl_and_pit_are_per_bin_and_global(data):
    scale = 1.0 + data["ctx"][:, 1]
    logq = stats.gamma.logpdf(data["sim"] - data["ctx"][:, 0] / 20, 3.0, scale=1.1 * scale)
    res = _validate(data, data["model"], log_p_true=data["logp"], log_q_model=logq)
    # KL(Γ(k, θ) ∥ Γ(k, 1.1θ)) = k (1/1.1 − 1 + ln 1.1), the same in every context.
    expected = 3.0 * (1 / 1.1 - 1 + np.log(1.1))
    kl = res.summary["kl_mean"]
    assert kl.unit == "nats"
    assert abs(kl.value - expected) < 4 * kl.error
    for r in res.rows:
        assert abs(r["kl"] - expected) < 4 * r["kl_error"]
    assert "pit_ks" not in res.rows[0]


def test_unphysical_fraction_against_lower_bound(data):
    model = data["model"].copy()
    model[:80] = -1.0
    res = _validate(data, model, lower=0.0)
    frac = res.summary["unphysical_fraction"]
    assert isinstance(frac, Score)
    assert frac.value == pytest.approx(80 / N)
    assert frac.baseline == 0.0


def test_sparse_bins_get_nan_metrics_and_json_is_strict(data):
    bins = {"z": [0.0, 50.0, 100.0, 200.0]}  # no events above 100
    res = validate_conditional(
        data["sim"], data["ctx"], data["model"], data["sim2"], ["z", "theta"], bins,
        c2st_folds=2, c2st_max_n=1000,
    )  # fmt: skip
    empty = res.rows[-1]
    assert empty["n"] == 0 and empty["w1_ok"] is None and np.isnan(empty["w1"])
    out = json.loads(json.dumps(res.to_dict(), allow_nan=False))
    assert out["rows"][-1]["w1"] is None
    assert out["summary"]["c2st_auc"]["name"] == "c2st_auc"
    assert out["unit"] == "ns"


def test_inputs_are_checked(data):
    with pytest.raises(DetlearnError, match="target_sim2 has 10 rows"):
        validate_conditional(data["sim"], data["ctx"], data["model"], data["sim2"][:10],
                             ["z", "theta"], BINS)  # fmt: skip
    with pytest.raises(DetlearnError, match="unknown context 'p'"):
        validate_conditional(data["sim"], data["ctx"], data["model"], data["sim2"],
                             ["z", "theta"], {"p": [0, 1]})  # fmt: skip
    with pytest.raises(DetlearnError, match="2 columns but 1 context_names"):
        validate_conditional(data["sim"], data["ctx"], data["model"], data["sim2"], ["z"], BINS)


def test_context_bin_masks_include_last_edge_only():
    masks = context_bin_masks(np.array([-1.0, 0.0, 0.5, 1.0, 2.0, 2.5]), [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(masks[0], [False, True, True, False, False, False])
    np.testing.assert_array_equal(masks[1], [False, False, False, True, True, False])
    with pytest.raises(DetlearnError, match="increasing"):
        context_bin_masks(np.zeros(3), [1.0, 0.0])
