r"""Two-sample and density metrics: numpy arrays in, floats (or small dataclasses) out.

Each metric is a distance or a test statistic, not a verdict. With the sample sizes of a
detector simulation every p-value is ~0 for a difference nobody cares about, so a number is
read against the same number for two independent simulated samples of the same size (the
"sim-vs-sim baseline", as in the CaloChallenge). :class:`Score` carries both, and
:func:`with_baseline` computes both at equal sample size.

Example:
    >>> rng = np.random.default_rng(0)
    >>> sim_a, sim_b, model = rng.normal(0.0, 1.0, (3, 10_000))
    >>> s = with_baseline(wasserstein1, sim_a, sim_b, model, unit="ns")
    >>> 0.3 < s.ratio < 3.0
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats
from scipy.spatial.distance import cdist
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits

from detlearn.errors import DetlearnError

__all__ = [
    "Score",
    "auc_null_sigma",
    "c2st_auc",
    "chi2_two_sample",
    "energy_distance",
    "kl_from_exact",
    "ks_statistic",
    "pit_uniformity",
    "quantiles_rel_error",
    "to_jsonable",
    "wasserstein1",
    "weighted_quantile",
    "width68",
    "with_baseline",
]

# E[sqrt(n) * D_n] for the one-sample KS distance under the null (Kolmogorov distribution mean,
# sqrt(pi/2) * ln 2): the statistical floor a PIT's KS distance is read against.
_KS_MEAN = math.sqrt(math.pi / 2.0) * math.log(2.0)


def _sample(x: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).ravel()
    if a.size == 0:
        raise DetlearnError(f"{name}: empty sample")
    return a


def _weights(w: np.ndarray | None, x: np.ndarray, name: str) -> np.ndarray | None:
    """Signed event weights of sample ``x`` (None: unweighted), checked: one finite weight
    per value and a positive sum (a weighted CDF divides by it)."""
    if w is None:
        return None
    w = np.asarray(w, dtype=np.float64).ravel()
    if w.size != x.size:
        raise DetlearnError(f"{name}: {x.size} values but {w.size} weights")
    if not np.isfinite(w).all():
        raise DetlearnError(f"{name}: {int(np.sum(~np.isfinite(w)))} non-finite weights")
    total = float(w.sum())
    if not total > 0:
        raise DetlearnError(
            f"{name}: the weights sum to {total:g} over {w.size:,} values; a weighted "
            "distribution needs a positive sum"
        )
    return w


def _cdf(x: np.ndarray, w: np.ndarray | None, at: np.ndarray) -> np.ndarray:
    """The (weighted) empirical CDF of ``x`` at the sorted points ``at``: Σ_{x_i ≤ at} w_i / Σ w_i
    (signed weights: not necessarily monotone)."""
    order = np.argsort(x, kind="stable")
    steps = np.ones(x.size) if w is None else w[order]
    cum = np.concatenate([[0.0], np.cumsum(steps)]) / steps.sum()
    return cum[np.searchsorted(x[order], at, side="right")]


def wasserstein1(
    a: np.ndarray,
    b: np.ndarray,
    a_weights: np.ndarray | None = None,
    b_weights: np.ndarray | None = None,
) -> float:
    r"""Wasserstein-1 (earth mover's) distance of two 1-D samples, in the data's units.

    :math:`W_1 = \int |F_a(x) - F_b(x)|\,dx` with :math:`F` the empirical CDFs: the mean
    distance each unit of probability must move to turn one sample into the other.
    A pure location shift by :math:`\delta` gives :math:`W_1 = |\delta|`.

    With event weights :math:`F(x) = \sum_{x_i \le x} w_i / \sum_i w_i`. Negative weights
    (NLO generators) enter with their sign, so an event cancelled by an equal one of weight −1
    counts as absent; only the total must be positive.

    Example:
        >>> wasserstein1([0.0, 1.0, 5.0, 5.0], [1.0], a_weights=[1, 1, 1, -1])  # 5s cancel
        0.5
    """
    a, b = _sample(a, "wasserstein1"), _sample(b, "wasserstein1")
    wa, wb = _weights(a_weights, a, "wasserstein1"), _weights(b_weights, b, "wasserstein1")
    if wa is None and wb is None:
        return float(stats.wasserstein_distance(a, b))
    x = np.sort(np.concatenate([a, b]))
    gap = np.abs(_cdf(a, wa, x[:-1]) - _cdf(b, wb, x[:-1]))
    return float(np.sum(gap * np.diff(x)))


def ks_statistic(
    a: np.ndarray,
    b: np.ndarray,
    a_weights: np.ndarray | None = None,
    b_weights: np.ndarray | None = None,
) -> float:
    r"""Two-sample Kolmogorov–Smirnov distance :math:`\sup_x |F_a(x) - F_b(x)|` (unitless).

    Event weights as in :func:`wasserstein1` (signed; a positive total).
    """
    # The statistic alone: scipy's ks_2samp also computes a p-value (exact, and slow, for
    # n ≤ 10 000), which is meaningless at simulation sample sizes anyway.
    a, b = _sample(a, "ks_statistic"), _sample(b, "ks_statistic")
    wa, wb = _weights(a_weights, a, "ks_statistic"), _weights(b_weights, b, "ks_statistic")
    x = np.concatenate([a, b])
    return float(np.max(np.abs(_cdf(a, wa, x) - _cdf(b, wb, x))))


def weighted_quantile(
    x: np.ndarray, q: float | Sequence[float] | np.ndarray, weights: np.ndarray | None = None
) -> np.ndarray:
    r"""Quantiles of a weighted sample: for each ``q`` the smallest value whose cumulative
    weight reaches :math:`q \sum_i w_i` (the inverse weighted CDF, no interpolation: numpy's
    ``method="inverted_cdf"`` when unweighted).

    Negative weights enter the cumulative sum with their sign, so it need not rise
    monotonically; the first value where it reaches the level is taken. The total weight must
    be positive.

    Example:
        >>> weighted_quantile([1.0, 2.0, 3.0, 3.0], [0.5, 1.0], [1, 1, 1, -1])  # the 3s cancel
        array([1., 2.])
    """
    values = _sample(x, "weighted_quantile")
    w = _weights(weights, values, "weighted_quantile")
    order = np.argsort(values, kind="stable")
    cum = np.cumsum(np.ones(values.size) if w is None else w[order])
    levels = np.atleast_1d(np.asarray(q, dtype=np.float64)) * cum[-1]
    # The first crossing of each level (argmax of a boolean row is its first True).
    first = np.argmax(cum[None, :] >= levels[:, None] * (1 - 1e-12), axis=1)
    return values[order][first]


def _merge_bins(na: np.ndarray, nb: np.ndarray, min_count: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge adjacent bins left to right until each has ``min_count`` combined entries.

    A short remainder at the right end joins the last full group, so no group is below the
    threshold unless the whole histogram is.
    """
    groups_a: list[float] = []
    groups_b: list[float] = []
    acc_a = acc_b = 0.0
    for ca, cb in zip(na, nb, strict=True):
        acc_a += ca
        acc_b += cb
        if acc_a + acc_b >= min_count:
            groups_a.append(acc_a)
            groups_b.append(acc_b)
            acc_a = acc_b = 0.0
    if acc_a + acc_b > 0:
        if groups_a:
            groups_a[-1] += acc_a
            groups_b[-1] += acc_b
        else:
            groups_a.append(acc_a)
            groups_b.append(acc_b)
    return np.asarray(groups_a), np.asarray(groups_b)


def chi2_two_sample(
    a: np.ndarray, b: np.ndarray, bins: int | Sequence[float] | np.ndarray, min_count: int = 5
) -> tuple[float, int]:
    r"""Two-sample χ² of two unweighted samples of different sizes, and its degrees of freedom.

    This is ROOT's ``TH1::Chi2Test`` option "UU" (Gagunashvili): with :math:`n_{a,i}, n_{b,i}`
    the counts in bin :math:`i` and :math:`N_a, N_b` the totals,

    .. math:: \chi^2 = \frac{1}{N_a N_b} \sum_i
              \frac{(N_b\,n_{a,i} - N_a\,n_{b,i})^2}{n_{a,i} + n_{b,i}},
              \qquad \text{ndf} = k - 1,

    which is χ²-distributed with ndf degrees of freedom when both samples come from the same
    distribution (the normalizations are free, hence the −1). ``scipy.stats.chisquare`` is not
    a substitute: it treats one histogram as an exact expectation. Adjacent bins are merged
    until each has ``min_count`` combined entries (the χ² approximation needs it); entries
    outside the edges are ignored, as ROOT ignores under- and overflow.

    Args:
        a: the first sample.
        b: the second sample.
        bins: a number of equal-width bins over the combined range, or the bin edges.
        min_count: least combined count per bin after merging.

    Returns:
        (χ², ndf); ndf is 0 (and χ² 0) when everything falls into a single merged bin.
    """
    a = _sample(a, "chi2_two_sample")
    b = _sample(b, "chi2_two_sample")
    edges = np.histogram_bin_edges(np.concatenate([a, b]), bins=bins)
    na, nb = _merge_bins(
        np.histogram(a, edges)[0].astype(np.float64),
        np.histogram(b, edges)[0].astype(np.float64),
        min_count,
    )
    tot_a, tot_b = na.sum(), nb.sum()
    if tot_a == 0 or tot_b == 0:
        raise DetlearnError("chi2_two_sample: a sample has no entries inside the bin edges")
    chi2 = np.sum((tot_b * na - tot_a * nb) ** 2 / (na + nb)) / (tot_a * tot_b)
    return float(chi2), int(na.size - 1)


def pit_uniformity(u: np.ndarray) -> dict[str, float]:
    r"""Calibration of a 1-D conditional density from its probability integral transform.

    For simulated events :math:`t_j` at contexts :math:`c_j`, :math:`u_j = F_{model}(t_j \mid
    c_j)` is uniform on (0, 1) exactly when the model's conditional CDF is right.

    Returns:
        ``ks``: KS distance of u from U(0, 1); ``ks_expected``: its mean under perfect
        calibration, :math:`0.8687/\sqrt{n}`; ``cov68`` / ``cov95``: fraction of u inside the
        central 68 % / 95 % intervals (ideal 0.68 / 0.95); ``cov68_sigma`` / ``cov95_sigma``:
        their binomial standard deviations :math:`\sqrt{p(1-p)/n}`; ``n``.
    """
    u = np.sort(_sample(u, "pit_uniformity"))
    n = u.size
    ecdf_hi = np.arange(1, n + 1) / n  # the empirical CDF just after and before each point
    ecdf_lo = np.arange(n) / n
    return {
        "ks": float(max(np.max(ecdf_hi - u), np.max(u - ecdf_lo))),
        "ks_expected": _KS_MEAN / math.sqrt(n),
        "cov68": float(np.mean((u >= 0.16) & (u <= 0.84))),
        "cov68_sigma": math.sqrt(0.68 * 0.32 / n),
        "cov95": float(np.mean((u >= 0.025) & (u <= 0.975))),
        "cov95_sigma": math.sqrt(0.95 * 0.05 / n),
        "n": float(n),
    }


def _rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x.reshape(-1, 1) if x.ndim == 1 else x


def auc_null_sigma(n_a: int, n_b: int) -> float:
    r"""Standard deviation of a ROC AUC between two identical distributions (Mann–Whitney).

    :math:`\sigma_{AUC} = \sqrt{(n_a + n_b + 1) / (12\,n_a n_b)}`, the spread of
    :func:`c2st_auc` around 0.5 for a perfect model.
    """
    return math.sqrt((n_a + n_b + 1) / (12.0 * n_a * n_b))


def c2st_auc(
    x_a: np.ndarray,
    x_b: np.ndarray,
    seed: int = 0,
    folds: int = 5,
    max_n: int = 50_000,
    *,
    paired: bool = False,
) -> float:
    r"""Classifier two-sample test: the held-out ROC AUC of a classifier separating a from b.

    A gradient-boosted tree classifier (``HistGradientBoostingClassifier``) is trained with
    ``folds``-fold cross-fitting; every row is scored by the model that did not see it, and
    the AUC of those out-of-fold probabilities is returned. 0.5 means indistinguishable (spread
    :func:`auc_null_sigma`), 1 means fully separable. Pass joint features, e.g. (Δt, context),
    so that a wrong conditional dependence shows even where the marginals agree. Trees are
    invariant to monotonic rescaling of each feature, so no standardization is needed.

    Args:
        x_a: the first sample, of shape [n] or [n, features].
        x_b: the second sample, of the same shape.
        seed: seed of the subsampling, the folds and the classifier.
        folds: number of cross-fitting folds (≥ 2).
        max_n: rows used per class; the classes are balanced by subsampling the larger one.
        paired: row i of x_a and row i of x_b belong together (e.g. sim and model drawn at the
            same context c_i); pairs are kept in one fold. Otherwise the shared context acts as
            a pair label: a tree that memorized (c_i, class a) in training scores the test twin
            (c_i, class b) as a, which pulls the AUC below 0.5 even for identical samples.
    """
    x_a, x_b = _rows(x_a), _rows(x_b)
    if x_a.shape[1] != x_b.shape[1]:
        raise DetlearnError(f"c2st_auc: samples have {x_a.shape[1]} and {x_b.shape[1]} features")
    if paired and len(x_a) != len(x_b):
        raise DetlearnError(f"c2st_auc: paired samples have {len(x_a)} and {len(x_b)} rows")
    n = min(len(x_a), len(x_b), max_n)
    if n < folds:
        raise DetlearnError(f"c2st_auc: {n} rows per class is too few for {folds} folds")
    rng = np.random.default_rng(seed)
    keep_a = rng.choice(len(x_a), n, replace=False) if len(x_a) > n else np.arange(n)
    if paired:
        keep_b = keep_a
    else:
        keep_b = rng.choice(len(x_b), n, replace=False) if len(x_b) > n else np.arange(n)
    x = np.concatenate([x_a[keep_a], x_b[keep_b]])
    y = np.concatenate([np.zeros(n), np.ones(n)])
    # Fold of each row: by pair index when paired (both members together), else random.
    fold = rng.permutation(np.arange(n) % folds)
    fold = np.concatenate([fold, fold if paired else rng.permutation(fold)])
    score = np.empty(2 * n)
    # One OpenMP thread: the trees are small, and spinning OpenMP threads slow ten-fold when
    # the cores are shared (a process pool, a training job next door).
    with threadpool_limits(limits=1, user_api="openmp"):
        for k in range(folds):
            test = fold == k
            clf = HistGradientBoostingClassifier(random_state=seed).fit(x[~test], y[~test])
            score[test] = clf.predict_proba(x[test])[:, 1]
    return float(roc_auc_score(y, score))


def kl_from_exact(
    log_p_true_at_sim: np.ndarray, log_q_model_at_sim: np.ndarray
) -> tuple[float, float]:
    r"""KL(sim ∥ model) in nats from exact log-densities at simulated points, with its error.

    :math:`\mathrm{KL} = E_{x\sim p}[\log p(x) - \log q(x)] \approx \frac1n \sum_j (\log p(x_j)
    - \log q(x_j))` for :math:`x_j` drawn from the simulation p. For a conditional density
    :math:`x_j = (t_j, c_j)` and the log-densities are conditional, giving the expected
    conditional KL over the simulated contexts. Unlike the two-sample metrics this has no
    sampling floor: a perfect model gives 0 up to the returned standard error
    :math:`\mathrm{sd}(\log p - \log q)/\sqrt{n}`.

    Returns:
        (KL in nats, its standard error in nats).
    """
    d = np.asarray(log_p_true_at_sim, dtype=np.float64) - np.asarray(
        log_q_model_at_sim, dtype=np.float64
    )
    d = d.ravel()
    if d.size < 2:
        raise DetlearnError("kl_from_exact: need at least 2 log-density pairs")
    if not np.all(np.isfinite(d)):
        raise DetlearnError(
            f"kl_from_exact: {int(np.sum(~np.isfinite(d)))} non-finite log-density differences "
            "(the model puts zero density where the simulation has events?)"
        )
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(d.size))


