"""The HB/HE pulse: its shape, time slew, and the fraction of charge in each time sample.

A gamma-shaped rise plus an exponential tail fitted to the 2017 SiPM shape [S9], delayed by the
time slew clip(a + b ln(Q/fC), 0, t_max) [S31]. Shared by the simulator and the MAHI-lite fit.
"""

from __future__ import annotations

import numpy as np

from detlearn.recipes.hcal_energy.config import SAMPLES, SOI, TS_NS, HcalSimConfig

__all__ = [
    "fractions_by_ts",
    "pulse_density",
    "pulse_fractions",
    "pulse_shape",
    "pulse_survival",
    "time_slew",
]


def time_slew(charge: np.ndarray, cfg: HcalSimConfig) -> np.ndarray:
    """Delay of a pulse of total ``charge`` [fC]: clip(a + b ln(max(Q, 1 fC)), 0, t_max) [ns].

    Float32 for float32 charges, else float64.

    Example:
        >>> time_slew(np.array([1.0, 1600.0, 1e5]), HcalSimConfig()).round(2).tolist()
        [12.0, 0.54, 0.0]
    """
    q = np.asarray(charge)
    log_q = np.log(np.maximum(q, 1.0, dtype=np.result_type(q.dtype, np.float32)))
    return np.clip(cfg.slew_intercept + cfg.slew_slope * log_q, 0.0, cfg.slew_max)


def pulse_shape(u: np.ndarray, cfg: HcalSimConfig) -> np.ndarray:
    """Survival function S(u) of a unit pulse: the fraction of its charge after its time u [ns].

    With u₀ = ``pulse_start``, τ = ``pulse_rise``, f = ``pulse_tail_fraction``, τ_t =
    ``pulse_tail_tau`` and x = max(u − u₀, 0),

        S(u) = (1 − f) e^(−x/τ) (1 + x/τ + x²/2τ²) + f e^(−x/τ_t):

    a gamma-shaped rise ((t/τ)² e^(−t/τ)) plus an exponential tail. Float32 in, float32 out.

    Example:
        >>> pulse_shape(np.array([0.0, 30.0]), HcalSimConfig()).round(3).tolist()
        [1.0, 0.368]
    """
    u = np.asarray(u)
    return _shape_in_place(u.astype(np.result_type(u.dtype, np.float32)), cfg)


def _shape_in_place(u: np.ndarray, cfg: HcalSimConfig) -> np.ndarray:
    """:func:`pulse_shape` overwriting the float array ``u`` with S(u); returns it.

    In place: this runs on every signal pulse, and fresh temporaries cost as much as the math.
    (``out=`` keeps 0-d arrays arrays.)
    """
    f = cfg.pulse_tail_fraction
    x = u
    x -= cfg.pulse_start
    np.maximum(x, 0.0, out=x)
    tail = np.multiply(x, -1.0 / cfg.pulse_tail_tau, out=np.empty_like(x))
    np.exp(tail, out=tail)
    tail *= f
    w = x
    w *= 1.0 / cfg.pulse_rise
    poly = np.multiply(w, 0.5, out=np.empty_like(w))
    poly += 1.0
    poly *= w
    poly += 1.0
    survival = np.negative(w, out=w)
    np.exp(survival, out=survival)
    survival *= 1.0 - f
    survival *= poly
    survival += tail
    return survival


def pulse_density(u: np.ndarray, cfg: HcalSimConfig) -> np.ndarray:
    """Density p(u) = −dS/du of a unit pulse at its times u [1/ns] (:func:`pulse_shape`).

        p(u) = (1 − f) x² e^(−x/τ) / 2τ³ + f e^(−x/τ_t) / τ_t   for u ≥ u₀, else 0.

    Example:
        >>> pulse_density(np.array([0.0, 30.0]), HcalSimConfig()).round(4).tolist()
        [0.0, 0.025]
    """
    x = np.asarray(u) - cfg.pulse_start
    xs = np.maximum(x, 0.0)
    w = xs * (1.0 / cfg.pulse_rise)
    f = cfg.pulse_tail_fraction
    main = (1.0 - f) * (0.5 / cfg.pulse_rise) * w * w * np.exp(-w)
    tail = (f / cfg.pulse_tail_tau) * np.exp(xs * (-1.0 / cfg.pulse_tail_tau))
    return np.where(x >= 0, main + tail, 0.0).astype(main.dtype, copy=False)


