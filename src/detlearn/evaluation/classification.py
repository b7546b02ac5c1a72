r"""ROC toolkit of a signal/background classifier: ROC curve, AUC with a bootstrap interval,
working points at a fixed background efficiency, and the summary ``metrics.json`` holds.

A classifier gives each event a score (e.g. P(signal)); a cut keeps the events with
``score >= threshold``. Every function takes ``scores`` [n], ``labels`` [n] (1 signal,
0 background) and optional event ``weights`` [n] (sums of weights replace counts; negative
weights are allowed, a class whose total weight is not positive is an error). Everything is
exact on the sample: one ROC point per distinct score, tied scores count half in the AUC.

A working point at background efficiency :math:`10^{-4}` needs a test set in which a few
background events pass at all: below ``min_background`` expected passing events the point is
reported as unresolved, with NaN numbers and a note saying how many events it would need.

Example:
    >>> rng = np.random.default_rng(0)
    >>> labels = np.repeat([1, 0], 5000)
    >>> scores = np.concatenate([rng.normal(1, 1, 5000), rng.normal(-1, 1, 5000)])
    >>> round(auc(scores, labels), 2)  # Φ(2/√2) = 0.921 for these two Gaussians
    0.92
    >>> wp = working_point(scores, labels, 1e-2)  # analytic eff_s: 1 - Φ(Φ⁻¹(0.99) - 2) = 0.372
    >>> wp.resolved, round(wp.eff_b, 4), round(wp.eff_s, 2)
    (True, 0.01, 0.37)
    >>> wp = working_point(scores, labels, 1e-4)
    >>> wp.resolved, wp.eff_s
    (False, nan)
    >>> wp.note
    'needs ≥ 10 background events passing: 1e-4 × 5,000 background events = 0.5'
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from detlearn.errors import DetlearnError
from detlearn.evaluation.metrics import to_jsonable

__all__ = [
    "Roc",
    "WorkingPoint",
    "auc",
    "auc_interval",
    "mean_working_point_interval",
    "min_misclassification_point",
    "roc_curve",
    "summarize",
    "working_point",
    "working_point_interval",
]


@dataclass(frozen=True)
class Roc:
    """The exact ROC curve of a sample: one point per distinct score, from tightest to loosest.

    Point 0 is the cut that keeps nothing (threshold +inf, efficiencies (0, 0)); the last point
    keeps everything (the lowest score, efficiencies (1, 1)). On a log eff_b axis, the usual
    plot, point 0 drops off and the smallest non-zero eff_b is 1 / (background events): the
    sample says nothing below it.

    Attributes:
        thresholds: [k] cut values, strictly decreasing; an event passes if score ≥ threshold.
        eff_s: [k] signal efficiency of each cut (true positive rate).
        eff_b: [k] background efficiency of each cut (false positive rate).
        signal_pass: [k] signal passing each cut: events, or the sum of their weights.
        background_pass: [k] background passing each cut: events, or the sum of their weights.
    """

    thresholds: np.ndarray
    eff_s: np.ndarray
    eff_b: np.ndarray
    signal_pass: np.ndarray
    background_pass: np.ndarray

    @property
    def rejection(self) -> np.ndarray:
        """[k] background rejection 1 / eff_b (inf where no background passes)."""
        with np.errstate(divide="ignore"):
            return 1.0 / self.eff_b


@dataclass(frozen=True)
class WorkingPoint:
    r"""One cut on the score and what it does; NaN numbers where the sample cannot decide them.

    Attributes:
        eff_b_target: the background efficiency asked for; None for a point chosen otherwise.
        threshold: the cut; an event passes if score ≥ threshold.
        eff_s: signal efficiency at the cut.
        eff_s_err: binomial standard error of eff_s, :math:`\sqrt{\epsilon(1-\epsilon)/n_s}`
            (with weights :math:`\sqrt{(1-\epsilon)^2\sum_{pass} w^2 + \epsilon^2
            \sum_{fail} w^2}/\sum w`), the threshold held fixed.
        eff_b: background efficiency at the cut.
        rejection: 1 / eff_b (inf if no background passes).
        purity: S / (S + B) of the passing events at the sample's own class mix.
        misclassification: (FP + FN) / N at the cut: background passing plus signal failing,
            over all events (sums of weights with weights).
        signal_pass: signal passing the cut (events, or the sum of their weights).
        background_pass: background passing the cut (events, or the sum of their weights).
        resolved: False when too few background events would pass to decide the point.
        note: one line saying how the point was found, or why it is unresolved.
    """

    eff_b_target: float | None
    threshold: float
    eff_s: float
    eff_s_err: float
    eff_b: float
    rejection: float
    purity: float
    misclassification: float
    signal_pass: float
    background_pass: float
    resolved: bool
    note: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (non-finite numbers become None)."""
        return to_jsonable(asdict(self))