def energy_distance(a: np.ndarray, b: np.ndarray, max_n: int = 2000, seed: int = 0) -> float:
    r"""Energy distance of two samples in any dimension, in the data's units.

    :math:`D = \sqrt{2E\|X-Y\| - E\|X-X'\| - E\|Y-Y'\|}` with Euclidean norms; D = 0 iff the
    distributions are equal. Expectations are V-statistics over all pairs (self-pairs
    included), so D² ≥ 0 and for 1-D data D equals ``scipy.stats.energy_distance``. The cost
    is quadratic, so each sample is randomly subsampled to ``max_n`` rows; the estimate then
    carries a floor of order :math:`1/\sqrt{\text{max\_n}}` (compare with a sim-vs-sim value).
    Features with different units should be standardized first: the norm mixes them.

    Args:
        a: the first sample, of shape [n] or [n, features].
        b: the second sample, of the same shape.
        max_n: rows used per sample.
        seed: seed of the subsampling.
    """
    a, b = _rows(a), _rows(b)
    if a.shape[1] != b.shape[1]:
        raise DetlearnError(f"energy_distance: samples have {a.shape[1]} and {b.shape[1]} features")
    if len(a) == 0 or len(b) == 0:
        raise DetlearnError("energy_distance: empty sample")
    rng = np.random.default_rng(seed)
    a = a[rng.choice(len(a), max_n, replace=False)] if len(a) > max_n else a
    b = b[rng.choice(len(b), max_n, replace=False)] if len(b) > max_n else b
    d2 = 2.0 * cdist(a, b).mean() - cdist(a, a).mean() - cdist(b, b).mean()
    return math.sqrt(max(d2, 0.0))


