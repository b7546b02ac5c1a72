"""Fast per-context sampling: the conditioner once per context row, the inverse per sample.

:meth:`~detlearn.models.flows.ConditionalFlow.sample` computes everything that depends on the
context alone once per context row, and per sample only what reads an already sampled feature:

- one feature: every zuko flow kind is element-wise, so the whole conditioner runs per context
  row; per sample the spline inverse finds its bin by binary search and reads the bin's
  coefficients from a per-context table (:class:`BinarySearchRQS`);
- several features (autoregressive: maf, nsf with ``passes=None``; coupling: realnvp,
  ``passes=2``): the conditioner also reads x. Its first pass and every unit of the masked
  network that sees no sampled feature run per context row (:class:`MaskedPass`); the rest
  per sample. Where that is a ReLU network of a single sampled feature (two features, as in
  the mass-grid recipe), it is the piecewise-affine function of that feature which it
  exactly is, tabulated once per context row (:func:`piecewise_linear`).

On CPU the spline inverses of NSF run in compiled loops (:mod:`._kernels`, numba): one pass per
value instead of some 30 PyTorch passes over the block, the tabulated conditioner evaluated
inside the same loop. On other devices, under autograd and when traced for ONNX the PyTorch
form runs. The result is zuko's inverse up to float rounding (relative 1e-4), checked by the
tests.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
import zuko
from torch import Tensor
from zuko.flows.autoregressive import MaskedAutoregressiveTransform
from zuko.nn import MaskedLinear
from zuko.utils import unpack

from detlearn.models.flows import _kernels as kernels

__all__ = ["BLOCK", "ROW_BLOCK", "BinarySearchRQS", "MaskedPass", "inverse_at", "piecewise_linear"]

# Samples per block in ConditionalFlow.sample. Smaller blocks keep the intermediate tensors in
# cache but run more (thread-parallel) operations per sample, each ending at a barrier that
# waits for a descheduled thread when other processes share the cores; measured best on 2 cores
# for 2-D (one row) sampling. A block of one context row with this many samples also tabulates
# its conditioner (piecewise_linear).
BLOCK = 65536
# Samples per block of several context rows (fewer samples per row than BLOCK, the KLM
# layout). Each block runs the conditioner on its rows and some 100 small operations on
# [rows, bins] tensors, each a parallel region that wakes the thread pool and ends at a
# barrier; larger blocks amortize them. Measured with sleeping pools, where a wake-up costs
# most (KLM sampling on 2 idle cores: 8.2 M photons/s at 2^16, 10 at 2^18, 12.4 at 2^20, median
# of 3 runs; benchmarks/klm_sample.py). The block's tensors stay a few MB.
ROW_BLOCK = 1 << 20


class BinarySearchRQS(zuko.transforms.MonotonicRQSTransform):
    r"""zuko's rational-quadratic spline with a lean inverse for sampling.

    zuko finds the bin by comparing a value with every knot and summing (exportable to ONNX,
    where ``searchsorted`` has no operator), then gathers six knot parameters from tensors
    broadcast to [samples, contexts, knots]. Eager calls instead

    - for a spline shared by many values (knots [..., 1, K + 1] against values [..., n], the
      layout of :meth:`ConditionalFlow.sample`) find the bin by binary search
      (``torch.searchsorted``: the same count of knots below the value) and read the bin's
      seven inverse coefficients in one row of a per-bin table, built once per transform;
    - for one spline per value, gather that bin's knots.

    The bin algebra is zuko's (Durkan et al. 2019, eq. 29), the root written without
    cancellation (:func:`._kernels.rqs_root`, shared with the compiled kernels).

    Traced calls (ONNX export) keep zuko's form.
    """

    _table: Tensor | None = None

    @staticmethod
    def searchsorted(seq: Tensor, value: Tensor) -> Tensor:
        if torch.jit.is_tracing() or seq.shape[-2] != 1 or seq.shape[:-2] != value.shape[:-1]:
            return zuko.transforms.MonotonicRQSTransform.searchsorted(seq, value)
        return torch.searchsorted(seq.squeeze(-2), value)

    def _inverse(self, y: Tensor) -> Tensor:
        if torch.jit.is_tracing():
            return super()._inverse(y)
        h, v, d = self.horizontal, self.vertical, self.derivatives
        shared = v.shape[:-1] != y.shape
        if shared and self._table is None:
            knots = (h[..., :-1], h[..., 1:], v[..., :-1], v[..., 1:], d[..., :-1], d[..., 1:])
            cols = kernels.rqs_coefficients(*knots)
            self._table = torch.stack(cols, dim=-1).reshape(-1, len(cols))
        if shared and _compiled(y, self._table):
            knots = v.reshape(-1, self.bins + 1).contiguous().numpy()
            values = y.reshape(len(knots), -1).contiguous().numpy()
            out = kernels.inverse_shared(knots, self._table.numpy(), values)
            return torch.from_numpy(out).view(y.shape)
        k = self.searchsorted(v, y) - 1
        inside = (k >= 0) & (k < self.bins)
        k = k.clamp_(0, self.bins - 1)
        if not shared:  # one spline per value: gather its bin's knots
            kk = torch.stack((k, k + 1), dim=-1)
            knots = (t.gather(-1, kk).unbind(-1) for t in (h, v, d))
            (x0, x1), (y0, y1), (d0, d1) = knots
            coef = kernels.rqs_coefficients(x0, x1, y0, y1, d0, d1)
        else:  # a spline shared by many values: look its bin up in the per-bin table
            lead = v.shape[:-1]
            first = torch.arange(0, lead.numel() * self.bins, self.bins, device=y.device)
            row = k + first.view(lead)
            coef = self._table.index_select(0, row.flatten()).view(*row.shape, -1).unbind(-1)
        # Outside the spline domain the map is the identity; evaluating the bin at its own
        # knot there keeps the discarded branch finite (and its gradient).
        y_in = torch.where(inside, y, coef[0])
        return torch.where(inside, kernels.rqs_root(y_in, *coef), y)


# zuko's spline domain [-bound, bound] and its bound on the log-derivatives and bin sizes.
_RQS_BOUND_SLOPE = tuple(
    inspect.signature(zuko.transforms.MonotonicRQSTransform).parameters[name].default
    for name in ("bound", "slope")
)


def _compiled(*tensors: Tensor) -> bool:
    """Whether the numba kernels can take these tensors (CPU, no autograd, not being traced)."""
    return not torch.jit.is_tracing() and all(
        t.device.type == "cpu" and not t.requires_grad and t.dtype in (torch.float32, torch.float64)
        for t in tensors
    )


def _per_context(t: zuko.lazy.LazyTransform, phi: Tensor) -> Callable[[Tensor], Tensor]:
    """The univariate inverse of ``t`` at fixed context rows: z [B, n, F_k] -> x [B, n, F_k].

    ``phi`` [B, F_k * params] are its parameters, shared by the n samples of each row.
    """
    params = unpack(phi.unflatten(-1, (-1, t.total)), t.shapes)
    # Parameters [B, F_k, 1, ...] against values [B, F_k, n]: the samples run along the last
    # dimension, the layout of the spline's binary search.
    f = t.univariate(*(p.unsqueeze(2) for p in params))
    return lambda z: f.inv(z.transpose(1, 2).contiguous()).transpose(1, 2)


def piecewise_linear(steps: list[Any]) -> tuple[Tensor, Tensor]:
    """A ReLU network of one scalar input, as the piecewise-affine function it is.

    ``steps`` alternate linear layers (weight [out, in], bias [1, 1, out]) and ReLUs, the first
    layer taking one input. Between consecutive kinks every unit is either on or off, so the
    output is affine there. The kinks are found layer by layer: between the kinks found so far
    a unit's pre-activation is affine, so it crosses zero at most once per piece (the two
    unbounded end pieces included). Evaluated in float64.

    Returns:
        the sorted kinks [P - 1] (in the network's dtype) and, per piece, a row
        (m, f(m) [out], f'(m) [out]) [P, 1 + 2 out] at an anchor m inside it, so that
        f(x) = f(m) + f'(m) (x - m) on the piece of x.
    """
    layers = [
        (w.double(), b.double().flatten()) for w, b in (s for s in steps if isinstance(s, tuple))
    ]

    def forward(x: Tensor, depth: int) -> tuple[Tensor, Tensor]:
        """Pre-activations of layer ``depth`` at x [P] and their derivatives, [P, units]."""
        h, g = x[:, None], torch.ones_like(x)[:, None]
        for i, (w, b) in enumerate(layers[: depth + 1]):
            if i:
                on = h > 0
                h, g = h * on, g * on
            h, g = h @ w.T + b, g @ w.T
        return h, g

    def probes(kinks: Tensor) -> Tensor:
        """The kinks and one point inside each unbounded end piece."""
        if not len(kinks):
            return torch.tensor([-1.0, 1.0], dtype=torch.float64)
        return torch.cat([kinks[:1] - 1, kinks, kinks[-1:] + 1])

    kinks = torch.zeros(0, dtype=torch.float64)
    for depth in range(len(layers) - 1):
        x = probes(kinks)
        pre, _ = forward(x, depth)
        x0, x1, f0, f1 = x[:-1, None], x[1:, None], pre[:-1], pre[1:]
        root = x0 - f0 * (x1 - x0) / (f1 - f0)
        piece = torch.arange(len(x0))[:, None]
        lo = torch.where(piece == 0, -math.inf, x0)
        hi = torch.where(piece == len(x0) - 1, math.inf, x1)
        kinks = torch.unique(torch.cat([kinks, root[(root > lo) & (root < hi)]]))
    x = probes(kinks)
    anchors = (x[:-1] + x[1:]) / 2
    value, slope = forward(anchors, len(layers) - 1)
    dtype = steps[0][0].dtype
    return kinks.to(dtype), torch.cat([anchors[:, None], value, slope], dim=1).to(dtype)


class MaskedPass:
    """Pass ``k`` of a masked autoregressive inverse, with the contexts fixed.

    The features of order ``k`` depend on the context and on the already inverted features of
    lower order ("known"). Following the masks, every unit of the conditioner network is
    constant per context row (it sees no known feature), varying per sample, or unused here
    (it sees a feature not yet inverted). The constant units are evaluated once, on the B
    context rows, and folded into the biases of the varying units, so a sample pays only for
    the varying ones: in a coupling layer of two features a quarter of the hidden-layer
    product, and nothing at all in the first pass. When the varying units are a ReLU network of
    one known feature and a single context row has at least ``BLOCK`` samples, that network is
    tabulated as the piecewise-affine function it is (:func:`piecewise_linear`): per sample, a
    binary search over its kinks and one affine map.

    Arguments:
        t: the transform.
        c: standardized contexts [B, C].
        k: the pass.
        samples: the number of samples per context row it will invert.
    """

    def __init__(self, t: MaskedAutoregressiveTransform, c: Tensor, k: int, samples: int) -> None:
        self.t = t
        self.todo = (t.order == k).nonzero()[:, 0]
        self.known = (t.order < k).nonzero()[:, 0]
        # Per unit of the current layer (first the inputs x, c): whether it depends on a
        # known feature, on a feature not yet inverted.
        depends = torch.zeros(len(t.order) + c.shape[-1], 2)
        depends[: len(t.order), 0] = t.order < k
        depends[: len(t.order), 1] = t.order >= k
        varying, constant = self.known, len(t.order) + torch.arange(c.shape[-1])
        h = c  # the constant units [B, len(constant)]
        # The varying units' path: (weight [out, in], bias [B, 1, out]) or an activation.
        self.steps: list[Any] = []
        last = len(t.hyper) - 1
        for i, m in enumerate(t.hyper):
            if not isinstance(m, MaskedLinear):
                h = m(h)
                self.steps.append(m)
                continue
            w = m.weight * m.mask
            depends = (m.mask.float() @ depends > 0).float()
            if i < last:
                out_v = (depends[:, 0] > 0) & (depends[:, 1] == 0)
                out_c = ~depends.any(dim=1)
            else:
                out_v = (t.order == k).repeat_interleave(t.total)
                out_c = torch.zeros_like(out_v)
                if not len(varying):
                    out_v, out_c = out_c, out_v
            bias = h @ w[out_v][:, constant].T + m.bias[out_v]
            self.steps.append((w[out_v][:, varying], bias.unsqueeze(1)))
            h = h @ w[out_c][:, constant].T + m.bias[out_c]
            varying, constant = out_v.nonzero()[:, 0], out_c.nonzero()[:, 0]
        self.fixed = None if len(self.known) else _per_context(t, h)
        relu = all(isinstance(m, (MaskedLinear, torch.nn.ReLU)) for m in t.hyper)
        scalar = len(self.known) == 1 and len(c) == 1 and samples >= BLOCK
        self.pieces = piecewise_linear(self.steps) if relu and scalar else None

    def _conditioner(self, x: Tensor) -> Tensor:
        """The parameters [B, n, F_k * params] of the features of order k, given x [B, n, F]."""
        h = x[..., self.known]
        if self.pieces is not None:
            kinks, rows = self.pieces
            row = rows.index_select(0, torch.searchsorted(kinks, h.flatten()))
            out = (rows.shape[1] - 1) // 2
            phi = torch.addcmul(row[:, 1 : 1 + out], row[:, 1 + out :], h.view(-1, 1) - row[:, :1])
            return phi.view(*h.shape[:-1], out)
        for step in self.steps:
            if isinstance(step, tuple):
                h = torch.nn.functional.linear(h, step[0]).add_(step[1])
            else:
                h = step(h)
        return h

    def __call__(self, x: Tensor, z: Tensor) -> Tensor:
        """The features of order k [B, n, F_k] from the known ones in x and noise z [B, n, F]."""
        if self.fixed is not None:
            return self.fixed(z[..., self.todo])
        y = z[..., self.todo]
        if self.t.univariate is BinarySearchRQS and _compiled(x, y):
            flat = y.reshape(-1, len(self.todo)).numpy()
            if self.pieces is not None:
                kinks, rows = (t.numpy() for t in self.pieces)
                h = x[..., self.known].reshape(-1).numpy()
                out = kernels.inverse_piecewise(kinks, rows, h, flat, *_RQS_BOUND_SLOPE)
            else:
                phi = self._conditioner(x).reshape(len(flat), -1).numpy()
                out = kernels.inverse_per_value(phi, flat, *_RQS_BOUND_SLOPE)
            return torch.from_numpy(out).view(y.shape)
        phi = unpack(self._conditioner(x).unflatten(-1, (-1, self.t.total)), self.t.shapes)
        return self.t.univariate(*phi).inv(y)


def inverse_at(t: zuko.lazy.LazyTransform, c: Tensor, samples: int) -> Callable[[Tensor], Tensor]:
    """The inverse of one flow transform at fixed contexts c [B, C]: z [B, n, F] -> [B, n, F].

    Everything that depends on the context alone is computed here, once per context row.
    """
    if not isinstance(t, MaskedAutoregressiveTransform):
        return _per_context(t, t.hyper(c))  # element-wise (one feature)
    passes = [MaskedPass(t, c, k, samples) for k in range(t.passes)]

    def inverse(z: Tensor) -> Tensor:
        x = torch.empty_like(z)
        for p in passes:
            x[..., p.todo] = p(x, z)
        return x

    return inverse
