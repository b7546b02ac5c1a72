r"""Conditional normalizing flows p(x | c) in physical units, with physical support built in.

A :class:`ConditionalFlow` is three maps in a row, from a physical target ``x`` to a latent
``z`` with a standard normal base:

1. **support** (fixed, per feature): ``y = s(x)`` maps the physical support onto the real line:

   ============  ===========================  =======================================
   bounds        s(x)                         log|ds/dx|
   ============  ===========================  =======================================
   none          x                            0
   lower ``a``   log(x - a)                   -log(x - a)
   upper ``b``   -log(b - x)                  -log(b - x)
   both          log(x - a) - log(b - x)      log(b - a) - log(x - a) - log(b - x)
   ============  ===========================  =======================================

   Every map is increasing, so for one target the PIT ``u = Phi(z)`` is the model's CDF.
   A target with ``relative_to`` a context column c (> 0) is first divided by c, its bounds
   alike: ``log((x - a) / c)``, ``x / c`` unbounded. Where a label sets a target's scale (a
   reconstructed mass and the generated one) every label's peak then sits at the same place
   with the same width in flow space, and the flow learns one shape that varies gently with
   the label instead of a peak that moves and narrows across the whole standardized range.
   ``log`` (not the softplus inverse) is used for one-sided bounds because detector
   quantities such as photon delays span decades with long tails: the log brings those tails
   inside the spline domain, whereas softplus is linear far from the bound and would leave the
   tail to the Gaussian base. Its inverse ``a + exp(y)`` is exact to float rounding; samples
   are clamped to the first representable value inside the bound, so none is unphysical.
2. **standardization** (fitted on training data by :meth:`ConditionalFlow.fit_normalization`,
   stored as buffers ``x_mean``, the centre, and ``x_std``, the scale): ``u = (y - centre) /
   scale`` maps the central range [q(1e-4), q(1 - 1e-4)] of the training y onto [-4.5, 4.5],
   so > 99.98 % of the data lie inside zuko's spline domain [-5, 5] and the data span it.
   Outside that domain every spline is the identity, so each nsf transform maps [-5, 5] onto
   itself and a sample lands beyond |u| = 5 only if its base noise does (p = 5.7e-7): a sample
   exceeds the training range by at most half a unit of u, otherwise. A mean/std
   standardization does not bound it: for a skewed target (the mass-grid m_ω, whose log
   distance to the threshold has a long lower tail from the events piled up there) it left
   the data in [-6.4, 1.2] and four units of data-free spline domain above them, where a
   trained flow still put ~1e-3 of its probability, which ``exp`` turned into samples of
   10^3-10^4 GeV (data below 22 GeV) that dominated the held-out means. Contexts are
   standardized by their mean and standard deviation.
3. **the flow** (zuko): ``z = f(u; c)``, trained by maximum likelihood.

``log_prob`` adds the log-Jacobians of 1 and 2, so it is the density in physical units (nats
per unit of x). Sampling draws ``z`` and runs the maps backwards.

Sampling cost: :meth:`ConditionalFlow.sample` computes everything that depends on the context
alone once per context row, and per sample only what reads an already sampled feature:

- one feature: every zuko flow kind is element-wise, so the whole conditioner runs per context
  row; per sample the spline inverse finds its bin by binary search and reads the bin's
  coefficients from a per-context table (:class:`_BinarySearchRQS`);
- several features (autoregressive: maf, nsf with ``passes=None``; coupling: realnvp,
  ``passes=2``): the conditioner also reads x. Its first pass and every unit of the masked
  network that sees no sampled feature run per context row (:class:`_MaskedPass`); the rest
  per sample. Where that is a ReLU network of a single sampled feature (two features, as in
  the mass-grid recipe), it is the piecewise-affine function of that feature which it
  exactly is, tabulated once per context row (:func:`_piecewise_linear`).

On CPU the spline inverses of NSF run in compiled loops (:mod:`._spline_kernels`, numba): one
pass per value instead of some 30 PyTorch passes over the block, the tabulated conditioner
evaluated inside the same loop. On other devices, under autograd and when traced for ONNX
the PyTorch form runs. Samples run in blocks of 2^16 (several context rows, or part of one
row's samples). The result is zuko's inverse up to float rounding (relative 1e-4), checked by
the tests.

Example:
    >>> from detlearn.config import FlowConfig
    >>> flow = ConditionalFlow(1, 2, FlowConfig(kind="nsf", hidden=[16]), lower=[0.0])
    >>> c = torch.randn(5, 2)
    >>> x = flow.sample(c, 100)  # [5, 100, 1], all > 0
    >>> flow.log_prob(x[:, 0], c).shape
    torch.Size([5])
"""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zuko
from torch import Tensor
from zuko.distributions import DiagNormal
from zuko.flows.autoregressive import MaskedAutoregressiveTransform
from zuko.lazy import UnconditionalDistribution
from zuko.nn import MaskedLinear
from zuko.utils import unpack