def quantiles_rel_error(
    a: np.ndarray, b: np.ndarray, qs: Sequence[float] = (0.05, 0.16, 0.5, 0.84, 0.95)
) -> np.ndarray:
    r"""Relative error of b's quantiles against a's: :math:`(Q_b(q) - Q_a(q)) / |Q_a(q)|`.

    Meaningful for data away from 0 (e.g. arrival times); unitless, one value per ``qs``.
    """
    qa = np.quantile(_sample(a, "quantiles_rel_error"), qs)
    qb = np.quantile(_sample(b, "quantiles_rel_error"), qs)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (qb - qa) / np.abs(qa)


def width68(a: np.ndarray) -> float:
    r"""Half the 16–84 % inter-quantile range, :math:`(Q(0.84) - Q(0.16))/2`, in the data's units.

    The robust "σ" of a resolution: equal to σ for a Gaussian, insensitive to tails.
    """
    q16, q84 = np.quantile(_sample(a, "width68"), [0.16, 0.84])
    return float(0.5 * (q84 - q16))


@dataclass(frozen=True)
class Score:
    """A metric of the model against simulation, beside the same metric for sim vs sim.

    Attributes:
        name: metric name (``w1``, ``c2st_auc``, ...).
        value: metric of simulation vs model.
        baseline: the same metric of simulation vs an independent simulated sample of equal
            size (its statistical floor); None where the metric has no such floor (e.g. KL).
        unit: unit of ``value`` and ``baseline`` ("" if unitless).
        error: statistical standard error of ``value``, where known.
    """

    name: str
    value: float
    baseline: float | None = None
    unit: str = ""
    error: float | None = None

    @property
    def ratio(self) -> float | None:
        """value / baseline: ~1 means the model is as close to simulation as simulation is."""
        if self.baseline is None:
            return None
        if self.baseline == 0:
            return math.inf if self.value > 0 else math.nan
        return self.value / self.baseline

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (non-finite numbers become None)."""
        return to_jsonable(
            {
                "name": self.name,
                "value": self.value,
                "baseline": self.baseline,
                "ratio": self.ratio,
                "unit": self.unit,
                "error": self.error,
            }
        )


def with_baseline(
    metric_fn: Callable[[np.ndarray, np.ndarray], float],
    sim_a: np.ndarray,
    sim_b: np.ndarray,
    model: np.ndarray,
    *,
    name: str | None = None,
    unit: str = "",
    seed: int = 0,
) -> Score:
    """``metric_fn(sim_a, model)`` beside ``metric_fn(sim_a, sim_b)``, at the same sample size.

    Two-sample distances grow as the samples shrink, so the comparison is fair only when
    ``model`` and ``sim_b`` have the same number of rows: the larger is randomly subsampled
    (seeded) to the size of the smaller. ``sim_a`` is the common reference.
    """
    model = np.asarray(model)
    sim_b = np.asarray(sim_b)
    n = min(len(model), len(sim_b))
    rng = np.random.default_rng(seed)
    if len(model) > n:
        model = model[rng.choice(len(model), n, replace=False)]
    if len(sim_b) > n:
        sim_b = sim_b[rng.choice(len(sim_b), n, replace=False)]
    return Score(
        name=name or getattr(metric_fn, "__name__", "metric"),
        value=float(metric_fn(sim_a, model)),
        baseline=float(metric_fn(sim_a, sim_b)),
        unit=unit,
    )


def to_jsonable(obj: Any) -> Any:
    """Recursively turn numpy scalars/arrays, tuples and Scores into JSON types; NaN/inf → None.

    Strict JSON has no NaN; a metric that could not be computed is written as null.
    """
    if isinstance(obj, Score):
        return obj.to_dict()
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj
