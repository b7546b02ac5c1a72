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
   ``log`` (not the softplus inverse) is used for one-sided bounds because detector
   quantities such as photon delays span decades with long tails: the log brings those tails
   inside the spline domain, whereas softplus is linear far from the bound and would leave the
   tail to the Gaussian base. Its inverse ``a + exp(y)`` is exact to float rounding; samples
   are clamped to the first representable value inside the bound, so none is unphysical.
2. **standardization** (fitted on training data by :meth:`ConditionalFlow.fit_normalization`,
   stored as buffers): ``u = (y - mean) / std``; contexts are standardized the same way.
   It keeps > 99.99 % of the data inside zuko's spline domain [-5, 5].
3. **the flow** (zuko): ``z = f(u; c)``, trained by maximum likelihood.

``log_prob`` adds the log-Jacobians of 1 and 2, so it is the density in physical units (nats
per unit of x). Sampling draws ``z`` and runs the maps backwards.

Conditioner cost: for one target feature every zuko flow kind is element-wise, so
:meth:`ConditionalFlow.sample` evaluates the conditioner network once per context row and only
the cheap univariate inverse per sample. For several features the autoregressive (maf, nsf with
``passes=None``) or coupling (realnvp, ``passes=2``) conditioner also reads x, so it runs once
per sample (and per pass), with the context broadcast to every sample.

Example:
    >>> from detlearn.config import FlowConfig
    >>> flow = ConditionalFlow(1, 2, FlowConfig(kind="nsf", hidden=[16]), lower=[0.0])
    >>> c = torch.randn(5, 2)
    >>> x = flow.sample(c, 100)  # [5, 100, 1], all > 0
    >>> flow.log_prob(x[:, 0], c).shape
    torch.Size([5])
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zuko
from torch import Tensor

from detlearn.config import FlowConfig
from detlearn.errors import DetlearnError
from detlearn.models import register_model

__all__ = ["ConditionalFlow", "export_sampler_onnx"]

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


class _BinarySearchRQS(zuko.transforms.MonotonicRQSTransform):
    """zuko's rational-quadratic spline with a binary-search bin lookup when sampling.

    zuko finds the bin by comparing a value with every knot and summing (exportable to ONNX,
    where ``searchsorted`` has no operator), which for many samples per context spends most of
    the time materializing [samples, contexts, knots] masks. Eager calls use
    ``torch.searchsorted`` instead (same result: the number of knots below the value); traced
    calls (ONNX export) keep zuko's form.
    """

    @staticmethod
    def searchsorted(seq: Tensor, value: Tensor) -> Tensor:
        lead = seq.shape[:-1]
        extra = value.dim() - len(lead)
        if torch.jit.is_tracing() or extra < 1 or value.shape[extra:] != lead:
            return zuko.transforms.MonotonicRQSTransform.searchsorted(seq, value)
        # Sample dimensions in front: move them behind the knots' batch dimensions.
        flat = value.reshape(-1, *lead).movedim(0, -1).contiguous()
        index = torch.searchsorted(seq.contiguous(), flat)
        return index.movedim(-1, 0).reshape(value.shape)


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

        self.register_buffer("x_mean", torch.zeros(features))
        self.register_buffer("x_std", torch.ones(features))
        self.register_buffer("c_mean", torch.zeros(context))
        self.register_buffer("c_std", torch.ones(context))
        self.flow = self._build(features, context, cfg)

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
    def _build(features: int, context: int, cfg: FlowConfig) -> zuko.flows.Flow:
        common = {"transforms": cfg.transforms, "hidden_features": list(cfg.hidden)}
        if cfg.kind == "nsf":
            return zuko.flows.MAF(
                features,
                context,
                univariate=_BinarySearchRQS,
                shapes=[(cfg.bins,), (cfg.bins,), (cfg.bins - 1,)],
                passes=cfg.passes,
                **common,
            )
        if cfg.kind == "maf":
            return zuko.flows.MAF(features, context, passes=cfg.passes, **common)
        # Affine coupling as a two-pass masked autoregressive flow rather than
        # zuko.flows.RealNVP: the latter's CouplingTransform.merge (new_empty + index
        # assignment) traces to an ONNX graph onnxruntime rejects (INVALID_GRAPH).
        return zuko.flows.MAF(features, context, passes=2, **common)

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

    def _support(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Physical x [N, F] -> unbounded y [N, F] and sum_j log|dy_j/dx_j| [N]."""
        ys, ladj = [], torch.zeros_like(x[:, 0])
        for j in range(self.features):
            xj, lo, hi = x[:, j], self.lower[j], self.upper[j]
            # Clamping first keeps log() finite (and its gradient NaN-free) for points on or
            # outside a bound; log_prob masks those points to -inf afterwards.
            if lo is not None:
                xj = xj.clamp(min=self._lo_in[j])
            if hi is not None:
                xj = xj.clamp(max=self._hi_in[j])
            if lo is None and hi is None:
                ys.append(xj)
            elif hi is None:
                log_d = torch.log(xj - lo)
                ys.append(log_d)
                ladj = ladj - log_d
            elif lo is None:
                log_d = torch.log(hi - xj)
                ys.append(-log_d)
                ladj = ladj - log_d
            else:
                log_a, log_b = torch.log(xj - lo), torch.log(hi - xj)
                ys.append(log_a - log_b)
                ladj = ladj + math.log(hi - lo) - log_a - log_b
        return torch.stack(ys, dim=-1), ladj

    def _unsupport(self, y: Tensor) -> Tensor:
        """Inverse of :meth:`_support` on [..., F]; the result is strictly inside the support."""
        xs = []
        for j in range(self.features):
            yj, lo, hi = y[..., j], self.lower[j], self.upper[j]
            if lo is None and hi is None:
                xs.append(yj)
            elif hi is None:
                xs.append((lo + torch.exp(yj.clamp(max=_MAX_LOG))).clamp(min=self._lo_in[j]))
            elif lo is None:
                xs.append((hi - torch.exp((-yj).clamp(max=_MAX_LOG))).clamp(max=self._hi_in[j]))
            else:
                # Measure from the nearer bound: sigmoid(y) -> 1 loses the digits near `hi`.
                width = hi - lo
                xj = torch.where(
                    yj > 0, hi - width * torch.sigmoid(-yj), lo + width * torch.sigmoid(yj)
                )
                xs.append(xj.clamp(min=self._lo_in[j], max=self._hi_in[j]))
        return torch.stack(xs, dim=-1)

    def _outside(self, x: Tensor) -> Tensor:
        """Boolean [N, F]: the value is not finite or not strictly inside its bounds."""
        bad = ~torch.isfinite(x)
        for j in range(self.features):
            if self.lower[j] is not None:
                bad[:, j] |= x[:, j] <= self.lower[j]
            if self.upper[j] is not None:
                bad[:, j] |= x[:, j] >= self.upper[j]
        return bad

    def _to_flow_space(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Physical x [N, F] -> standardized u [N, F] and log|du/dx| [N]."""
        y, ladj = self._support(x.to(self.x_mean))
        u = (y - self.x_mean) / self.x_std
        return u, ladj - torch.log(self.x_std).sum()

    def _context(self, c: Tensor) -> Tensor:
        # Accept float64 (numpy) contexts: the network's dtype and device decide.
        return (c.to(self.c_mean) - self.c_mean) / self.c_std

    @torch.no_grad()
    def fit_normalization(self, x: Tensor, c: Tensor) -> None:
        """Set the standardization from training data in physical units.

        x [N, F] is mapped through the support transform first, so the mean and std are those
        of the unbounded values the flow sees. A constant column gets std 1.

        Raises:
            DetlearnError: if a target lies on or outside its declared support, or a value is
                not finite (the density there would be zero or undefined).
        """
        x, c = torch.as_tensor(x), torch.as_tensor(c)
        self._check_shapes(x, c)
        x, c = x.to(self.x_mean), c.to(self.c_mean)
        bad = self._outside(x)
        if bad.any():
            j = int(bad.any(dim=0).nonzero()[0])
            raise DetlearnError(
                f"target '{self.names[j]}': {int(bad[:, j].sum())} of {len(x)} rows lie outside "
                f"the support ({self.lower[j]}, {self.upper[j]}) or are not finite"
            )
        if not torch.isfinite(c).all():
            raise DetlearnError("context has non-finite values")
        y, _ = self._support(x)
        for mean, std, v in ((self.x_mean, self.x_std, y), (self.c_mean, self.c_std, c)):
            v = v.double()
            s = v.std(dim=0) if len(v) > 1 else torch.ones_like(v[0])
            mean.copy_(v.mean(dim=0))
            std.copy_(torch.where(s > 0, s, torch.ones_like(s)))

    def _from_flow_space(self, u: Tensor) -> Tensor:
        """Standardized u [..., F] -> physical x [..., F], strictly inside the support."""
        return self._unsupport(u * self.x_std + self.x_mean)

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
        self._check_shapes(x, c)
        u, ladj = self._to_flow_space(x)
        lp = self.flow(self._context(c)).log_prob(u) + ladj
        return torch.where(self._outside(x).any(dim=-1), -math.inf, lp)

    def loss(self, batch: tuple[Tensor, ...] | list[Tensor]) -> Tensor:
        """Mean negative log-likelihood of a batch ``(x, c)`` or weighted ``(x, c, w)``."""
        x, c, *weight = batch
        nll = -self.log_prob(x, c)
        if weight:
            return (nll * weight[0]).sum() / weight[0].sum()
        return nll.mean()

    @torch.no_grad()
    def sample(self, c: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` samples per context row: c [B, C] -> x [B, n, F] in physical units.

        The conditioner runs once on the B context rows (for F = 1; see the module docstring
        for F > 1) and the spline/affine inverse once per sample. Every sample is strictly
        inside the support. ``generator`` makes the draw reproducible.
        """
        if c.ndim != 2 or c.shape[1] != self.context:
            raise ValueError(f"c must be [B, {self.context}], got {list(c.shape)}")
        dist = self.flow(self._context(c))
        # Latent noise is [n, B, F] so it broadcasts against the per-context parameters [B, F].
        z = torch.randn(
            (n, len(c), self.features),
            generator=generator,
            device=self.x_mean.device,
            dtype=self.x_mean.dtype,
        )
        return self._from_flow_space(dist.transform.inv(z)).transpose(0, 1).contiguous()

    def sample_from_noise(self, z: Tensor, c: Tensor) -> Tensor:
        """The deterministic sampler: standard-normal noise z [N, F] and c [N, C] -> x [N, F].

        This is the graph exported to ONNX; the host draws ``z ~ N(0, 1)``.
        """
        self._check_shapes(z, c)
        u = self.flow(self._context(c)).transform.inv(z.to(self.x_mean))
        return self._from_flow_space(u)

    def latent(self, x: Tensor, c: Tensor) -> Tensor:
        """The forward map x [N, F] -> z [N, F]; z ~ N(0, 1) if x ~ p(x | c)."""
        self._check_shapes(x, c)
        u, _ = self._to_flow_space(x)
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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    wrapper = _NoiseSampler(model).eval()
    ref = model.x_mean
    example = (
        torch.randn(2, model.features, dtype=ref.dtype, device=ref.device),
        torch.zeros(2, model.context, dtype=ref.dtype, device=ref.device),
    )
    batch = {0: "batch"}
    try:
        with warnings.catch_warnings():
            # The shape checks in sample_from_noise are Python bools on traced shapes; the
            # tracer warns about them although they do not affect the graph.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            # The legacy exporter is chosen on purpose (the dynamo one needs onnxscript); its
            # deprecation notices are not the user's concern.
            warnings.simplefilter("ignore", DeprecationWarning)
            # The spline's F.pad traces to a reversed Slice that is merely left unfolded.
            warnings.filterwarnings("ignore", "Constant folding", UserWarning)
            torch.onnx.export(
                wrapper,
                example,
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=["noise", "context"],
                output_names=["sample"],
                dynamic_axes={"noise": batch, "context": batch, "sample": batch},
            )
    finally:
        model.train(was_training)
    return path