from detlearn.config import FlowConfig
from detlearn.errors import DetlearnError
from detlearn.models import _spline_kernels as kernels
from detlearn.models import register_model

__all__ = ["ConditionalFlow", "export_sampler_onnx"]

# exp() of more than this overflows float32 (max ~3.4e38 = exp(88.7)); clamping the
# pre-image keeps extreme latent noise finite instead of producing inf.
_MAX_LOG = 80.0

# Samples per block in ConditionalFlow.sample. Smaller blocks keep the intermediate tensors in
# cache but run more (thread-parallel) operations per sample, each ending at a barrier that
# waits for a descheduled thread when other processes share the cores; measured best on 2 cores
# for both 1-D (many rows) and 2-D (one row) sampling. A block of one context row with this many
# samples also tabulates its conditioner (_piecewise_linear).
_CHUNK = 65536

# The standardization maps the central range [q(_TAIL), q(1 - _TAIL)] of each (support-mapped)
# target onto [-_SPAN, _SPAN], inside zuko's spline domain [-5, 5].
_TAIL = 1e-4
_SPAN = 4.5


def _inside(bound: float, toward: float) -> float:
    """The float32 value nearest to ``bound`` strictly inside the support (a normal number)."""
    b = np.float32(bound)
    step = np.nextafter(b, np.float32(toward)) - b
    tiny = np.finfo(np.float32).tiny
    # At bound 0 nextafter gives a subnormal, which flush-to-zero hardware reads as 0.
    return float(b + np.sign(step) * max(abs(step), tiny))


class _BinarySearchRQS(zuko.transforms.MonotonicRQSTransform):
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
    cancellation (:func:`._spline_kernels.rqs_root`, shared with the compiled kernels).

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


def _piecewise_linear(steps: list[Any]) -> tuple[Tensor, Tensor]:
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


class _MaskedPass:
    """Pass ``k`` of a masked autoregressive inverse, with the contexts fixed.

    The features of order ``k`` depend on the context and on the already inverted features of
    lower order ("known"). Following the masks, every unit of the conditioner network is
    constant per context row (it sees no known feature), varying per sample, or unused here
    (it sees a feature not yet inverted). The constant units are evaluated once, on the B
    context rows, and folded into the biases of the varying units, so a sample pays only for
    the varying ones: in a coupling layer of two features a quarter of the hidden-layer
    product, and nothing at all in the first pass. When the varying units are a ReLU network of
    one known feature and a single context row has at least ``_CHUNK`` samples, that network is
    tabulated as the piecewise-affine function it is (:func:`_piecewise_linear`): per sample, a
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
        scalar = len(self.known) == 1 and len(c) == 1 and samples >= _CHUNK
        self.pieces = _piecewise_linear(self.steps) if relu and scalar else None

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
        if self.t.univariate is _BinarySearchRQS and _compiled(x, y):
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


def _inverse_at(t: zuko.lazy.LazyTransform, c: Tensor, samples: int) -> Callable[[Tensor], Tensor]:
    """The inverse of one flow transform at fixed contexts c [B, C]: z [B, n, F] -> [B, n, F].

    Everything that depends on the context alone is computed here, once per context row.
    """
    if not isinstance(t, MaskedAutoregressiveTransform):
        return _per_context(t, t.hyper(c))  # element-wise (one feature)
    passes = [_MaskedPass(t, c, k, samples) for k in range(t.passes)]

    def inverse(z: Tensor) -> Tensor:
        x = torch.empty_like(z)
        for p in passes:
            x[..., p.todo] = p(x, z)
        return x

    return inverse


def _univariate(cfg: FlowConfig) -> dict[str, Any]:
    """The element-wise transform of a flow kind: zuko keyword arguments."""
    if cfg.kind == "nsf":
        return {
            "univariate": _BinarySearchRQS,
            "shapes": [(cfg.bins,), (cfg.bins,), (cfg.bins - 1,)],
        }
    return {}  # maf, realnvp: zuko's MonotonicAffineTransform


def _masked_context_flow(
    features: int, context: int, cfg: FlowConfig, context_mask: Tensor
) -> zuko.flows.Flow:
    """zuko's MAF (orders alternating between transforms, features grouped into ``passes``)
    with each feature's conditioner reading only the context columns ``context_mask`` [F, C]
    allows, through the transforms' adjacency matrices."""
    passes = 2 if cfg.kind == "realnvp" else cfg.passes or features
    passes = min(max(passes, 1), features)
    transforms = []
    for i in range(cfg.transforms):
        order = torch.arange(features) if i % 2 == 0 else torch.arange(features).flip(0)
        group = torch.div(order, math.ceil(features / passes), rounding_mode="floor")
        among = (group[:, None] > group) | torch.eye(features, dtype=torch.bool)
        t = MaskedAutoregressiveTransform(
            features,
            context,
            adjacency=torch.cat([among, context_mask], dim=1),
            hidden_features=list(cfg.hidden),
            **_univariate(cfg),
        )
        t.order = group  # the pass of each feature, as zuko sets it without an adjacency
        transforms.append(t)
    base = UnconditionalDistribution(
        DiagNormal, loc=torch.zeros(features), scale=torch.ones(features), buffer=True
    )
    return zuko.flows.Flow(transforms, base)


