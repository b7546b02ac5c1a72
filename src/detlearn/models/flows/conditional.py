r"""Conditional normalizing flows p(x | c) in physical units, with physical support built in.

A :class:`ConditionalFlow` is three maps in a row, from a physical target ``x`` to a latent
``z`` with a standard normal base:

1. **support** (fixed, per feature, :mod:`.support`): ``y = s(x)`` maps the physical support
   onto the real line (``log(x - a)`` for a lower bound ``a``, and so on), so that every sample
   is physical and the density stays normalized. Every map is increasing, so for one target the
   PIT ``u = Phi(z)`` is the model's CDF. A target with ``relative_to`` a context column c (> 0)
   is first divided by c, its bounds alike. Where a label sets a target's scale (a
   reconstructed mass and the generated one) every label's peak then sits at the same place
   with the same width in flow space, and the flow learns one shape that varies gently with
   the label instead of a peak that moves and narrows across the whole standardized range.
   ``log`` (not the softplus inverse) is used for one-sided bounds because detector
   quantities such as photon delays span decades with long tails: the log brings those tails
   inside the spline domain, whereas softplus is linear far from the bound and would leave the
   tail to the Gaussian base.
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

Sampling runs the conditioner once per context row and the cheap inverse per sample
(:mod:`.sampling`), in blocks of 2^20 samples of several context rows, or 2^16 of one row's.

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
import itertools
import math
from typing import Any

import numpy as np
import torch
import zuko
from torch import Tensor
from zuko.distributions import DiagNormal
from zuko.flows.autoregressive import MaskedAutoregressiveTransform
from zuko.lazy import UnconditionalDistribution

from detlearn._threads import adapt
from detlearn.config import FlowConfig
from detlearn.errors import DetlearnError
from detlearn.models.flows.sampling import BLOCK, ROW_BLOCK, BinarySearchRQS, inverse_at
from detlearn.models.flows.support import Support

__all__ = ["ConditionalFlow"]

# The standardization maps the central range [q(_TAIL), q(1 - _TAIL)] of each (support-mapped)
# target onto [-_SPAN, _SPAN], inside zuko's spline domain [-5, 5].
_TAIL = 1e-4
_SPAN = 4.5


def _univariate(cfg: FlowConfig) -> dict[str, Any]:
    """The element-wise transform of a flow kind: zuko keyword arguments."""
    if cfg.kind == "nsf":
        return {
            "univariate": BinarySearchRQS,
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
        self._relative = self._relative_indices(cfg.relative_to)
        self.support = Support(self.lower, self.upper, self._relative)
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

    @staticmethod
    def size(features: int, context: int, cfg: FlowConfig) -> tuple[int, int]:
        """(trainable parameters, floats one row leaves in the layers' outputs) of
        ``ConditionalFlow(features, context, cfg)``, counted without building it: zuko's masked
        networks compute their masks from data, so they cannot be built on the meta device.

        Each of the ``transforms`` has one dense network, features + context -> ``hidden`` ->
        features × the element-wise transform's parameters (3 bins − 1 for nsf's spline, 2 for
        the affine maf and realnvp); its masks are buffers, not parameters. With one feature
        zuko's transform is element-wise: its network reads the context alone. The outputs counted
        per row: the network's input, each hidden layer's before and after its activation, and
        its output twice (the transform's own work on it).

        Example:
            >>> cfg = FlowConfig(hidden=[8])
            >>> parameters, _ = ConditionalFlow.size(2, 3, cfg)
            >>> parameters == sum(p.numel() for p in ConditionalFlow(2, 3, cfg).parameters())
            True
            >>> ConditionalFlow.size(1, 3, cfg)[0]  # 3 transforms of (3 * 8 + 8) + (8 * 47 + 47)
            1365
        """
        per_feature = 3 * cfg.bins - 1 if cfg.kind == "nsf" else 2
        inputs = context if features == 1 else features + context
        widths = [inputs, *cfg.hidden, features * per_feature]
        network = sum(a * b + b for a, b in itertools.pairwise(widths))
        outputs = widths[0] + 2 * sum(cfg.hidden) + 2 * widths[-1]
        return cfg.transforms * network, cfg.transforms * outputs

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

    def _to_flow_space(self, x: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """Physical x [N, F] (context c [N, C]) -> standardized u [N, F] and log|du/dx| [N]."""
        y, ladj = self.support.forward(x.to(self.x_mean), c.to(self.x_mean))
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
        bad = self.support.outside(x, c)
        if bad.any():
            j = int(bad.any(dim=0).nonzero()[0])
            raise DetlearnError(
                f"target '{self.names[j]}': {int(bad[:, j].sum())} of {len(x)} rows lie outside "
                f"the support ({self.lower[j]}, {self.upper[j]}) or are not finite"
            )
        if not torch.isfinite(c).all():
            raise DetlearnError("context has non-finite values")
        y = self.support.forward(x, c)[0].double().cpu().numpy()
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
        return self.support.inverse(u * self.x_std + self.x_mean, c.to(self.x_mean))

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
        return torch.where(self.support.outside(x, c).any(dim=-1), -math.inf, lp)

    def loss(self, batch: tuple[Tensor, ...] | list[Tensor]) -> Tensor:
        """Mean negative log-likelihood of a batch ``(x, c)``, or weighted ``(x, c, w)``: the
        mean of w·NLL, which :func:`~detlearn.training.fit` makes Σ w·NLL / Σ w over the split
        by scaling its (signed) weights to mean 1.

        In training mode the network reads the context with the noise of
        ``cfg.context_noise`` (the targets and ``relative_to`` read it as it is).
        """
        x, c, *weight = batch
        nll = -self._log_prob(x, c, noisy=self.training)
        if weight:
            return (nll * weight[0]).mean()
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
        # Blocks of about ROW_BLOCK samples of several context rows, or of BLOCK samples of
        # one row (its samples in several blocks when it has more).
        rows = 1 if n >= BLOCK else ROW_BLOCK // max(n, 1)
        step = min(n, BLOCK) or 1
        for b in range(0, len(c), rows):
            adapt()
            block = context[b : b + rows]
            inverses = [inverse_at(t, block, n) for t in reversed(self.flow.transform.transforms)]
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
