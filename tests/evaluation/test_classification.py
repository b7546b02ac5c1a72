"""ROC toolkit: exact against scikit-learn, statistically right on Gaussians, honest when the
sample cannot decide a working point (fixed seeds, tolerances from the sample sizes)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from detlearn.errors import DetlearnError
from detlearn.evaluation.classification import (
    auc,
    auc_interval,
    mean_working_point_interval,
    min_misclassification_point,
    roc_curve,
    summarize,
    working_point,
    working_point_interval,
)
from detlearn.evaluation.metrics import auc_null_sigma

DMU = 2.0  # signal ~ N(+1, 1), background ~ N(-1, 1): AUC = Φ(Δμ/√2)
TRUE_AUC = stats.norm.cdf(DMU / math.sqrt(2))


def gaussians(n_s, n_b, seed):
    rng = np.random.default_rng(seed)
    scores = np.concatenate([rng.normal(DMU / 2, 1, n_s), rng.normal(-DMU / 2, 1, n_b)])
    return scores, np.repeat([1, 0], [n_s, n_b])


def hanley_mcneil_sigma(a, n_s, n_b):
    q1, q2 = a / (2 - a), 2 * a**2 / (1 + a)
    return math.sqrt(
        (a * (1 - a) + (n_s - 1) * (q1 - a**2) + (n_b - 1) * (q2 - a**2)) / (n_s * n_b)
    )


def samples(kind, seed=0):
    """(scores, labels, weights) of each flavour the toolkit must get exactly right."""
    rng = np.random.default_rng(seed)
    n = 3000
    labels = (rng.uniform(size=n) < 0.3).astype(int)
    scores = rng.normal(labels * 1.2, 1.0)
    weights = None
    if kind in ("ties", "weighted_ties"):
        scores = np.round(scores, 1)  # ~60 distinct values for 3000 events
    if kind in ("weighted", "weighted_ties"):
        weights = rng.uniform(0.1, 3.0, n)
    if kind == "negative_weights":  # NLO-style: a few events count negatively
        weights = np.where(rng.uniform(size=n) < 0.1, -0.5, 1.0)
    return scores, labels, weights


KINDS = ["plain", "ties", "weighted", "weighted_ties", "negative_weights"]


@pytest.mark.parametrize("kind", KINDS)
def test_roc_curve_equals_sklearn_at_every_distinct_threshold(kind):
    scores, labels, weights = samples(kind)
    roc = roc_curve(scores, labels, weights)
    fpr, tpr, thr = skm.roc_curve(labels, scores, sample_weight=weights, drop_intermediate=False)
    np.testing.assert_array_equal(roc.thresholds, thr)
    np.testing.assert_allclose(roc.eff_s, tpr, rtol=0, atol=1e-12)
    np.testing.assert_allclose(roc.eff_b, fpr, rtol=0, atol=1e-12)
    w = np.ones(len(scores)) if weights is None else weights
    assert roc.signal_pass[-1] == pytest.approx(w[labels == 1].sum())
    assert roc.background_pass[-1] == pytest.approx(w[labels == 0].sum())


@pytest.mark.parametrize("kind", KINDS)
def test_auc_equals_sklearn(kind):
    scores, labels, weights = samples(kind)
    if kind == "negative_weights":  # roc_auc_score refuses a non-monotone fpr: integrate it
        fpr, tpr, _ = skm.roc_curve(labels, scores, sample_weight=weights)
        expected = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1])) / 2)
    else:
        expected = skm.roc_auc_score(labels, scores, sample_weight=weights)
    assert auc(scores, labels, weights) == pytest.approx(expected, rel=0, abs=1e-12)


def test_auc_is_the_mann_whitney_pair_count_with_ties_half():
    rng = np.random.default_rng(3)
    labels = np.repeat([1, 0], [40, 60])
    scores = rng.integers(0, 6, 100).astype(float)
    w = rng.uniform(0.5, 2.0, 100)
    s, b = scores[labels == 1], scores[labels == 0]
    ws, wb = w[labels == 1], w[labels == 0]
    pair = (s[:, None] > b[None, :]) + 0.5 * (s[:, None] == b[None, :])
    expected = np.sum(ws[:, None] * wb[None, :] * pair) / (ws.sum() * wb.sum())
    assert auc(scores, labels, w) == pytest.approx(expected, abs=1e-12)
    assert auc([0.9, 0.8, 0.8, 0.1], [1, 1, 0, 0]) == 0.875


def test_roc_runs_from_keep_nothing_to_keep_everything_one_point_per_distinct_score():
    scores, labels, _ = samples("ties")
    roc = roc_curve(scores, labels)
    assert roc.thresholds[0] == np.inf and (roc.eff_s[0], roc.eff_b[0]) == (0.0, 0.0)
    assert (roc.eff_s[-1], roc.eff_b[-1]) == (1.0, 1.0)
    assert roc.thresholds.size == np.unique(scores).size + 1
    assert np.all(np.diff(roc.thresholds) < 0)
    assert np.all(np.diff(roc.eff_s) >= 0) and np.all(np.diff(roc.eff_b) >= 0)
    assert roc.rejection[0] == np.inf and roc.rejection[-1] == 1.0


def test_integer_weights_are_repeated_events():
    scores, labels, _ = samples("ties", seed=4)
    k = np.random.default_rng(4).integers(1, 4, scores.size)
    rep_scores, rep_labels = np.repeat(scores, k), np.repeat(labels, k)
    assert auc(scores, labels, k) == pytest.approx(auc(rep_scores, rep_labels), abs=1e-12)
    a = working_point(scores, labels, 0.05, weights=k)
    b = working_point(rep_scores, rep_labels, 0.05)
    assert (a.threshold, a.eff_s, a.eff_b) == pytest.approx((b.threshold, b.eff_s, b.eff_b))


def test_perfect_inverted_and_random_classifiers():
    labels = np.repeat([1, 0], 500)
    assert auc(np.linspace(1, 0, 1000), labels) == 1.0
    assert auc(np.linspace(0, 1, 1000), labels) == 0.0
    assert auc(np.full(1000, 0.5), labels) == 0.5  # one tie: every pair counts half
    n_s, n_b = 4000, 6000
    rng = np.random.default_rng(5)
    random = auc(rng.uniform(size=n_s + n_b), np.repeat([1, 0], [n_s, n_b]))
    assert abs(random - 0.5) < 4 * auc_null_sigma(n_s, n_b)


def test_auc_interval_covers_the_true_auc_at_its_level():
    # 100 independent test sets: the 68 % interval should hold Φ(Δμ/√2) in ~68 of them.
    reps, n = 100, 300
    covered = 0
    for r in range(reps):
        scores, labels = gaussians(n, n, seed=100 + r)
        a, lo, hi = auc_interval(scores, labels, resamples=100, seed=r)
        assert lo < a < hi
        covered += lo <= TRUE_AUC <= hi
    assert abs(covered / reps - 0.68) < 4 * math.sqrt(0.68 * 0.32 / reps)


def test_auc_interval_is_the_hanley_mcneil_sigma_and_shrinks_as_one_over_root_n():
    half = {}
    for n in (1000, 4000):
        scores, labels = gaussians(n, n, seed=n)
        a, lo, hi = auc_interval(scores, labels, resamples=400, seed=1)
        assert abs(a - TRUE_AUC) < 4 * hanley_mcneil_sigma(TRUE_AUC, n, n)
        half[n] = (hi - lo) / 2
        # The 16-84 % quantiles of 400 resamples carry ~10 % relative noise; Hanley–McNeil's
        # exponential model is ~10 % above the binormal truth (the bootstrap matches DeLong's).
        assert half[n] == pytest.approx(hanley_mcneil_sigma(TRUE_AUC, n, n), rel=0.25)
    assert half[1000] / half[4000] == pytest.approx(2.0, rel=0.25)


def test_auc_interval_is_reproducible_with_its_seed():
    scores, labels = gaussians(500, 500, seed=6)
    assert auc_interval(scores, labels, seed=3) == auc_interval(scores, labels, seed=3)
    assert auc_interval(scores, labels, seed=3) != auc_interval(scores, labels, seed=4)


@pytest.mark.parametrize("target", [0.1, 0.01, 0.001])
def test_working_point_on_gaussians_matches_the_analytic_efficiencies_at_its_cut(target):
    n = 100_000
    scores, labels = gaussians(n, n, seed=7)
    wp = working_point(scores, labels, target)
    assert wp.resolved and wp.eff_b_target == target
    # Loosest cut with eff_b ≤ target: continuous scores land it within one event of target.
    assert target - 1 / n < wp.eff_b <= target
    bkg = np.sort(scores[labels == 0])[::-1]
    assert np.mean(bkg >= wp.threshold) == wp.eff_b
    looser = np.max(scores[scores < wp.threshold])
    assert np.mean(bkg >= looser) > target
    true_s = stats.norm.sf(wp.threshold - DMU / 2)
    true_b = stats.norm.sf(wp.threshold + DMU / 2)
    assert abs(wp.eff_s - true_s) < 4 * math.sqrt(true_s * (1 - true_s) / n)
    assert abs(wp.eff_b - true_b) < 4 * math.sqrt(true_b * (1 - true_b) / n)
    assert wp.eff_s_err == pytest.approx(math.sqrt(wp.eff_s * (1 - wp.eff_s) / n))
    assert wp.rejection == pytest.approx(1 / wp.eff_b)
    assert (wp.signal_pass, wp.background_pass) == (wp.eff_s * n, wp.eff_b * n)
    assert wp.misclassification == pytest.approx((wp.background_pass + n - wp.signal_pass) / 2 / n)


def test_working_point_interval_covers_the_population_eff_s_and_exceeds_the_binomial_error():
    # The population working point: the cut at which exactly `target` of the background passes.
    target, n, reps = 1e-2, 2000, 80
    true = stats.norm.sf(-DMU / 2 + stats.norm.isf(target) - DMU / 2)
    covered, estimates, halves, binomial = 0, [], [], []
    for r in range(reps):
        scores, labels = gaussians(n, n, seed=200 + r)
        e, lo, hi = working_point_interval(scores, labels, target, resamples=100, seed=r)
        assert e == working_point(scores, labels, target).eff_s and lo <= e <= hi
        covered += lo <= true <= hi
        estimates.append(e)
        halves.append((hi - lo) / 2)
        binomial.append(working_point(scores, labels, target).eff_s_err)
    assert abs(covered / reps - 0.68) < 4 * math.sqrt(0.68 * 0.32 / reps)
    spread = np.std(estimates, ddof=1)  # ~8 % relative noise from 80 replicas
    assert np.mean(halves) == pytest.approx(spread, rel=0.3)
    # Where the cut falls matters more than the binomial count of signal at a fixed cut.
    assert np.mean(halves) > 1.5 * np.mean(binomial)


def _shared_background_samples(seed, shifts=(0.0, 0.5, 1.0), n_s=1000, n_b=3000):
    """Signal samples N(1 + shift, 1) that share one N(-1, 1) background, scored per sample
    with a sample-dependent offset (as a mass hypothesis would)."""
    rng = np.random.default_rng(seed)
    bkg = rng.normal(-1.0, 1.0, n_b)
    return [(rng.normal(1.0 + d, 1.0, n_s), bkg + 0.1 * d) for d in shifts]


def test_mean_working_point_interval_is_the_spread_of_the_mean_over_new_samples():
    target, reps = 1e-2, 60
    means, halves = [], []
    for r in range(reps):
        samples = _shared_background_samples(300 + r)
        m, lo, hi = mean_working_point_interval(samples, target, resamples=100, seed=r)
        each = [working_point(*_scored(sig, bkg), target).eff_s for sig, bkg in samples]
        assert m == pytest.approx(np.mean(each)) and lo <= m <= hi
        means.append(m)
        halves.append((hi - lo) / 2)
    spread = np.std(means, ddof=1)  # ~9 % relative noise from 60 replicas
    assert np.mean(halves) == pytest.approx(spread, rel=0.3)
    # The mean of the per-sample half-widths (errors taken as fully correlated) is wider:
    # the signal samples are independent, only the background is shared.
    samples = _shared_background_samples(7, n_s=300)
    per_sample = [working_point_interval(*_scored(sig, bkg), target) for sig, bkg in samples]
    m, lo, hi = mean_working_point_interval(samples, target)
    assert (hi - lo) / 2 < 0.9 * np.mean([(h - lo_) / 2 for _, lo_, h in per_sample])


def test_mean_working_point_interval_refuses_backgrounds_of_other_events():
    (sig, bkg), *_ = _shared_background_samples(1)
    with pytest.raises(DetlearnError, match="the same 3000 events, got 2999"):
        mean_working_point_interval([(sig, bkg), (sig, bkg[1:])], 1e-2)
    assert all(math.isnan(x) for x in mean_working_point_interval([(sig, bkg)], 1e-4))


def _scored(sig, bkg):
    return np.concatenate([sig, bkg]), np.concatenate([np.ones(len(sig)), np.zeros(len(bkg))])


def test_unresolved_target_gives_nan_numbers_and_says_how_many_events_it_needs():
    scores, labels = gaussians(5000, 5000, seed=8)
    wp = working_point(scores, labels, 1e-4)
    assert wp.resolved is False
    numbers = (wp.threshold, wp.eff_s, wp.eff_s_err, wp.eff_b, wp.rejection, wp.purity)
    assert all(math.isnan(x) for x in (*numbers, wp.signal_pass, wp.background_pass))
    assert wp.note == "needs ≥ 10 background events passing: 1e-4 × 5,000 background events = 0.5"
    assert all(math.isnan(x) for x in working_point_interval(scores, labels, 1e-4))
    assert working_point(scores, labels, 1e-4, min_background=0.5).resolved


def test_resolution_boundary_is_n_background_times_target_equal_min_background():
    scores, labels = gaussians(1000, 1000, seed=9)
    assert working_point(scores, labels, 1e-2).resolved  # 1000 × 1e-2 = 10
    assert not working_point(scores, labels, 0.99e-2).resolved
    wp = working_point(scores, labels, 1e-2, min_background=20)
    assert "needs ≥ 20 background events passing: 1e-2 × 1,000 background events = 10" == wp.note


def test_weighted_resolution_counts_kish_effective_events():
    scores, labels = gaussians(1000, 1000, seed=10)
    w = np.where(np.arange(2000) % 2 == 0, 1.0, 3.0)  # Kish: (2000)² / (500 + 4500) = 800
    wp = working_point(scores, labels, 1e-2, weights=w)
    assert not wp.resolved
    assert wp.note.endswith("1e-2 × 800 effective background events (Kish, weighted) = 8")


def test_tied_background_across_the_target_is_flagged():
    # 50 of 1000 background events share the top score: no cut passes between 0 and 5 %.
    scores = np.concatenate([np.full(100, 1.0), np.full(50, 1.0), np.linspace(0, 0.9, 950)])
    labels = np.concatenate([np.ones(100, int), np.zeros(1000, int)])
    wp = working_point(scores, labels, 1e-2)
    assert wp.resolved and wp.threshold == np.inf
    assert (wp.eff_s, wp.eff_b, wp.rejection) == (0.0, 0.0, np.inf)
    assert math.isnan(wp.purity)
    assert "0 of 1,000 background events pass (tied scores" in wp.note


def test_purity_is_at_the_natural_class_mix():
    # Cut at 0.5 passes 80 of 100 signal and 30 of 900 background events.
    scores = np.concatenate([np.repeat([0.9, 0.1], [80, 20]), np.repeat([0.6, 0.2], [30, 870])])
    labels = np.repeat([1, 0], [100, 900])
    wp = working_point(scores, labels, 30 / 900)
    assert (wp.threshold, wp.signal_pass, wp.background_pass) == (0.6, 80.0, 30.0)
    assert wp.purity == pytest.approx(80 / 110)
    assert wp.misclassification == pytest.approx((30 + 20) / 1000)
    # Background weighted twice as heavily: the same cut, purity 80 / (80 + 60).
    w = np.where(labels == 1, 1.0, 2.0)
    weighted = working_point(scores, labels, 30 / 900, weights=w)
    assert weighted.threshold == 0.6 and weighted.purity == pytest.approx(80 / 140)
    assert weighted.eff_s_err == pytest.approx(math.sqrt(0.8 * 0.2 / 100))


def test_min_misclassification_of_equal_gaussians_lands_at_the_midpoint():
    n = 100_000
    scores, labels = gaussians(n, n, seed=11)
    wp = min_misclassification_point(scores, labels)
    # Error(t) ≈ Φ(-1) + φ(1) t²/2 near t = 0; with noise ~√(2φ(1)|t| / 2n) the argmin
    # wanders by ~(2√(φ(1) / n) / φ(1))^(2/3) (cube-root asymptotics).
    phi1 = stats.norm.pdf(1.0)
    wander = (2 * math.sqrt(phi1 / n) / phi1) ** (2 / 3)
    assert abs(wp.threshold) < 4 * wander
    bayes = stats.norm.cdf(-DMU / 2)
    assert abs(wp.misclassification - bayes) < 4 * math.sqrt(bayes * (1 - bayes) / (2 * n))
    assert wp.eff_b_target is None and wp.resolved


def test_min_misclassification_is_the_brute_force_minimum():
    scores, labels, w = samples("weighted_ties", seed=12)
    wp = min_misclassification_point(scores, labels, w)
    cuts = np.unique(scores)
    err = [
        (w[(scores >= c) & (labels == 0)].sum() + w[(scores < c) & (labels == 1)].sum()) / w.sum()
        for c in cuts
    ]
    assert wp.misclassification == pytest.approx(min(err), abs=1e-12)
    assert wp.threshold == cuts[int(np.argmin(err))]


def test_summarize_is_json_ready_and_agrees_with_the_single_functions():
    scores, labels = gaussians(5000, 5000, seed=13)
    m = summarize(scores, labels, resamples=50, seed=2)
    text = json.dumps(m, allow_nan=False)
    assert json.loads(text) == m
    assert (m["n_signal"], m["n_background"], m["weighted"]) == (5000, 5000, False)
    assert (m["auc"], m["auc_lo"], m["auc_hi"]) == auc_interval(
        scores, labels, resamples=50, seed=2
    )
    wp1, wp2, wp3 = m["working_points"]
    assert [wp1["eff_b_target"], wp2["eff_b_target"], wp3["eff_b_target"]] == [1e-2, 1e-3, 1e-4]
    assert (wp1["eff_s"], wp1["eff_s_lo"], wp1["eff_s_hi"]) == working_point_interval(
        scores, labels, 1e-2, resamples=50, seed=2
    )
    assert wp1["resolved"] and wp1["eff_s_err"] > 0 and wp1["rejection"] == pytest.approx(100)
    assert not wp3["resolved"] and wp3["eff_s"] is None and wp3["eff_s_lo"] is None
    assert "1e-4 × 5,000 background events = 0.5" in wp3["note"]
    assert m["min_misclassification"]["eff_b_target"] is None


GOOD = (np.array([0.1, 0.9, 0.4]), np.array([0, 1, 0]))


@pytest.mark.parametrize(
    ("scores", "labels", "weights", "message"),
    [
        (GOOD[0], np.array([0, 1, 2]), None, "labels must be 0 .* found 2"),
        (GOOD[0], np.array([0.0, 1.0, np.nan]), None, "labels must be 0 .* found nan"),
        (GOOD[0], np.array([0, 1]), None, "3 scores but 2 labels"),
        (GOOD[0], GOOD[1], np.ones(4), "3 scores but 4 weights"),
        (np.array([0.1, np.nan, np.inf]), GOOD[1], None, "2 non-finite scores"),
        (GOOD[0], GOOD[1], np.array([1.0, np.nan, 1.0]), "1 non-finite weights"),
        (GOOD[0], np.zeros(3, int), None, "no signal events"),
        (GOOD[0], np.ones(3, int), None, "no background events"),
        (GOOD[0], GOOD[1], np.array([1.0, 1.0, -1.0]), "total background weight is 0"),
        (GOOD[0], GOOD[1], np.array([1.0, -2.0, 1.0]), "total signal weight is -2"),
        (np.ones((3, 2)), GOOD[1], None, r"scores must be 1-D .* shape \(3, 2\)"),
    ],
)
def test_bad_input_is_one_line_naming_the_problem(scores, labels, weights, message):
    calls = [
        lambda: roc_curve(scores, labels, weights),
        lambda: auc(scores, labels, weights),
        lambda: auc_interval(scores, labels, weights, resamples=5),
        lambda: working_point(scores, labels, 0.5, weights),
        lambda: working_point_interval(scores, labels, 0.5, weights, resamples=5),
        lambda: min_misclassification_point(scores, labels, weights),
        lambda: summarize(scores, labels, weights, resamples=5),
    ]
    for call in calls:
        with pytest.raises(DetlearnError, match=message) as err:
            call()
        assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s, y: working_point(s, y, 0.0), r"eff_b_target must be in \(0, 1\], got 0.0"),
        (lambda s, y: working_point(s, y, 1.5), r"eff_b_target must be in \(0, 1\], got 1.5"),
        (lambda s, y: working_point(s, y, 0.1, min_background=-1), "min_background must be"),
        (lambda s, y: auc_interval(s, y, resamples=1), "resamples must be ≥ 2, got 1"),
        (lambda s, y: auc_interval(s, y, level=1.0), r"level must be in \(0, 1\), got 1.0"),
        (lambda s, y: summarize(s, y, targets=(2.0,)), r"eff_b_target must be in \(0, 1\]"),
    ],
)
def test_bad_settings_are_one_line_errors(call, message):
    with pytest.raises(DetlearnError, match=message):
        call(*GOOD)


def test_column_vectors_are_accepted_as_one_score_per_event():
    scores, labels = gaussians(200, 200, seed=14)
    assert auc(scores[:, None], labels[:, None]) == auc(scores, labels)
