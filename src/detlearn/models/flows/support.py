r"""The support bijection: a physical target's support mapped onto the real line.

A fixed (untrained) map in front of the flow, per feature:

============  ===========================  =======================================
bounds        s(x)                         log|ds/dx|
============  ===========================  =======================================
none          x                            0
lower ``a``   log(x - a)                   -log(x - a)
upper ``b``   -log(b - x)                  -log(b - x)
both          log(x - a) - log(b - x)      log(b - a) - log(x - a) - log(b - x)
============  ===========================  =======================================

Every map is increasing. A target with ``relative_to`` a context column c (> 0) is first
divided by c, its bounds alike: ``log((x - a) / c)``, ``x / c`` unbounded. The inverse is exact
to float rounding; samples are clamped to the first representable value inside the bound, so
none is unphysical (the density stays normalized: no rejection).

Example:
    >>> s = Support([0.0], [None], [None])
    >>> x = torch.tensor([[0.5], [2.0]]); c = torch.ones(2, 1)
    >>> y, ladj = s.forward(x, c)
    >>> torch.allclose(s.inverse(y, c), x)
    True
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

__all__ = ["Support"]

# exp() of more than this overflows float32 (max ~3.4e38 = exp(88.7)); clamping the
# pre-image keeps extreme latent noise finite instead of producing inf.
_MAX_LOG = 80.0


def _inside(bound: float, toward: float) -> float:
    """The float32 value nearest to ``bound`` strictly inside the support (a normal number)."""
    b = np.float32(bound)
    step = np.nextafter(b, np.float32(toward)) - b
    tiny = np.finfo(np.float32).tiny
    # At bound 0 nextafter gives a subnormal, which flush-to-zero hardware reads as 0.
    return float(b + np.sign(step) * max(abs(step), tiny))


class Support:
    """The support maps of F targets.

    Arguments:
        lower: per-feature physical lower bound, or None (unbounded below).
        upper: per-feature physical upper bound, or None (unbounded above).
        relative: per feature, the index of the context column it is measured in units of,
            or None.
    """

    def __init__(
        self,
        lower: list[float | None],
        upper: list[float | None],
        relative: list[int | None],
    ) -> None:
        self.lower, self.upper, self.relative = list(lower), list(upper), list(relative)
        # Innermost representable values, so clamped samples stay strictly inside the support.
        self._lo_in = [None if lo is None else _inside(lo, math.inf) for lo in self.lower]
        self._hi_in = [None if hi is None else _inside(hi, -math.inf) for hi in self.upper]

    def _log_units(self, c: Tensor) -> list[Tensor | None]:
        """Per target, log of its unit [...] from the physical context c [..., C], or None."""
        return [None if k is None else torch.log(c[..., k]) for k in self.relative]

    def forward(self, x: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """Physical x [N, F] (context c [N, C]) -> unbounded y [N, F], sum_j log|dy_j/dx_j| [N].

        A relative target's unit c_k shifts a one-sided log map by -+log c_k (its Jacobian
        unchanged) and divides an unbounded target (Jacobian 1 / c_k); a two-sided map is
        scale-free.
        """
        ys, ladj = [], torch.zeros_like(x[:, 0])
        for j, lc in enumerate(self._log_units(c)):
            xj, lo, hi = x[:, j], self.lower[j], self.upper[j]
            # Clamping first keeps log() finite (and its gradient NaN-free) for points on or
            # outside a bound; log_prob masks those points to -inf afterwards.
            if lo is not None:
                xj = xj.clamp(min=self._lo_in[j])
            if hi is not None:
                xj = xj.clamp(max=self._hi_in[j])
            if lo is None and hi is None:
                if lc is not None:
                    xj, ladj = xj * torch.exp(-lc), ladj - lc
                ys.append(xj)
            elif hi is None:
                log_d = torch.log(xj - lo)
                ys.append(log_d if lc is None else log_d - lc)
                ladj = ladj - log_d
            elif lo is None:
                log_d = torch.log(hi - xj)
                ys.append(-log_d if lc is None else lc - log_d)
                ladj = ladj - log_d
            else:
                log_a, log_b = torch.log(xj - lo), torch.log(hi - xj)
                ys.append(log_a - log_b)
                ladj = ladj + math.log(hi - lo) - log_a - log_b
        return torch.stack(ys, dim=-1), ladj

    def inverse(self, y: Tensor, c: Tensor) -> Tensor:
        """Inverse of :meth:`forward`: y [..., F] with c [..., C] broadcastable to it -> x,
        strictly inside the support."""
        xs = []
        for j, lc in enumerate(self._log_units(c)):
            yj, lo, hi = y[..., j], self.lower[j], self.upper[j]
            if lo is None and hi is None:
                xs.append(yj if lc is None else yj * torch.exp(lc))
            elif hi is None:
                yj = yj if lc is None else yj + lc
                xs.append((lo + torch.exp(yj.clamp(max=_MAX_LOG))).clamp(min=self._lo_in[j]))
            elif lo is None:
                yj = yj if lc is None else yj - lc
                xs.append((hi - torch.exp((-yj).clamp(max=_MAX_LOG))).clamp(max=self._hi_in[j]))
            else:
                # Measure from the nearer bound: sigmoid(y) -> 1 loses the digits near `hi`.
                width = hi - lo
                xj = torch.where(
                    yj > 0, hi - width * torch.sigmoid(-yj), lo + width * torch.sigmoid(yj)
                )
                xs.append(xj.clamp(min=self._lo_in[j], max=self._hi_in[j]))
        return torch.stack(xs, dim=-1)

    def outside(self, x: Tensor, c: Tensor) -> Tensor:
        """Boolean [N, F]: the value is not finite or not strictly inside its bounds, or the
        context column it is relative to is not > 0. (No in-place updates: the ONNX exporter
        traces this into ``log_prob.onnx``.)"""
        columns = []
        for j, (k, lo, hi) in enumerate(zip(self.relative, self.lower, self.upper, strict=True)):
            bad = ~torch.isfinite(x[:, j])
            if k is not None:
                bad = bad | ~(c[:, k] > 0)
            if lo is not None:
                bad = bad | (x[:, j] <= lo)
            if hi is not None:
                bad = bad | (x[:, j] >= hi)
            columns.append(bad)
        return torch.stack(columns, dim=-1)
