r"""Signal/background classifiers of calorimeter events (the LDMX ECal veto): one logit per event.

Both models give a logit ℓ [N], P(signal) = σ(ℓ), and train on the binary cross-entropy
(weighted: Σ wᵢ lᵢ / Σ wᵢ over the split, signed weights allowed):

- :class:`ImageClassifier`: the LDMX ``ConvNet`` (seeds_code.md §2.3) for any image size and
  channel count. Each entry of ``conv_channels`` is Conv2d (``kernel``, 'same' padding) → ReLU →
  MaxPool2d(2, ceil_mode), so odd sizes lose no row; then flatten → Dropout → the ``dense``
  layers (ReLU) → Linear → ℓ. The defaults (``[32, 64]``, kernel 5, ``[500]``) on 20×20×3 images
  are the original. Mass-parameterized it is ``ModelExtraInput``: the standardized log-mass
  joins after the first dense layer (``dense=[20, 60]`` is the original's shape; the original
  had no activation on that first layer, here every hidden layer has a ReLU).
- :class:`PointCloudClassifier`: an EdgeConv network (ParticleNet-style; LDMX's own veto moved to
  ParticleNet) over each event's ``max_hits`` highest-energy hits (:func:`top_hits`). Per-hit
  features (x, y, z [mm], log E [E in MeV], layer, ...) are standardized with means and
  standard deviations fitted on the real training hits. The k nearest neighbours of each hit
  are found once, in standardized (x, y, z), among the other real hits of its event; each
  EdgeConv block maps every edge [hᵢ, hⱼ − hᵢ] through a two-layer MLP, averages over the
  valid neighbours, adds a linear shortcut of hᵢ and applies a ReLU. A masked mean over the real
  hits feeds the dense head (the standardized log-mass joins there when mass-parameterized).
  An event with fewer than k + 1 hits, or none, is a valid input.

Normalization constants (log-mass mean and std; per-hit feature means and stds) are buffers,
saved with the weights in safetensors; images come normalized per event from the image builder
and are not rescaled here. Both models trace to ONNX (opset 17, dynamic batch axis).

Example:
    >>> cfg = ClassifierConfig(conv_channels=[4, 8], dense=[16])
    >>> ImageClassifier(3, (20, 20), cfg)(torch.rand(2, 3, 20, 20)).shape
    torch.Size([2])
    >>> counts = np.array([3, 0])
    >>> columns = {k: np.arange(3.0) for k in ("x", "y", "z", "E", "layer")}
    >>> hits, mask = top_hits(counts, columns, max_hits=2)
    >>> hits[0, :, 3].tolist(), mask.tolist()
    ([2.0, 1.0], [[1.0, 1.0], [0.0, 0.0]])
    >>> model = PointCloudClassifier(5, ClassifierConfig(arch="point_cloud", dense=[16]))
    >>> model.predict_proba(torch.as_tensor(hits), torch.as_tensor(mask)).shape
    torch.Size([2])
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from detlearn.config import ClassifierConfig
from detlearn.errors import DetlearnError

__all__ = ["ENERGY_FEATURE", "ImageClassifier", "PointCloudClassifier", "top_hits"]

#: Index of the hit energy among the per-hit features (x, y, z, E, layer, ...).
ENERGY_FEATURE = 3
# Masses and hit energies [MeV] are floored before the log: a padded hit (E = 0) or a mass of 0
# must stay finite, and 1 keV is far below any ECal readout threshold or A' mass.
_LOG_FLOOR = 1e-3
# Squared distance given to excluded neighbours (self, padded hits): far beyond any standardized
# distance, and finite so that the ranking and the validity test stay exact in float32.
_FAR = 1e9
# Squared standardized distance added per slot index to break exact ties: far above float32
# round-off near 1 (1e-7), far below any distance that matters.
_TIE = 1e-6
_LOSS_LABEL = "loss (binary cross-entropy) [nats]"


def top_hits(
    counts: np.ndarray | Sequence[int], columns: Mapping[str, np.ndarray], max_hits: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each event's ``max_hits`` highest-energy hits as a zero-padded tensor and its mask.

    Args:
        counts: hits per event [N].
        columns: the flat per-hit arrays of the batch, each of length ``counts.sum()`` (event i
            owns hits ``offsets[i]:offsets[i + 1]``), in feature order; the 4th
            (:data:`ENERGY_FEATURE`) is the energy that ranks the hits.
        max_hits: hits kept per event K.

    Returns:
        ``(hits [N, K, F] float32, mask [N, K] float32)``: an event's hits in descending energy
        (ties keep their input order), then zero rows; ``mask`` is 1 on real hits.

    Example:
        >>> cols = {"x": np.array([1.0, 2.0, 3.0]), "y": np.zeros(3), "z": np.zeros(3),
        ...         "E": np.array([5.0, 7.0, 1.0])}
        >>> hits, mask = top_hits([2, 1], cols, max_hits=2)
        >>> hits[:, :, 0].tolist(), mask.tolist()
        ([[2.0, 1.0], [3.0, 0.0]], [[1.0, 1.0], [1.0, 0.0]])
    """
    counts = np.asarray(counts)
    if counts.ndim != 1 or (counts.size and (counts < 0).any()):
        raise DetlearnError("top_hits: counts must be a 1-d array of non-negative integers")
    counts = counts.astype(np.int64)
    if max_hits < 1:
        raise DetlearnError(f"top_hits: max_hits must be >= 1 (got {max_hits})")
    arrays = [np.asarray(a) for a in columns.values()]
    if len(arrays) <= ENERGY_FEATURE:
        raise DetlearnError(
            f"top_hits: need at least x, y, z and energy columns (got {list(columns)})"
        )
    total = int(counts.sum())
    bad = [name for name, a in zip(columns, arrays, strict=True) if a.shape != (total,)]
    if bad:
        raise DetlearnError(f"top_hits: columns {bad} are not flat arrays of {total} hits")
    n = len(counts)
    event = np.repeat(np.arange(n), counts)
    # Sorted by event, then by descending energy; lexsort is stable, so ties keep input order.
    order = np.lexsort((-arrays[ENERGY_FEATURE].astype(np.float64), event))
    rank = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    keep = rank < max_hits
    rows, slots, source = event[keep], rank[keep], order[keep]
    hits = np.zeros((n, max_hits, len(arrays)), np.float32)
    mask = np.zeros((n, max_hits), np.float32)
    hits[rows, slots] = np.stack([a[source] for a in arrays], axis=1)
    mask[rows, slots] = 1.0
    return hits, mask


