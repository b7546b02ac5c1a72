# ruff: noqa: ANN001 -- numba kernels: the types are the compiled signatures
"""Compiled (numba) inverses of zuko's rational-quadratic spline, for CPU sampling.

Sampling inverts each flow transform once per sample. In PyTorch every step of the inverse is
a separate pass over the whole block (normalizing K widths and heights, cumulating them,
searching the bin, gathering its knots, the root formula): some 30 passes, memory-bound. Here
one loop does all of it per value while the value's parameters sit in cache. The arithmetic
is zuko's (``MonotonicRQSTransform``: soft-clamped parameters, softmax widths and heights,
exp derivatives, knots at ``bound (2 c_j / c_K - 1)``) and the bin algebra
(:func:`rqs_coefficients`, :func:`rqs_root`) the same definitions the PyTorch path calls;
exponentials in the parameters' precision, knots and root in float64.

- :func:`inverse_per_value`: one spline per value, from its raw conditioner outputs;
- :func:`inverse_piecewise`: the same, the conditioner being a piecewise-affine function of
  one sampled feature (a coupling layer of two features), evaluated inside the loop;
- :func:`inverse_shared`: splines shared by rows of values, from per-bin coefficient tables
  (a one-feature flow: the conditioner runs once per context row).
"""

from __future__ import annotations

import math
import threading
from typing import Any

import numba
import numpy as np

__all__ = [
    "inverse_per_value",
    "inverse_piecewise",
    "inverse_shared",
    "rqs_coefficients",
    "rqs_root",
]

# Values per parallel work item (each item allocates its scratch once).
_BLOCK = 4096
# numba's default (workqueue) thread pool must not be entered by two threads at once.
_LOCK = threading.Lock()


def rqs_coefficients(x0: Any, x1: Any, y0: Any, y1: Any, d0: Any, d1: Any) -> tuple[Any, ...]:
    """A bin's inverse coefficients (y_k, x_k, w_k, a_k, D_k, E_k, s_k) from its knots.

    Plain arithmetic, so one definition serves PyTorch tensors (eager sampling) and, compiled,
    the kernels below.
    """
    w, dy = x1 - x0, y1 - y0
    s = dy / w
    return y0, x0, w, dy * (s - d0), d0 + d1 - 2 * s, dy * d0, s


def rqs_root(y: Any, y0: Any, x0: Any, w: Any, a: Any, dd: Any, e: Any, s: Any) -> Any:
    r"""The inverse x of y in the bin of coefficients (:func:`rqs_coefficients`).

    zuko's root (Durkan et al. 2019, eq. 29) without cancellation: with
    :math:`\delta = y - y_k`, :math:`t = \delta D_k`, :math:`b = E_k - t`,

    .. math:: x = x_k + w_k \frac{2 s_k \delta}{b + \sqrt{b^2 + 4 (a_k + t) s_k \delta}}
    """
    delta = y - y0
    t = delta * dd
    b = e - t
    sd = s * delta
    return x0 + w * (2 * sd / (b + (b * b + 4 * (a + t) * sd) ** 0.5))


_coefficients = numba.njit(inline="always")(rqs_coefficients)
_root = numba.njit(inline="always")(rqs_root)


@numba.njit(inline="always", fastmath=True)
def _invert(p, y, bins, bound, scale, e, c):  # pragma: no cover - compiled
    """p: 3K - 1 raw parameters (widths, heights, inner derivatives); e [2K], c [2, K + 1]."""
    one = p.dtype.type(1)
    sc = p.dtype.type(scale)
    for j in range(2 * bins):  # independent exponentials first: this loop vectorizes
        raw = p[j]
        e[j] = math.exp(raw / (one + abs(raw) * sc))
    c[0, 0] = 0.0
    c[1, 0] = 0.0
    for j in range(bins):  # c[0]: cumulated widths, c[1]: cumulated heights
        c[0, j + 1] = c[0, j] + e[j]
        c[1, j + 1] = c[1, j] + e[bins + j]
    # Knot j sits at bound (2 c_j / c_K - 1): below y where c_j < tau.
    tau = c[1, bins] * (y / bound + 1) / 2
    k = 0
    while k < bins - 1 and c[1, k + 1] < tau:
        k += 1
    y0 = bound * (2 * c[1, k] / c[1, bins] - 1)
    y1 = bound * (2 * c[1, k + 1] / c[1, bins] - 1)
    x0 = bound * (2 * c[0, k] / c[0, bins] - 1)
    x1 = bound * (2 * c[0, k + 1] / c[0, bins] - 1)
    d0 = 0.0 if k == 0 else float(p[2 * bins + k - 1])
    d1 = 0.0 if k == bins - 1 else float(p[2 * bins + k])
    d0 = math.exp(d0 / (1 + abs(d0) * scale / 2))
    d1 = math.exp(d1 / (1 + abs(d1) * scale / 2))
    k0, k1, k2, k3, k4, k5, k6 = _coefficients(x0, x1, y0, y1, d0, d1)
    return _root(y, k0, k1, k2, k3, k4, k5, k6)