@dataclass(frozen=True)
class _Events:
    """Validated events sorted by descending score and grouped by distinct score."""

    thresholds: np.ndarray  # [g] distinct scores, decreasing
    ends: np.ndarray  # [g] one past the last sorted event of each group
    signal: np.ndarray  # [n] bool, sorted
    w: np.ndarray  # [n] weights, sorted (ones if unweighted)
    weighted: bool
    order: np.ndarray  # [n] the input index of each sorted event

    @property
    def n_signal(self) -> int:
        return int(self.signal.sum())

    @property
    def n_background(self) -> int:
        return int(self.signal.size - self.signal.sum())


def _one_d(x: Any, name: str, where: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1:
        if sum(d != 1 for d in a.shape) > 1:
            raise DetlearnError(f"{where}: {name} must be 1-D (one per event), got shape {a.shape}")
        a = a.ravel()
    return a


def _events(scores: Any, labels: Any, weights: Any, where: str) -> _Events:
    s = _one_d(scores, "scores", where).astype(np.float64)
    y = _one_d(labels, "labels", where)
    if y.size != s.size:
        raise DetlearnError(f"{where}: {s.size} scores but {y.size} labels")
    valid = np.isin(y, [0, 1])
    if not valid.all():
        bad = ", ".join(str(v) for v in np.unique(y[~valid])[:5])
        raise DetlearnError(f"{where}: labels must be 0 (background) or 1 (signal), found {bad}")
    if not np.isfinite(s).all():
        raise DetlearnError(f"{where}: {int(np.sum(~np.isfinite(s)))} non-finite scores")
    is_signal = y.astype(bool)
    n_sig = int(is_signal.sum())
    if n_sig == 0 or n_sig == s.size:
        missing = "signal" if n_sig == 0 else "background"
        raise DetlearnError(f"{where}: no {missing} events (labels 1 = signal, 0 = background)")
    if weights is None:
        w = np.ones_like(s)
    else:
        w = _one_d(weights, "weights", where).astype(np.float64)
        if w.size != s.size:
            raise DetlearnError(f"{where}: {s.size} scores but {w.size} weights")
        if not np.isfinite(w).all():
            raise DetlearnError(f"{where}: {int(np.sum(~np.isfinite(w)))} non-finite weights")
        for cls, mask in (("signal", is_signal), ("background", ~is_signal)):
            total = float(w[mask].sum())
            if total <= 0:
                raise DetlearnError(f"{where}: total {cls} weight is {total:g}, must be > 0")
    order = np.argsort(-s, kind="stable")
    s = s[order]
    last = np.flatnonzero(np.diff(s) != 0)
    return _Events(
        thresholds=s[np.append(last, s.size - 1)],
        ends=np.append(last + 1, s.size),
        signal=is_signal[order],
        w=w[order],
        weighted=weights is not None,
        order=order,
    )


def _cumulative(ev: _Events, w: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """[g + 1] sum of ``w`` over the ``mask`` events passing each cut, keep-nothing first."""
    c = np.cumsum(np.where(mask, w, 0.0))
    return np.concatenate([[0.0], c[ev.ends - 1]])


def _passing(ev: _Events, k: int) -> int:
    """How many sorted events pass cut ``k`` (cut 0 keeps nothing)."""
    return int(ev.ends[k - 1]) if k > 0 else 0


def _curve(ev: _Events, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return _cumulative(ev, w, ev.signal), _cumulative(ev, w, ~ev.signal)


def _area(s: np.ndarray, b: np.ndarray) -> float:
    """Trapezoidal area under (b / b[-1], s / s[-1]): the AUC with ties counted half."""
    if s[-1] <= 0 or b[-1] <= 0:  # a bootstrap resample of negative weights
        return math.nan
    es, eb = s / s[-1], b / b[-1]
    return float(np.sum(np.diff(eb) * (es[1:] + es[:-1])) / 2.0)


def _loosest(s: np.ndarray, b: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """[t] index of the loosest cut with eff_b ≤ each target (cut 0 always qualifies)."""
    if s[-1] <= 0 or b[-1] <= 0:
        return np.full(targets.size, -1)
    ok = (b / b[-1])[None, :] <= targets[:, None]
    return ok.shape[1] - 1 - np.argmax(ok[:, ::-1], axis=1)


def _format_target(x: float) -> str:
    mantissa, exponent = f"{x:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _background_size(ev: _Events) -> tuple[float, str]:
    """How many background events the sample holds: n, or Kish's (Σw)²/Σw² with weights."""
    if not ev.weighted:
        return float(ev.n_background), f"{ev.n_background:,} background events"
    w = ev.w[~ev.signal]
    n_eff = float(w.sum() ** 2 / np.sum(w**2))
    return n_eff, f"{n_eff:,.0f} effective background events (Kish, weighted)"


def _point(ev: _Events, k: int, target: float | None, note: str) -> WorkingPoint:
    s, b = _curve(ev, ev.w)
    s_tot, b_tot = s[-1], b[-1]
    eff_s, eff_b = s[k] / s_tot, b[k] / b_tot
    w2 = np.where(ev.signal, ev.w**2, 0.0)
    w2_pass = float(w2[: _passing(ev, k)].sum())
    var = ((1.0 - eff_s) ** 2 * w2_pass + eff_s**2 * (float(w2.sum()) - w2_pass)) / s_tot**2
    with np.errstate(divide="ignore", invalid="ignore"):
        rejection = float(np.float64(1.0) / eff_b)
        purity = float(np.float64(s[k]) / (s[k] + b[k]))
    return WorkingPoint(
        eff_b_target=target,
        threshold=float(np.inf) if k == 0 else float(ev.thresholds[k - 1]),
        eff_s=float(eff_s),
        eff_s_err=math.sqrt(max(var, 0.0)),
        eff_b=float(eff_b),
        rejection=rejection,
        purity=purity,
        misclassification=float((b[k] + s_tot - s[k]) / (s_tot + b_tot)),
        signal_pass=float(s[k]),
        background_pass=float(b[k]),
        resolved=True,
        note=note,
    )


def _unresolved(target: float, note: str) -> WorkingPoint:
    nan = math.nan
    return WorkingPoint(target, nan, nan, nan, nan, nan, nan, nan, nan, nan, False, note)


def _check_target(target: float, min_background: float, where: str) -> None:
    if not 0.0 < target <= 1.0:
        raise DetlearnError(f"{where}: eff_b_target must be in (0, 1], got {target}")
    if min_background < 0:
        raise DetlearnError(f"{where}: min_background must be ≥ 0, got {min_background}")


def _resolution(ev: _Events, target: float, min_background: float) -> str | None:
    """The unresolved note, or None when ``target`` of the background is enough events."""
    n, described = _background_size(ev)
    if n * target >= min_background:
        return None
    return (
        f"needs ≥ {min_background:g} background events passing: {_format_target(target)} × "
        f"{described} = {n * target:.3g}"
    )


def _working_point(ev: _Events, target: float, min_background: float, where: str) -> WorkingPoint:
    _check_target(target, min_background, where)
    unresolved = _resolution(ev, target, min_background)
    if unresolved is not None:
        return _unresolved(target, unresolved)
    s, b = _curve(ev, ev.w)
    k = int(_loosest(s, b, np.array([target]))[0])
    passing = int(np.sum(~ev.signal[: _passing(ev, k)]))
    note = (
        f"loosest cut with eff_b ≤ {_format_target(target)}: {passing:,} of "
        f"{ev.n_background:,} background events pass"
    )
    if passing < min_background:  # a block of tied background scores sits across the target
        note += f" (tied scores: fewer than {min_background:g})"
    return _point(ev, k, target, note)


def _bootstrap(
    ev: _Events, resamples: int, seed: int, targets: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """AUC [r] and eff_s at each target's re-derived cut [r, t] of stratified resamples.

    Signal and background are resampled separately, each to its own size, so every resample
    has the sample's class mix. A resample is a count per event (how often it was drawn),
    which multiplies its weight: the events stay sorted and each resample costs O(n).
    """
    rng = np.random.default_rng(seed)
    sig, bkg = np.flatnonzero(ev.signal), np.flatnonzero(~ev.signal)
    aucs = np.empty(resamples)
    eff_s = np.full((resamples, targets.size), math.nan)
    counts = np.empty(ev.signal.size)
    for r in range(resamples):
        counts[sig] = np.bincount(rng.integers(0, sig.size, sig.size), minlength=sig.size)
        counts[bkg] = np.bincount(rng.integers(0, bkg.size, bkg.size), minlength=bkg.size)
        s, b = _curve(ev, ev.w * counts)
        aucs[r] = _area(s, b)
        k = _loosest(s, b, targets)
        if targets.size and k[0] >= 0:
            eff_s[r] = s[k] / s[-1]
    return aucs, eff_s


def _interval(values: np.ndarray, level: float) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan, math.nan
    lo, hi = np.quantile(values, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(lo), float(hi)


def _check_bootstrap(resamples: int, level: float, where: str) -> None:
    if resamples < 2:
        raise DetlearnError(f"{where}: resamples must be ≥ 2, got {resamples}")
    if not 0.0 < level < 1.0:
        raise DetlearnError(f"{where}: level must be in (0, 1), got {level}")


def roc_curve(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> Roc:
    """The exact ROC curve: one point per distinct score plus the keep-nothing point.

    Equal to ``sklearn.metrics.roc_curve(labels, scores, sample_weight=weights,
    drop_intermediate=False)`` (same thresholds, tpr = eff_s, fpr = eff_b).

    Args:
        scores: [n] classifier scores, higher = more signal-like.
        labels: [n] 1 for signal, 0 for background.
        weights: [n] event weights, or None for unit weights.

    Example:
        >>> roc = roc_curve([0.9, 0.8, 0.8, 0.1], [1, 1, 0, 0])
        >>> roc.thresholds.tolist(), roc.eff_s.tolist(), roc.eff_b.tolist()
        ([inf, 0.9, 0.8, 0.1], [0.0, 0.5, 1.0, 1.0], [0.0, 0.0, 0.5, 1.0])
    """
    ev = _events(scores, labels, weights, "roc_curve")
    s, b = _curve(ev, ev.w)
    return Roc(
        thresholds=np.concatenate([[np.inf], ev.thresholds]),
        eff_s=s / s[-1],
        eff_b=b / b[-1],
        signal_pass=s,
        background_pass=b,
    )


def auc(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Area under the ROC curve: P(score of a signal event > score of a background event).

    Exact (Mann–Whitney), a tie counting half; with weights each pair counts w_s · w_b. Equal
    to ``sklearn.metrics.roc_auc_score``. 0.5 is a random classifier, 1 a perfect one.

    Example:
        >>> auc([0.9, 0.8, 0.8, 0.1], [1, 1, 0, 0])  # pairs: 1 + 1 + 0.5 + 1 of 4
        0.875
    """
    ev = _events(scores, labels, weights, "auc")
    return _area(*_curve(ev, ev.w))


def auc_interval(
    scores: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray | None = None,
    resamples: int = 200,
    seed: int = 0,
    level: float = 0.68,
) -> tuple[float, float, float]:
    """The AUC and a stratified-bootstrap percentile interval around it.

    Signal and background events are resampled separately (with replacement, each to its own
    size) ``resamples`` times with a generator seeded by ``seed``; the interval holds the
    central ``level`` of the resampled AUCs. Its half-width at level 0.68 is close to the
    Hanley–McNeil σ and shrinks as 1/√n.

    Returns:
        (AUC of the sample, lower end, upper end).

    Example:
        >>> rng = np.random.default_rng(1)
        >>> scores = np.concatenate([rng.normal(1, 1, 2000), rng.normal(-1, 1, 2000)])
        >>> a, lo, hi = auc_interval(scores, np.repeat([1, 0], 2000))
        >>> lo < a < hi and 0.002 < (hi - lo) / 2 < 0.006  # Hanley–McNeil σ = 0.0039
        True
    """
    _check_bootstrap(resamples, level, "auc_interval")
    ev = _events(scores, labels, weights, "auc_interval")
    aucs, _ = _bootstrap(ev, resamples, seed, np.empty(0))
    return (_area(*_curve(ev, ev.w)), *_interval(aucs, level))


def working_point(
    scores: np.ndarray,
    labels: np.ndarray,
    eff_b_target: float,
    weights: np.ndarray | None = None,
    min_background: float = 10,
) -> WorkingPoint:
    """The loosest cut whose background efficiency is at most ``eff_b_target``.

    Resolved only if at least ``min_background`` background events would pass at eff_b =
    target, i.e. n_background × target ≥ min_background (with weights n_background is Kish's
    effective size (Σw)²/Σw²). Otherwise the numbers are NaN and the note gives the count: a
    cut placed by one or two background events is noise, not a working point.

    Args:
        scores: [n] classifier scores.
        labels: [n] 1 for signal, 0 for background.
        eff_b_target: the background efficiency, in (0, 1].
        weights: [n] event weights, or None.
        min_background: background events that must pass for the point to count as resolved.

    Example:
        >>> scores = np.arange(2000.0); labels = (scores >= 1000).astype(int)
        >>> wp = working_point(scores, labels, 0.01)  # 10 of 1000 background pass
        >>> wp.threshold, wp.eff_s, wp.eff_b, round(wp.purity, 4), wp.rejection
        (990.0, 1.0, 0.01, 0.9901, 100.0)
    """
    ev = _events(scores, labels, weights, "working_point")
    return _working_point(ev, float(eff_b_target), min_background, "working_point")


def working_point_interval(
    scores: np.ndarray,
    labels: np.ndarray,
    eff_b_target: float,
    weights: np.ndarray | None = None,
    min_background: float = 10,
    resamples: int = 200,
    seed: int = 0,
    level: float = 0.68,
) -> tuple[float, float, float]:
    """eff_s at the working point with a stratified-bootstrap interval that re-derives the cut.

    Unlike :attr:`WorkingPoint.eff_s_err` (binomial, threshold fixed) each resample places
    its own cut at eff_b ≤ ``eff_b_target``, so the interval also holds the uncertainty of
    where the cut falls, which dominates at small eff_b.

    Returns:
        (eff_s of the sample, lower end, upper end); all NaN if the point is unresolved.

    Example:
        >>> rng = np.random.default_rng(2)
        >>> scores = np.concatenate([rng.normal(1, 1, 5000), rng.normal(-1, 1, 5000)])
        >>> e, lo, hi = working_point_interval(scores, np.repeat([1, 0], 5000), 1e-2)
        >>> lo < e < hi
        True
    """
    where = "working_point_interval"
    _check_bootstrap(resamples, level, where)
    ev = _events(scores, labels, weights, where)
    wp = _working_point(ev, float(eff_b_target), min_background, where)
    if not wp.resolved:
        return math.nan, math.nan, math.nan
    _, eff_s = _bootstrap(ev, resamples, seed, np.array([float(eff_b_target)]))
    return (wp.eff_s, *_interval(eff_s[:, 0], level))


def mean_working_point_interval(
    samples: Sequence[tuple[np.ndarray, np.ndarray]],
    eff_b_target: float,
    min_background: float = 10,
    resamples: int = 200,
    seed: int = 0,
    level: float = 0.68,
) -> tuple[float, float, float]:
    """The mean over signal samples of eff_s at eff_b ≤ ``eff_b_target``, with a bootstrap
    interval of that mean, for samples that share one background.

    ``samples`` holds per signal sample (its signal scores, the background's scores); every
    background array scores the same events in the same order (e.g. under that sample's mass
    hypothesis). Each resample draws the background once, shared by every sample, and each
    signal sample on its own, re-derives every sample's cut and averages: the interval holds
    the correlation through the shared background, and the independent signal samples' errors
    average down, as those of a mean do (unlike the mean of per-sample intervals).

    Returns:
        (the mean eff_s, lower end, upper end); all NaN if any sample's point is unresolved.

    Example:
        >>> rng = np.random.default_rng(3)
        >>> bkg = rng.normal(-1, 1, 5000)
        >>> samples = [(rng.normal(1, 1, 1000), bkg), (rng.normal(1.5, 1, 1000), bkg + 0.1)]
        >>> m, lo, hi = mean_working_point_interval(samples, 1e-2)
        >>> lo < m < hi
        True
    """
    where = "mean_working_point_interval"
    _check_bootstrap(resamples, level, where)
    if not samples:
        raise DetlearnError(f"{where}: no signal samples")
    n_bkg = len(samples[0][1])
    events, central = [], []
    for sig, bkg in samples:
        if len(bkg) != n_bkg:
            raise DetlearnError(
                f"{where}: every sample's background must score the same {n_bkg} events, "
                f"got {len(bkg)}"
            )
        labels = np.concatenate([np.ones(len(sig)), np.zeros(n_bkg)])
        ev = _events(np.concatenate([sig, bkg]), labels, None, where)
        wp = _working_point(ev, float(eff_b_target), min_background, where)
        if not wp.resolved:
            return math.nan, math.nan, math.nan
        events.append(ev)
        central.append(wp.eff_s)
    rng = np.random.default_rng(seed)
    target = np.array([float(eff_b_target)])
    means = np.empty(resamples)
    for r in range(resamples):
        bkg_counts = np.bincount(rng.integers(0, n_bkg, n_bkg), minlength=n_bkg)
        eff_s = []
        for ev in events:
            n_sig = ev.n_signal
            sig_counts = np.bincount(rng.integers(0, n_sig, n_sig), minlength=n_sig)
            counts = np.concatenate([sig_counts, bkg_counts])[ev.order]
            s, b = _curve(ev, ev.w * counts)
            k = int(_loosest(s, b, target)[0])
            eff_s.append(s[k] / s[-1] if k >= 0 else math.nan)
        means[r] = np.mean(eff_s)
    return (float(np.mean(central)), *_interval(means, level))


def _min_misclassification(ev: _Events) -> WorkingPoint:
    s, b = _curve(ev, ev.w)
    k = int(np.argmin(b + s[-1] - s))
    wp = _point(ev, k, None, "")
    note = f"minimum (FP + FN) / N = {wp.misclassification:.4g} at threshold {wp.threshold:.6g}"
    return replace(wp, note=note)


def min_misclassification_point(
    scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None
) -> WorkingPoint:
    """The cut minimizing the misclassified fraction (FP + FN) / N at the sample's class mix.

    FP: background passing, FN: signal failing, N: all events (sums of weights with weights).
    Among equally good cuts the tightest is returned. For two equal-width Gaussian score
    distributions of equal size the cut lands at their midpoint.

    Example:
        >>> wp = min_misclassification_point([0.1, 0.2, 0.6, 0.5, 0.55, 0.9], [0, 0, 0, 1, 1, 1])
        >>> wp.threshold, round(wp.misclassification, 4)  # one background event passes
        (0.5, 0.1667)
    """
    return _min_misclassification(_events(scores, labels, weights, "min_misclassification_point"))


def summarize(
    scores: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray | None = None,
    targets: Sequence[float] = (1e-2, 1e-3, 1e-4),
    resamples: int = 200,
    seed: int = 0,
    level: float = 0.68,
    min_background: float = 10,
) -> dict[str, Any]:
    """Everything above for one classifier on one test set, as a JSON-ready dict.

    One bootstrap (``resamples``, ``seed``) serves the AUC and every working point, so the
    intervals equal those of :func:`auc_interval` and :func:`working_point_interval` with the
    same arguments. NaN and inf become None.

    Returns:
        ``n_signal``, ``n_background`` (events), ``weighted``, ``auc`` with ``auc_lo`` /
        ``auc_hi`` (central ``level`` of the bootstrap), ``level``, ``resamples``, ``seed``,
        ``min_misclassification`` (a :class:`WorkingPoint` dict) and ``working_points``: one
        :class:`WorkingPoint` dict per target, with the bootstrap ``eff_s_lo`` / ``eff_s_hi``.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> scores = np.concatenate([rng.normal(1, 1, 5000), rng.normal(-1, 1, 5000)])
        >>> m = summarize(scores, np.repeat([1, 0], 5000), resamples=20)
        >>> [(w["eff_b_target"], w["resolved"], w["eff_s"]) for w in m["working_points"]][1:]
        [(0.001, False, None), (0.0001, False, None)]
    """
    where = "summarize"
    _check_bootstrap(resamples, level, where)
    ev = _events(scores, labels, weights, where)
    targets_arr = np.asarray(targets, dtype=np.float64).ravel()
    points = [_working_point(ev, float(t), min_background, where) for t in targets_arr]
    aucs, eff_s = _bootstrap(ev, resamples, seed, targets_arr)
    auc_lo, auc_hi = _interval(aucs, level)
    rows = []
    for j, wp in enumerate(points):
        lo, hi = _interval(eff_s[:, j], level) if wp.resolved else (math.nan, math.nan)
        rows.append({**asdict(wp), "eff_s_lo": lo, "eff_s_hi": hi})
    return to_jsonable(
        {
            "n_signal": ev.n_signal,
            "n_background": ev.n_background,
            "weighted": ev.weighted,
            "auc": _area(*_curve(ev, ev.w)),
            "auc_lo": auc_lo,
            "auc_hi": auc_hi,
            "level": level,
            "resamples": resamples,
            "seed": seed,
            "min_misclassification": asdict(_min_misclassification(ev)),
            "working_points": rows,
        }
    )