def _log_mass(mass: Tensor) -> Tensor:
    """log(mass / MeV) [N], the mass floored at 1 keV."""
    return torch.log(mass.reshape(-1).clamp_min(_LOG_FLOOR))


def _dense(width: int, sizes: Sequence[int]) -> tuple[torch.nn.Sequential, int]:
    layers: list[torch.nn.Module] = []
    for size in sizes:
        layers += [torch.nn.Linear(width, size), torch.nn.ReLU()]
        width = size
    return torch.nn.Sequential(*layers), width


class _Head(torch.nn.Module):
    """Dropout → dense[:split] → (concat the mass feature) → dense[split:] → Linear → logit [N]."""

    def __init__(
        self, width: int, dense: Sequence[int], dropout: float, mass: bool, split: int
    ) -> None:
        super().__init__()
        split = min(split, len(dense)) if mass else len(dense)
        self.dropout = torch.nn.Dropout(dropout)
        self.pre, width = _dense(width, dense[:split])
        self.post, width = _dense(width + int(mass), dense[split:])
        self.out = torch.nn.Linear(width, 1)

    def forward(self, h: Tensor, mass: Tensor | None) -> Tensor:
        h = self.pre(self.dropout(h))
        if mass is not None:
            h = torch.cat([h, mass.unsqueeze(-1)], dim=-1)
        return self.out(self.post(h)).squeeze(-1)