@register_model("conditional_flow")
class ConditionalFlow(torch.nn.Module):
    """A conditional flow p(x | c) over ``features`` physical targets given ``context`` inputs.

    Arguments:
        features: number of target features F.
        context: number of context features C (>= 1).
        cfg: flow architecture (kind nsf | maf | realnvp, transforms, bins, hidden, passes).
        lower: per-feature physical lower bound, or None (unbounded below).
        upper: per-feature physical upper bound, or None (unbounded above).
        names: optional names of the target features (used in messages and the spec).
        context_names: optional names of the context features.

    ``cfg.relative_to`` (target name -> context name) models those targets in units of a
    context column (see the module docstring); ``cfg.context_of`` (target name -> context
    names) lets a target's conditioners read only those context columns (zuko's masked
    networks with a context adjacency), so that labels differing only in the others share
    their data; ``cfg.context_noise`` (context name -> standard deviation) adds Gaussian noise
    to those columns as the network reads them, in training only (noise regularization), so
    that a label known at a few grid values is learned as a smooth function that pools
    neighbouring labels' data. The names must be among ``names`` and ``context_names``.

    ``maf`` uses zuko's affine ``MonotonicAffineTransform``, whose log-scale is soft-bounded,
    ``a / (1 + |a| / ln 1000)`` within +-6.9, the role FEDHEX's tanh clamp played. ``realnvp``
    is the same affine transform in coupling form (two autoregressive passes, the conditioned
    half alternating between transforms; ``passes`` does not apply). For F = 1 both reduce to
    a stack of context-dependent affine maps, i.e. a Gaussian in the standardized space.
    """

    kind = "conditional_flow"
    batch_keys = ("target", "context")

    def __init__(
        self,
        features: int,
        context: int,
        cfg: FlowConfig,
        lower: list[float | None] | None = None,
        upper: list[float | None] | None = None,
        *,
        names: list[str] | None = None,
        context_names: list[str] | None = None,
    ) -> None:
        super().__init__()
        if features < 1 or context < 1:
            raise DetlearnError(
                f"a conditional flow needs >= 1 target and >= 1 context feature "
                f"(got {features} targets, {context} context)"
            )
        self.features, self.context, self.cfg = features, context, cfg
        self.names = list(names) if names is not None else [f"x{i}" for i in range(features)]
        self.context_names = (
            list(context_names) if context_names is not None else [f"c{i}" for i in range(context)]
        )
        if len(self.names) != features or len(self.context_names) != context:
            raise DetlearnError("names/context_names must have one entry per feature")
        self.lower = self._bounds(lower, "lower")
        self.upper = self._bounds(upper, "upper")
        for name, lo, hi in zip(self.names, self.lower, self.upper, strict=True):
            if lo is not None and hi is not None and not lo < hi:
                raise DetlearnError(f"target '{name}': lower bound {lo} is not below upper {hi}")
        # Innermost representable values, so clamped samples stay strictly inside the support.
        self._lo_in = [None if lo is None else _inside(lo, math.inf) for lo in self.lower]
        self._hi_in = [None if hi is None else _inside(hi, -math.inf) for hi in self.upper]
        self._relative = self._relative_indices(cfg.relative_to)
        self._log_context = [self._context_index(n, "log_context") for n in cfg.log_context]

        self.register_buffer("x_mean", torch.zeros(features))
        self.register_buffer("x_std", torch.ones(features))
        self.register_buffer("c_mean", torch.zeros(context))
        self.register_buffer("c_std", torch.ones(context))
        # Noise of the training context per column, in the network's units before
        # standardization (from cfg, so not saved with the weights).
        noise = torch.zeros(context)
        for name, std in cfg.context_noise.items():
            noise[self._context_index(name, "context_noise")] = std
        self.register_buffer("_noise", noise, persistent=False)
        self._noisy = any(std > 0 for std in cfg.context_noise.values())
        self.flow = self._build(features, context, cfg, self._context_mask(cfg.context_of))

    def _bounds(self, values: list[float | None] | None, which: str) -> list[float | None]:
        if values is None:
            return [None] * self.features
        if len(values) != self.features:
            raise DetlearnError(f"{which} bounds: expected {self.features}, got {len(values)}")
        out = [None if v is None else float(v) for v in values]
        for name, v in zip(self.names, out, strict=True):
            if v is not None and not math.isfinite(v):
                raise DetlearnError(f"target '{name}': {which} bound must be finite or null")
        return out

    @staticmethod
    def _check_name(name: str, valid: list[str], key: str, what: str) -> str:
        """``name`` if it is in ``valid``, else an error naming ``model.flow.<key>``."""
        if name not in valid:
            close = difflib.get_close_matches(name, valid, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise DetlearnError(
                f"model.flow.{key}: '{name}' is not a {what}{hint}; {what}s: {', '.join(valid)}"
            )
        return name

    def _context_index(self, name: str, key: str) -> int:
        """The index of context column ``name``, or an error naming ``model.flow.<key>``."""
        return self.context_names.index(
            self._check_name(name, self.context_names, key, "context column")
        )

    def _relative_indices(self, relative_to: dict[str, str]) -> list[int | None]:
        """Per target, the index of the context column it is measured in units of, or None."""
        out: list[int | None] = [None] * self.features
        for target, ctx in relative_to.items():
            j = self.names.index(self._check_name(target, self.names, "relative_to", "target"))
            out[j] = self._context_index(ctx, "relative_to")
        return out

    def _context_mask(self, context_of: dict[str, list[str]]) -> Tensor | None:
        """Bool [F, C]: which context columns each target's transforms read, or None (all)."""
        if not context_of:
            return None
        mask = torch.ones(self.features, self.context, dtype=torch.bool)
        for target, columns in context_of.items():
            j = self.names.index(self._check_name(target, self.names, "context_of", "target"))
            keep = [
                self._check_name(col, self.context_names, "context_of", "context column")
                for col in columns
            ]
            mask[j] = torch.tensor([name in keep for name in self.context_names])
        return mask

    def _log_units(self, c: Tensor) -> list[Tensor | None]:
        """Per target, log of its unit [...] from the physical context c [..., C], or None."""
        return [None if k is None else torch.log(c[..., k]) for k in self._relative]

    @staticmethod
    def _build(
        features: int, context: int, cfg: FlowConfig, context_mask: Tensor | None = None
    ) -> zuko.flows.Flow:
        if context_mask is not None:
            return _masked_context_flow(features, context, cfg, context_mask)
        # realnvp: affine coupling as a two-pass masked autoregressive flow rather than
        # zuko.flows.RealNVP, whose CouplingTransform.merge (new_empty + index assignment)
        # traces to an ONNX graph onnxruntime rejects (INVALID_GRAPH).
        return zuko.flows.MAF(
            features,
            context,
            transforms=cfg.transforms,
            hidden_features=list(cfg.hidden),
            passes=2 if cfg.kind == "realnvp" else cfg.passes,
            **_univariate(cfg),
        )

    # ---- serialization -------------------------------------------------------------------

    def spec(self) -> dict[str, Any]:
        """JSON-serializable architecture (weights and normalization live in safetensors)."""
        return {
            "kind": self.kind,
            "features": self.features,
            "context": self.context,
            "flow": self.cfg.model_dump(mode="json"),
            "lower": self.lower,
            "upper": self.upper,
            "names": self.names,
            "context_names": self.context_names,
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> ConditionalFlow:
        """Rebuild the (untrained) architecture described by :meth:`spec`."""
        return cls(
            spec["features"],
            spec["context"],
            FlowConfig.model_validate(spec["flow"]),
            spec.get("lower"),
            spec.get("upper"),
            names=spec.get("names"),
            context_names=spec.get("context_names"),
        )

    # ---- fixed maps: support and standardization ------------------------------------------

    def _support(self, x: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
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

    def _unsupport(self, y: Tensor, c: Tensor) -> Tensor:
        """Inverse of :meth:`_support`: y [..., F] with c [..., C] broadcastable to it -> x,
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

    def _outside(self, x: Tensor, c: Tensor) -> Tensor:
        """Boolean [N, F]: the value is not finite or not strictly inside its bounds, or the
        context column it is relative to is not > 0."""
        bad = ~torch.isfinite(x)
        for j in range(self.features):
            if self._relative[j] is not None:
                bad[:, j] |= ~(c[:, self._relative[j]] > 0)
            if self.lower[j] is not None:
                bad[:, j] |= x[:, j] <= self.lower[j]
            if self.upper[j] is not None:
                bad[:, j] |= x[:, j] >= self.upper[j]
        return bad

    def _to_flow_space(self, x: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """Physical x [N, F] (context c [N, C]) -> standardized u [N, F] and log|du/dx| [N]."""
        y, ladj = self._support(x.to(self.x_mean), c.to(self.x_mean))
        u = (y - self.x_mean) / self.x_std
        return u, ladj - torch.log(self.x_std).sum()

    def _network_context(self, c: Tensor) -> Tensor:
        """Physical c [..., C] -> what the network's standardization sees (``log_context``)."""
        if not self._log_context:
            return c
        log = torch.zeros(self.context, dtype=torch.bool, device=c.device)
        log[self._log_context] = True
        return torch.where(log, torch.log(c), c)

    def _context(self, c: Tensor, noisy: bool = False) -> Tensor:
        """Physical c [N, C] -> the network's standardized context; ``noisy`` adds the
        training noise of ``cfg.context_noise``."""
        # Accept float64 (numpy) contexts: the network's dtype and device decide.
        context = (self._network_context(c.to(self.c_mean)) - self.c_mean) / self.c_std
        if noisy and self._noisy:
            context = context + torch.randn_like(context) * (self._noise / self.c_std)
        return context

    @torch.no_grad()
    def fit_normalization(self, x: Tensor, c: Tensor) -> None:
        """Set the standardization from training data in physical units.

        Each target is mapped through its support transform first; its central range
        [q(1e-4), q(1 - 1e-4)] is then mapped onto [-4.5, 4.5] (buffers ``x_mean``: the centre,
        ``x_std``: the scale), see the module docstring. Contexts get their mean and standard
        deviation. A constant column gets scale 1.

        Raises:
            DetlearnError: if a target lies on or outside its declared support, or a value is
                not finite (the density there would be zero or undefined).
        """
        x, c = torch.as_tensor(x), torch.as_tensor(c)
        self._check_shapes(x, c)
        x, c = x.to(self.x_mean), c.to(self.c_mean)
        # Context columns taken a log of: a target's unit (relative_to) or a log_context.
        why = {
            k: f"target '{self.names[j]}' is relative_to it"
            for j, k in enumerate(self._relative)
            if k is not None
        }
        why |= {k: "it is in model.flow.log_context" for k in self._log_context}
        for k, reason in why.items():
            if n_bad := int((~(c[:, k] > 0)).sum()):
                raise DetlearnError(
                    f"context '{self.context_names[k]}' has {n_bad} values <= 0 or NaN, "
                    f"but must be > 0: {reason}"
                )
        bad = self._outside(x, c)
        if bad.any():
            j = int(bad.any(dim=0).nonzero()[0])
            raise DetlearnError(
                f"target '{self.names[j]}': {int(bad[:, j].sum())} of {len(x)} rows lie outside "
                f"the support ({self.lower[j]}, {self.upper[j]}) or are not finite"
            )
        if not torch.isfinite(c).all():
            raise DetlearnError("context has non-finite values")
        y = self._support(x, c)[0].double().cpu().numpy()
        lo, hi = torch.from_numpy(np.quantile(y, [_TAIL, 1 - _TAIL], axis=0))
        self._set(self.x_mean, self.x_std, (lo + hi) / 2, (hi - lo) / (2 * _SPAN))
        c = self._network_context(c.double())
        self._set(self.c_mean, self.c_std, c.mean(dim=0), c.std(dim=0) if len(c) > 1 else None)

    @staticmethod
    def _set(center: Tensor, scale: Tensor, value: Tensor, width: Tensor | None) -> None:
        center.copy_(value)
        scale.copy_(torch.ones_like(value) if width is None else torch.where(width > 0, width, 1.0))

    def _from_flow_space(self, u: Tensor, c: Tensor) -> Tensor:
        """Standardized u [..., F] (physical context c [..., C], broadcastable) -> physical
        x [..., F], strictly inside the support."""
        return self._unsupport(u * self.x_std + self.x_mean, c.to(self.x_mean))

    def _check_shapes(self, x: Tensor, c: Tensor) -> None:
        if x.ndim != 2 or x.shape[1] != self.features:
            raise ValueError(f"x must be [N, {self.features}], got {list(x.shape)}")
        if c.ndim != 2 or c.shape[1] != self.context:
            raise ValueError(f"c must be [N, {self.context}], got {list(c.shape)}")
        if len(x) != len(c):
            raise ValueError(f"x and c have different lengths ({len(x)} vs {len(c)})")

    # ---- density and sampling ------------------------------------------------------------

    def log_prob(self, x: Tensor, c: Tensor) -> Tensor:
        r"""log p(x | c) [N] in nats per unit of x (physical units), -inf outside the support.

        .. math:: \log p(x|c) = \log \mathcal{N}(f(u; c)) + \log|\partial f/\partial u|
                  + \log|\partial u/\partial x|
        """
        return self._log_prob(x, c)

    def _log_prob(self, x: Tensor, c: Tensor, noisy: bool = False) -> Tensor:
        self._check_shapes(x, c)
        u, ladj = self._to_flow_space(x, c)
        lp = self.flow(self._context(c, noisy)).log_prob(u) + ladj
        return torch.where(self._outside(x, c).any(dim=-1), -math.inf, lp)

    def loss(self, batch: tuple[Tensor, ...] | list[Tensor]) -> Tensor:
        """Mean negative log-likelihood of a batch ``(x, c)`` or weighted ``(x, c, w)``.

        In training mode the network reads the context with the noise of
        ``cfg.context_noise`` (the targets and ``relative_to`` read it as it is).
        """
        x, c, *weight = batch
        nll = -self._log_prob(x, c, noisy=self.training)
        if weight:
            return (nll * weight[0]).sum() / weight[0].sum()
        return nll.mean()

    @torch.no_grad()
    def sample(self, c: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` samples per context row: c [B, C] -> x [B, n, F] in physical units.

        What depends on the context alone runs once per context row, the rest per sample
        (see the module docstring). The noise is one [B, n, F] standard-normal draw from
        ``generator``, so a seeded draw is reproducible and does not depend on the block size.
        Every sample is strictly inside the support.
        """
        if c.ndim != 2 or c.shape[1] != self.context:
            raise ValueError(f"c must be [B, {self.context}], got {list(c.shape)}")
        z = torch.randn(
            (len(c), n, self.features),
            generator=generator,
            device=self.x_mean.device,
            dtype=self.x_mean.dtype,
        )
        context, x = self._context(c), torch.empty_like(z)
        # Blocks of about _CHUNK samples: several context rows, or part of one row's samples.
        rows, step = max(1, _CHUNK // max(n, 1)), min(n, _CHUNK) or 1
        for b in range(0, len(c), rows):
            block = context[b : b + rows]
            inverses = [_inverse_at(t, block, n) for t in reversed(self.flow.transform.transforms)]
            for start in range(0, n, step):
                u = z[b : b + rows, start : start + step]
                for inverse in inverses:
                    u = inverse(u)
                x[b : b + rows, start : start + step] = self._from_flow_space(
                    u, c[b : b + rows, None]
                )
        return x

    def sample_from_noise(self, z: Tensor, c: Tensor) -> Tensor:
        """The deterministic sampler: standard-normal noise z [N, F] and c [N, C] -> x [N, F].

        This is the graph exported to ONNX; the host draws ``z ~ N(0, 1)``.
        """
        self._check_shapes(z, c)
        u = self.flow(self._context(c)).transform.inv(z.to(self.x_mean))
        return self._from_flow_space(u, c)

    def latent(self, x: Tensor, c: Tensor) -> Tensor:
        """The forward map x [N, F] -> z [N, F]; z ~ N(0, 1) if x ~ p(x | c)."""
        self._check_shapes(x, c)
        u, _ = self._to_flow_space(x, c)
        return self.flow(self._context(c)).transform(u)

    def pit(self, x: Tensor, c: Tensor) -> Tensor:
        """Probability integral transform u = F(x | c) [N] of a one-feature flow.

        All maps are increasing, so u = Phi(z) is the model's conditional CDF at x; for data
        drawn from the model u ~ U(0, 1) in every context bin.
        """
        if self.features != 1:
            raise ValueError("pit() is defined for one target feature")
        return torch.special.ndtr(self.latent(x, c)[:, 0])


class _NoiseSampler(torch.nn.Module):
    """(noise, context) -> sample, the module traced for ONNX."""

    def __init__(self, flow: ConditionalFlow) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, noise: Tensor, context: Tensor) -> Tensor:
        return self.flow.sample_from_noise(noise, context)


def export_sampler_onnx(model: ConditionalFlow, path: str | Path, opset: int = 17) -> Path:
    """Export ``(noise[N, F], context[N, C]) -> sample[N, F]`` to ONNX with a dynamic batch axis.

    Inputs are named ``noise`` and ``context`` (float32, physical units for the context),
    the output ``sample`` (physical units). Uses the TorchScript exporter (``dynamo=False``),
    which needs no onnxscript; zuko's spline has no data-dependent branch, so tracing is exact.

    Example:
        >>> export_sampler_onnx(flow, "sampler.onnx")  # doctest: +SKIP
    """
    if opset < 17:
        raise ValueError(f"opset must be >= 17, got {opset}")
    from detlearn.export import export_onnx  # export builds on the models: imported late

    ref = model.x_mean
    example = (
        torch.randn(2, model.features, dtype=ref.dtype, device=ref.device),
        torch.zeros(2, model.context, dtype=ref.dtype, device=ref.device),
    )
    # The wrapper starts in the model's mode, which export_onnx restores afterwards.
    wrapper = _NoiseSampler(model).train(model.training)
    return export_onnx(wrapper, example, path, ["noise", "context"], ["sample"], opset=opset)