@numba.njit(parallel=True, cache=True)
def _per_value(phi, y, out, bins, bound, scale):  # pragma: no cover - compiled
    n, features = y.shape
    total = 3 * bins - 1
    for blk in numba.prange((n + _BLOCK - 1) // _BLOCK):
        e = np.empty(2 * bins, phi.dtype)
        c = np.empty((2, bins + 1))
        for i in range(blk * _BLOCK, min(n, (blk + 1) * _BLOCK)):
            for f in range(features):
                yi = float(y[i, f])
                if -bound < yi <= bound:
                    p = phi[i, f * total : (f + 1) * total]
                    out[i, f] = _invert(p, yi, bins, bound, scale, e, c)
                else:
                    out[i, f] = yi


@numba.njit(parallel=True, cache=True)
def _piecewise(kinks, rows, h, y, out, bins, bound, scale):  # pragma: no cover - compiled
    n, features = y.shape
    total = 3 * bins - 1
    width = features * total
    for blk in numba.prange((n + _BLOCK - 1) // _BLOCK):
        e = np.empty(2 * bins, rows.dtype)
        c = np.empty((2, bins + 1))
        p = np.empty(width, rows.dtype)
        for i in range(blk * _BLOCK, min(n, (blk + 1) * _BLOCK)):
            hi = h[i]
            lo, up = 0, kinks.shape[0]  # the piece: number of kinks below hi
            while lo < up:
                mid = (lo + up) // 2
                if kinks[mid] < hi:
                    lo = mid + 1
                else:
                    up = mid
            r = rows[lo]
            dh = hi - r[0]
            for j in range(width):
                p[j] = r[1 + j] + r[1 + width + j] * dh
            for f in range(features):
                yi = float(y[i, f])
                if -bound < yi <= bound:
                    q = p[f * total : (f + 1) * total]
                    out[i, f] = _invert(q, yi, bins, bound, scale, e, c)
                else:
                    out[i, f] = yi


@numba.njit(parallel=True, cache=True)
def _shared(knots, table, y, out):  # pragma: no cover - compiled
    rows, n = y.shape
    bins = knots.shape[1] - 1
    for r in numba.prange(rows):
        for i in range(n):
            yi = float(y[r, i])
            if not (knots[r, 0] < yi <= knots[r, bins]):
                out[r, i] = yi
                continue
            lo, hi = 0, bins  # knots[r, lo] < yi <= knots[r, hi]
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if knots[r, mid] < yi:
                    lo = mid
                else:
                    hi = mid
            c = table[r * bins + lo]
            out[r, i] = _root(yi, c[0], c[1], c[2], c[3], c[4], c[5], c[6])


def inverse_per_value(phi: np.ndarray, y: np.ndarray, bound: float, slope: float) -> np.ndarray:
    """The spline inverse of each value ``y`` [N, F] under its own raw parameters ``phi``.

    ``phi`` [N, F (3K - 1)] holds the conditioner's outputs per value, per feature K widths,
    K heights and K - 1 inner derivatives (zuko's order). ``bound`` and ``slope`` are the
    spline's. Values outside (-bound, bound] map to themselves.
    """
    bins = (phi.shape[1] // y.shape[1] + 1) // 3
    out = np.empty_like(y)
    with _LOCK:
        _per_value(phi, y, out, bins, float(bound), 2.0 / abs(math.log(slope)))
    return out


def inverse_piecewise(
    kinks: np.ndarray, rows: np.ndarray, h: np.ndarray, y: np.ndarray, bound: float, slope: float
) -> np.ndarray:
    """:func:`inverse_per_value` with ``phi`` a piecewise-affine function of ``h`` [N].

    ``kinks`` [P - 1] and ``rows`` [P, 1 + 2 F (3K - 1)] are the table of
    :func:`detlearn.models.flows._piecewise_linear`: on piece p (``kinks`` below h),
    ``phi = rows[p, 1 : 1 + m] + rows[p, 1 + m :] (h - rows[p, 0])``, m = F (3K - 1).
    """
    bins = ((rows.shape[1] - 1) // 2 // y.shape[1] + 1) // 3
    out = np.empty_like(y)
    with _LOCK:
        _piecewise(kinks, rows, h, y, out, bins, float(bound), 2.0 / abs(math.log(slope)))
    return out


def inverse_shared(knots: np.ndarray, table: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The spline inverse of values ``y`` [R, n], row r's values under row r's spline.

    ``knots`` [R, K + 1] are each spline's vertical knots and ``table`` [R K, 7] the per-bin
    inverse coefficients of :func:`rqs_coefficients`, row r's bins at r K ... .
    Values outside (knots[r, 0], knots[r, K]] map to themselves.
    """
    out = np.empty_like(y)
    with _LOCK:
        _shared(knots, table, y, out)
    return out