def _survival_by_edge(
    shift: np.ndarray | float, cfg: HcalSimConfig, first: int, last: int
) -> np.ndarray:
    """:func:`pulse_survival` edge-major: ``(last − first + 1, *shape(shift))``.

    Edge-major so that every step runs over contiguous rows of pulses: broadcasting a per-pulse
    value over a short trailing axis, numpy runs one small inner loop per pulse, several times
    slower.
    """
    shift = np.asarray(shift)
    dtype = np.result_type(shift.dtype, np.float32)
    shift = shift.astype(dtype, copy=False)
    edges = (cfg.phase + TS_NS * (np.arange(first, last + 1) - SOI)).astype(dtype)
    # Edges before the onset of every pulse (S = 1) are skipped: for a signal pulse that is a
    # third of them.
    earliest = shift.min(initial=np.inf)
    skip = int(np.searchsorted(edges - earliest, cfg.pulse_start, side="right"))
    survival = np.empty((len(edges), *shift.shape), dtype=dtype)
    survival[:skip] = 1.0
    rest = survival[skip:]
    np.subtract(edges[skip:].reshape(-1, *[1] * shift.ndim), shift, out=rest)
    _shape_in_place(rest, cfg)
    return survival


def fractions_by_ts(
    shift: np.ndarray | float, cfg: HcalSimConfig, first: int = 0, last: int = SAMPLES
) -> np.ndarray:
    """:func:`pulse_fractions` TS-major: ``(last − first, *shape(shift))``, contiguous."""
    survival = _survival_by_edge(shift, cfg, first, last)
    return survival[:-1] - survival[1:]


def pulse_survival(
    shift: np.ndarray | float, cfg: HcalSimConfig, first: int = 0, last: int = SAMPLES
) -> np.ndarray:
    """:func:`pulse_shape` at the edges of TS ``first`` .. ``last``, the pulse delayed ``shift``.

    The edge of TS i is at e_i = ``phase`` + 25 (i − SOI) ns in the undelayed pulse's time, so
    S is evaluated at e_i − shift.

    Returns:
        ``(*shape(shift), last − first + 1)``, float32 for a float32 ``shift``, else float64.
    """
    return np.moveaxis(_survival_by_edge(shift, cfg, first, last), 0, -1)


def pulse_fractions(
    shift: np.ndarray | float, cfg: HcalSimConfig, first: int = 0, last: int = SAMPLES
) -> np.ndarray:
    """Fraction of a pulse's total charge in TS ``first`` .. ``last`` − 1, delayed by ``shift`` ns.

    TS i collects S(e_i − shift) − S(e_(i+1) − shift), S the pulse's survival function
    (:func:`pulse_shape`, evaluated by :func:`pulse_survival`). The defaults
    reproduce the 2017 SiPM table at phase 10 ns [S9] within 0.003 per TS (0.002, 0.733, 0.172,
    0.045, 0.023, 0.012, 0.006, 0.003 from SOI − 1). A pileup pulse of BX k has shift 25k.

    Returns:
        ``(*shape(shift), last − first)`` fractions (float32 for a float32 ``shift``).

    Example:
        >>> pulse_fractions(0.0, HcalSimConfig()).round(3).tolist()
        [0.0, 0.0, 0.002, 0.733, 0.172, 0.045, 0.023, 0.012]
    """
    return np.moveaxis(fractions_by_ts(shift, cfg, first, last), 0, -1)