class _Classifier(torch.nn.Module):
    """What both classifiers share: the mass input, the batch layout and the loss."""

    kind = ""
    _inputs: tuple[str, ...] = ()
    cfg: ClassifierConfig

    def _init_mass(self, cfg: ClassifierConfig) -> None:
        self.cfg = cfg
        if cfg.mass_parameterized:
            self.register_buffer("log_mass_mean", torch.zeros(()))
            self.register_buffer("log_mass_std", torch.ones(()))

    @property
    def batch_keys(self) -> tuple[str, ...]:
        """Batch columns in order: the inputs, ``"mass"`` if mass-parameterized, ``"label"``."""
        mass = ("mass",) if self.cfg.mass_parameterized else ()
        return (*self._inputs, *mass, "label")

    @property
    def loss_label(self) -> str:
        """Axis label of the training loss."""
        return _LOSS_LABEL

    @torch.no_grad()
    def _fit_mass(self, mass: Tensor | None, label: Tensor) -> None:
        label = torch.as_tensor(label)
        if not torch.isfinite(label).all() or (label < 0).any() or (label > 1).any():
            raise DetlearnError("classifier labels must lie in [0, 1] (1 = signal)")
        if mass is None:
            return
        mass = torch.as_tensor(mass)
        if not torch.isfinite(mass).all():
            raise DetlearnError("classifier masses must be finite [MeV]")
        log_mass = _log_mass(mass).double()
        std = log_mass.std() if len(log_mass) > 1 else torch.zeros((), dtype=torch.float64)
        self.log_mass_mean.copy_(log_mass.mean())
        self.log_mass_std.copy_(std if std > 0 else torch.ones(()))

    def _mass_feature(self, mass: Tensor | None) -> Tensor | None:
        """The standardized log-mass [N] (None for a model without mass input)."""
        if not self.cfg.mass_parameterized:
            if mass is not None:
                raise DetlearnError(f"{self.kind}: this model takes no mass input")
            return None
        if mass is None:
            raise DetlearnError(f"{self.kind}: a mass-parameterized model needs the mass [MeV]")
        return (_log_mass(mass) - self.log_mass_mean) / self.log_mass_std

    def loss(self, batch: Sequence[Tensor]) -> Tensor:
        """Binary cross-entropy [nats] of a batch in ``batch_keys`` order, optionally weighted.

        With a trailing weight tensor w [N] the loss is the mean of wᵢ lᵢ: signed weights, which
        :func:`~detlearn.training.fit` scales to mean 1 over the split, so that it is
        Σ wᵢ lᵢ / Σ wᵢ there (a batch's own Σ wᵢ may be ≤ 0).
        """
        n_inputs = len(self.batch_keys) - 1
        inputs, label = batch[:n_inputs], batch[n_inputs].reshape(-1)
        logit = self(*inputs)
        per_event = F.binary_cross_entropy_with_logits(
            logit, label.to(logit.dtype), reduction="none"
        )
        if len(batch) > n_inputs + 1:
            weight = batch[n_inputs + 1].reshape(-1)
            return (per_event * weight).mean()
        return per_event.mean()

    def predict_proba(self, *inputs: Tensor) -> Tensor:
        """P(signal) = σ(logit) [N] (the module's train/eval mode is left as it is)."""
        return torch.sigmoid(self(*inputs))


