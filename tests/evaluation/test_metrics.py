"""Statistical tests of the two-sample and density metrics (fixed seeds, tolerances from n)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats
from threadpoolctl import threadpool_limits

from detlearn.errors import DetlearnError
from detlearn.evaluation.metrics import (
    Score,
    auc_null_sigma,
    c2st_auc,
    chi2_two_sample,
    energy_distance,
    kl_from_exact,
    ks_statistic,
    pit_uniformity,
    quantiles_rel_error,
    to_jsonable,
    wasserstein1,
    width68,
    with_baseline,
)

N = 5000


@pytest.fixture(autouse=True)
def _one_openmp_thread():
    # The test machine's 2 cores are shared: OpenMP threads of the boosted trees then wait on
    # each other and a C2ST fit takes ~10× longer than on one thread.
    with threadpool_limits(1):
        yield


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def test_w1_and_ks_consistent_with_null_and_reject_shift(rng):
    a, b = rng.normal(0, 1, (2, N))
    shifted = rng.normal(0.3, 1, N)
    # Null scale of both: the two-sample empirical-CDF difference is ~ sqrt(2/n).
    floor = math.sqrt(2 / N)
    assert wasserstein1(a, b) < 4 * floor
    assert wasserstein1(a, shifted) == pytest.approx(0.3, abs=4 * floor)
    # sqrt(n/2)·KS exceeds 1.95 with probability 0.001 under the null (Kolmogorov).
    assert ks_statistic(a, b) < 1.95 * floor
    assert ks_statistic(a, shifted) > 0.1


@pytest.mark.parametrize("n_b", [N, 3 * N])
def test_chi2_same_distribution_is_consistent_with_ndf(rng, n_b):
    a, b = rng.exponential(2.0, N), rng.exponential(2.0, n_b)
    chi2, ndf = chi2_two_sample(a, b, np.linspace(0, 10, 31))
    assert ndf == 29
    assert abs(chi2 / ndf - 1) < 5 * math.sqrt(2 / ndf)
    chi2_wide, ndf_wide = chi2_two_sample(a, b * 1.3, np.linspace(0, 10, 31))
    assert stats.chi2.sf(chi2_wide, ndf_wide) < 1e-9


def test_ks_statistics_match_scipy(rng):
    a, b = rng.normal(0, 1, 700), rng.normal(0.1, 1.2, 300)
    assert ks_statistic(a, b) == pytest.approx(stats.ks_2samp(a, b).statistic, abs=1e-12)
    u = rng.uniform(0, 1, 500) ** 1.1
    assert pit_uniformity(u)["ks"] == pytest.approx(stats.kstest(u, "uniform").statistic)


def test_chi2_matches_hand_calculation_for_unequal_totals():
    # Counts a = [10, 20, 30] (N_a = 60), b = [20, 20, 40] (N_b = 80) in bins [0,1), [1,2), [2,3].
    a = np.repeat([0.5, 1.5, 2.5], [10, 20, 30])
    b = np.repeat([0.5, 1.5, 2.5], [20, 20, 40])
    expected = ((80 * 10 - 60 * 20) ** 2 / 30 + (80 * 20 - 60 * 20) ** 2 / 40) / (60 * 80)
    chi2, ndf = chi2_two_sample(a, b, [0, 1, 2, 3])
    assert chi2 == pytest.approx(expected)  # 1.9444
    assert ndf == 2


def test_chi2_merges_bins_below_five_combined_counts():
    # Bin 0 has 2 entries combined: merged with bin 1 into (2, 3); a short tail joins the last.
    a = np.repeat([0.5, 1.5, 2.5, 3.5, 4.5], [1, 1, 10, 20, 1])
    b = np.repeat([0.5, 1.5, 2.5, 3.5, 4.5], [1, 2, 10, 20, 0])
    na, nb = np.array([2, 10, 21]), np.array([3, 10, 20])
    tot_a, tot_b = na.sum(), nb.sum()
    expected = np.sum((tot_b * na - tot_a * nb) ** 2 / (na + nb)) / (tot_a * tot_b)
    chi2, ndf = chi2_two_sample(a, b, np.arange(6))
    assert ndf == 2
    assert chi2 == pytest.approx(expected)


def test_chi2_single_merged_bin_has_no_degrees_of_freedom():
    assert chi2_two_sample([0.5, 1.5], [0.5, 1.5], [0, 1, 2]) == (0.0, 0)


def test_chi2_rejects_samples_outside_the_edges():
    with pytest.raises(DetlearnError, match="no entries"):
        chi2_two_sample([5.0, 6.0], [0.5], [0, 1])


def test_pit_of_true_cdf_is_uniform_and_narrow_model_undercovers(rng):
    x = rng.normal(0, 1, 10_000)
    good = pit_uniformity(stats.norm.cdf(x))
    assert good["ks"] < 1.95 / math.sqrt(x.size)
    assert good["ks_expected"] == pytest.approx(0.8687 / 100, rel=1e-3)
    assert abs(good["cov68"] - 0.68) < 4 * good["cov68_sigma"]
    assert abs(good["cov95"] - 0.95) < 4 * good["cov95_sigma"]
    narrow = pit_uniformity(stats.norm.cdf(x, scale=0.8))
    assert narrow["cov68"] < 0.68 - 10 * narrow["cov68_sigma"]
    assert narrow["ks"] > 5 * narrow["ks_expected"]


def test_c2st_identical_is_half_and_shift_is_detected(rng):
    n = 2000
    a, b = rng.normal(0, 1, (2, n, 2))
    assert abs(c2st_auc(a, b, seed=0, folds=2) - 0.5) < 4 * auc_null_sigma(n, n)
    shifted = b + np.array([0.6, 0.0])  # the Bayes-optimal AUC is Φ(0.6/√2) = 0.66
    assert c2st_auc(a, shifted, seed=0, folds=2) > 0.6


def test_c2st_balances_classes_by_subsampling(rng):
    a, b = rng.normal(0, 1, 600), rng.normal(0, 1, 3000)
    assert abs(c2st_auc(a, b, seed=1, folds=2) - 0.5) < 4 * auc_null_sigma(600, 600)


def test_c2st_paired_rows_share_a_fold_so_shared_contexts_do_not_bias_the_auc(rng):
    # Two samples at the SAME contexts: unpaired folds let a tree memorize a context's class
    # and misclassify its twin (AUC ~10σ below 0.5 here); pairs in one fold remove the bias.
    n = 2000
    c = rng.uniform(0, 1, (n, 2))
    t_a, t_b = c[:, 0] + rng.normal(0, 1, (2, n))
    x_a, x_b = np.column_stack([t_a, c]), np.column_stack([t_b, c])
    sigma = auc_null_sigma(n, n)
    assert abs(c2st_auc(x_a, x_b, seed=0, folds=2, paired=True) - 0.5) < 4 * sigma
    assert c2st_auc(x_a, x_b, seed=0, folds=2) < 0.5 - 4 * sigma


def test_kl_of_shifted_gaussians_matches_analytic_value(rng):
    x = rng.normal(0, 1, 20_000)
    kl, err = kl_from_exact(stats.norm.logpdf(x), stats.norm.logpdf(x, loc=0.1))
    assert err == pytest.approx(0.1 / math.sqrt(x.size), rel=0.05)  # sd(log p - log q) = 0.1
    assert abs(kl - 0.1**2 / 2) < 4 * err


def test_kl_rejects_zero_model_density(rng):
    with pytest.raises(DetlearnError, match="non-finite"):
        kl_from_exact(np.zeros(3), np.array([0.0, -np.inf, 0.0]))


def test_energy_distance_equals_scipy_in_1d_and_separates_in_nd(rng):
    a, b = rng.normal(0, 1, (2, 500))
    assert energy_distance(a, b) == pytest.approx(stats.energy_distance(a, b), rel=1e-9)
    assert energy_distance(a, a) == 0.0
    x, y = rng.normal(0, 1, (2, 1500, 3))
    same = energy_distance(x, y, max_n=1000)
    different = energy_distance(x, y + np.array([0.0, 0.0, 0.5]), max_n=1000)
    assert different > 3 * same


def test_quantile_helpers(rng):
    a = rng.normal(0, 2, 20_000)
    assert width68(a) == pytest.approx(2.0, rel=0.03)
    t = rng.exponential(1.0, 20_000) + 5.0
    np.testing.assert_allclose(quantiles_rel_error(t, 1.1 * t), 0.1, rtol=1e-9)


def test_with_baseline_compares_at_equal_sample_size(rng):
    seen = []

    def sizes(a, b):
        seen.append((len(a), len(b)))
        return 1.0 * len(b)

    score = with_baseline(sizes, rng.normal(size=1000), rng.normal(size=400), rng.normal(size=4000))
    assert seen == [(1000, 400), (1000, 400)]
    assert score.name == "sizes" and score.ratio == 1.0


def test_score_ratio_and_json():
    s = Score("w1", 0.2, 0.1, "ns")
    assert s.ratio == pytest.approx(2.0)
    assert Score("kl_mean", 0.01, None, "nats", 0.001).ratio is None
    assert math.isnan(Score("w1", 0.0, 0.0).ratio)
    assert Score("w1", 0.1, 0.0).ratio == math.inf
    d = Score("w1", 0.1, 0.0).to_dict()
    assert d["ratio"] is None  # strict JSON has no inf
    json.dumps(d, allow_nan=False)


def test_to_jsonable_makes_strict_json():
    obj = {"a": np.float32(1.5), "b": np.int64(3), "c": [np.nan, np.inf], "d": np.array([1, 2])}
    out = to_jsonable(obj)
    assert out == {"a": 1.5, "b": 3, "c": [None, None], "d": [1, 2]}
    json.dumps(out, allow_nan=False)