class ImageClassifier(_Classifier):
    """The LDMX ConvNet (or ModelExtraInput when mass-parameterized) for C×H×W hit images.

    Args:
        channels: image channels C (3 for the ``xyz`` layout, the depth slices for ``z_split``).
        shape: image rows and columns (H, W).
        cfg: ``conv_channels``, ``kernel``, ``dense``, ``dropout`` and ``mass_parameterized``
            (``cfg.image`` describes the image builder and is not read here).

    Inputs: ``images [N, C, H, W]`` float32 (normalized per event by the image builder) and,
    when mass-parameterized, ``mass [N]`` [MeV]. Output: the logit [N].

    Example:
        >>> cfg = ClassifierConfig(mass_parameterized=True, dense=[20, 60])
        >>> model = ImageClassifier(3, (20, 20), cfg)
        >>> model.batch_keys
        ('images', 'mass', 'label')
        >>> model(torch.rand(4, 3, 20, 20), torch.full((4,), 100.0)).shape
        torch.Size([4])
    """

    kind = "image_classifier"
    _inputs = ("images",)

    def __init__(self, channels: int, shape: tuple[int, int], cfg: ClassifierConfig) -> None:
        super().__init__()
        height, width = (int(s) for s in shape)
        if channels < 1 or height < 1 or width < 1:
            raise DetlearnError(
                f"image classifier: bad image size {channels}×{height}×{width} (C×H×W)"
            )
        self._init_mass(cfg)
        self.channels, self.shape = int(channels), (height, width)
        layers: list[torch.nn.Module] = []
        c = self.channels
        for out in cfg.conv_channels:
            layers += [
                torch.nn.Conv2d(c, out, cfg.kernel, padding="same"),
                torch.nn.ReLU(),
                torch.nn.MaxPool2d(2, ceil_mode=True),
            ]
            c, height, width = out, math.ceil(height / 2), math.ceil(width / 2)
        layers.append(torch.nn.Flatten())
        self.features = torch.nn.Sequential(*layers)
        self.head = _Head(c * height * width, cfg.dense, cfg.dropout, cfg.mass_parameterized, 1)

    def spec(self) -> dict[str, Any]:
        """JSON-serializable architecture (weights and normalization live in safetensors)."""
        return {
            "kind": self.kind,
            "channels": self.channels,
            "shape": list(self.shape),
            "config": self.cfg.model_dump(mode="json"),
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> ImageClassifier:
        """Rebuild the (untrained) architecture described by :meth:`spec`."""
        return cls(
            spec["channels"], tuple(spec["shape"]), ClassifierConfig.model_validate(spec["config"])
        )

    def fit_normalization(self, *columns: Tensor) -> None:
        """Fit the log-mass mean and std from ``(images, [mass,] label)`` training columns.

        Images are used as they come (normalized per event by the image builder).
        """
        self._check(columns[0])
        self._fit_mass(columns[1] if self.cfg.mass_parameterized else None, columns[-1])

    def _check(self, images: Tensor) -> None:
        if images.ndim != 4 or tuple(images.shape[1:]) != (self.channels, *self.shape):
            raise DetlearnError(
                f"image classifier: expected images [N, {self.channels}, {self.shape[0]}, "
                f"{self.shape[1]}], got {list(images.shape)}"
            )

    def forward(self, images: Tensor, mass: Tensor | None = None) -> Tensor:
        """Logit [N] of images [N, C, H, W] (and mass [N] in MeV when mass-parameterized)."""
        self._check(images)
        return self.head(self.features(images), self._mass_feature(mass))


class _EdgeConv(torch.nn.Module):
    """One EdgeConv block: ReLU(mean over valid j of MLP([hᵢ, hⱼ − hᵢ]) + Linear(hᵢ))."""

    def __init__(self, width_in: int, width: int) -> None:
        super().__init__()
        self.width_in = width_in
        self.edge_in = torch.nn.Linear(2 * width_in, width)
        self.edge_out = torch.nn.Linear(width, width)
        self.shortcut = torch.nn.Linear(width_in, width)

    def forward(self, h: Tensor, neighbours: Tensor, valid: Tensor) -> Tensor:
        """h [N, K, C], neighbours [N, K, k] (hit indices), valid [N, K, k] (0/1) → [N, K, W]."""
        c = self.width_in
        w_self, w_diff = self.edge_in.weight[:, :c], self.edge_in.weight[:, c:]
        # The first edge layer is linear in [hᵢ, hⱼ − hᵢ] = (Wₛ − W_d) hᵢ + W_d hⱼ: projecting
        # every hit once and gathering the projections costs k times less than per edge.
        centre = F.linear(h, w_self - w_diff, self.edge_in.bias)
        other = F.linear(h, w_diff)
        n_hits, k = neighbours.shape[1], neighbours.shape[2]
        flat = neighbours.reshape(-1, n_hits * k, 1).expand(-1, -1, other.shape[-1])
        gathered = torch.gather(other, 1, flat).reshape(-1, n_hits, k, other.shape[-1])
        edge = self.edge_out(F.relu(centre.unsqueeze(2) + gathered)).relu()
        weight = valid.unsqueeze(-1)
        mean = (edge * weight).sum(2) / weight.sum(2).clamp_min(1.0)
        return F.relu(mean + self.shortcut(h))


class PointCloudClassifier(_Classifier):
    """EdgeConv classifier of each event's hardest hits (ParticleNet-style).

    Args:
        features: per-hit features F (x, y, z [mm], E [MeV], then any others such as layer;
            the first three are the k-NN coordinates, the 4th enters as log E).
        cfg: ``neighbours`` (k), ``edge_channels`` (EdgeConv block widths), ``dense``,
            ``dropout`` and ``mass_parameterized``; ``max_hits`` is K of :func:`top_hits`.

    Inputs: ``hits [N, K, F]`` float32, zero-padded, with ``mask [N, K]`` (1 on real hits), as
    :func:`top_hits` makes them (any K >= 1 works), and ``mass [N]`` [MeV] when
    mass-parameterized. Output: the logit [N]. Padded rows do not change the output, nor does
    the order of the real hits; an event with no hits gives the head's response to zeros.

    Example:
        >>> cfg = ClassifierConfig(arch="point_cloud", max_hits=8, neighbours=3, dense=[16])
        >>> model = PointCloudClassifier(5, cfg)
        >>> model.batch_keys
        ('hits', 'mask', 'label')
        >>> hits, mask = torch.randn(2, 8, 5), torch.ones(2, 8)
        >>> mask[1] = 0  # an event without hits
        >>> bool(torch.isfinite(model(hits * mask.unsqueeze(-1), mask)).all())
        True
    """

    kind = "point_cloud_classifier"
    _inputs = ("hits", "mask")

    def __init__(self, features: int, cfg: ClassifierConfig) -> None:
        super().__init__()
        if features <= ENERGY_FEATURE:
            raise DetlearnError(
                f"point-cloud classifier: need at least x, y, z and energy per hit "
                f"(got {features} features)"
            )
        self._init_mass(cfg)
        self.features = int(features)
        self.register_buffer("hit_mean", torch.zeros(self.features))
        self.register_buffer("hit_std", torch.ones(self.features))
        blocks, width = [], self.features
        for out in cfg.edge_channels:
            blocks.append(_EdgeConv(width, out))
            width = out
        self.blocks = torch.nn.ModuleList(blocks)
        self.head = _Head(width, cfg.dense, cfg.dropout, cfg.mass_parameterized, 0)

    def spec(self) -> dict[str, Any]:
        """JSON-serializable architecture (weights and normalization live in safetensors)."""
        return {
            "kind": self.kind,
            "features": self.features,
            "config": self.cfg.model_dump(mode="json"),
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> PointCloudClassifier:
        """Rebuild the (untrained) architecture described by :meth:`spec`."""
        return cls(spec["features"], ClassifierConfig.model_validate(spec["config"]))

    @torch.no_grad()
    def fit_normalization(self, *columns: Tensor) -> None:
        """Fit per-feature means and stds on the real hits of ``(hits, mask, [mass,] label)``.

        The energy enters as log E; a feature that is constant (or absent) keeps std 1.
        """
        hits, mask = columns[0], columns[1]
        self._check(hits, mask)
        real = self._transformed(hits)[mask > 0.5].double()
        if len(real):
            std = real.std(0) if len(real) > 1 else torch.zeros_like(real[0])
            self.hit_mean.copy_(real.mean(0))
            self.hit_std.copy_(torch.where(std > 0, std, torch.ones_like(std)))
        self._fit_mass(columns[2] if self.cfg.mass_parameterized else None, columns[-1])

    def _check(self, hits: Tensor, mask: Tensor) -> None:
        if hits.ndim != 3 or hits.shape[2] != self.features or hits.shape[1] < 1:
            raise DetlearnError(
                f"point-cloud classifier: expected hits [N, K, {self.features}] with K >= 1, "
                f"got {list(hits.shape)}"
            )
        if tuple(mask.shape) != tuple(hits.shape[:2]):
            raise DetlearnError(
                f"point-cloud classifier: mask {list(mask.shape)} does not match hits "
                f"{list(hits.shape)}"
            )

    def _transformed(self, hits: Tensor) -> Tensor:
        """The features with the energy replaced by log E (E floored at 1 keV)."""
        log_e = torch.log(hits[..., ENERGY_FEATURE : ENERGY_FEATURE + 1].clamp_min(_LOG_FLOOR))
        parts = [hits[..., :ENERGY_FEATURE], log_e]
        if self.features > ENERGY_FEATURE + 1:
            parts.append(hits[..., ENERGY_FEATURE + 1 :])
        return torch.cat(parts, dim=-1)

    def _graph(self, coords: Tensor, real: Tensor) -> tuple[Tensor, Tensor]:
        """The k nearest other real hits of every hit: indices [N, K, k] and validity [N, K, k].

        Self and padded hits get a squared distance of ``_FAR``; a slot that had to take one
        (fewer than k other real hits) is invalid.
        """
        n_hits = coords.shape[1]
        k = min(self.cfg.neighbours, max(n_hits - 1, 1))
        # Differences, not |a|² + |b|² − 2ab: hits on one cell lattice are often exactly
        # equidistant, and the cancellation made their order depend on the runtime's GEMM.
        # Ties are broken by the slot index, the same in PyTorch and onnxruntime.
        diff = coords.unsqueeze(2) - coords.unsqueeze(1)
        slot = torch.arange(n_hits, device=coords.device)
        dist = (diff * diff).sum(-1) + slot.to(coords.dtype) * _TIE
        excluded = ~real.unsqueeze(1) | (slot.unsqueeze(1) == slot)
        dist = torch.where(excluded, torch.full_like(dist, _FAR), dist)
        nearest, index = torch.topk(dist, k, dim=2, largest=False)
        return index, (nearest < _FAR / 2).to(coords.dtype)

    def forward(self, hits: Tensor, mask: Tensor, mass: Tensor | None = None) -> Tensor:
        """Logit [N] of hits [N, K, F] and mask [N, K] (and mass [N] in MeV if parameterized)."""
        self._check(hits, mask)
        real = mask > 0.5
        weight = real.to(hits.dtype).unsqueeze(-1)
        h = (self._transformed(hits) - self.hit_mean) / self.hit_std
        h = torch.where(real.unsqueeze(-1), h, torch.zeros_like(h))
        neighbours, valid = self._graph(h[..., :3], real)
        for block in self.blocks:
            h = block(h, neighbours, valid) * weight
        pooled = h.sum(1) / weight.sum(1).clamp_min(1.0)
        return self.head(pooled, self._mass_feature(mass))
