"""Dense regressors: FACILE's ``Model4Exp`` exactly, or a configurable MLP, with stored scaling.

A :class:`Regressor` maps F inputs (physical units) to one target (physical units, e.g. GeV):

    x → (x − μ_x)/σ_x → [BatchNorm → Linear → act] × L → Linear → y · σ_y + μ_y

μ and σ are fitted on the training split (:meth:`Regressor.fit_normalization`) and saved with
the weights. ``arch="model4exp"`` is FACILE's ``4layersExp``: BatchNorm → Dense 36 (ReLU) →
BatchNorm → Dense 11 (ReLU) → BatchNorm → Dense 3 (ReLU) → Dense 1, Keras BatchNorm momentum
0.6 (PyTorch momentum 0.4); 2,111 parameters counted as Keras does (BatchNorm moving mean and
variance included: :meth:`Regressor.keras_parameter_count`).

For deployment :meth:`Regressor.folded` returns the same function as four plain ``Linear``
layers: the input scaling and every eval-mode BatchNorm are affine maps, folded into the
weights of the layer that follows them, and the target scaling into the last layer.

Example:
    >>> from detlearn.config import RegressorConfig
    >>> model = Regressor(36, RegressorConfig(arch="model4exp"))
    >>> model.keras_parameter_count()
    2111
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from detlearn.config import RegressorConfig
from detlearn.errors import DetlearnError

__all__ = ["MODEL4EXP_HIDDEN", "Regressor"]

#: Hidden layer sizes of FACILE's Model4Exp.
MODEL4EXP_HIDDEN = (36, 11, 3)
# Keras BatchNormalization(momentum=0.6): moving = 0.6 moving + 0.4 batch.
_MODEL4EXP_BN_MOMENTUM = 0.4
_ACTIVATIONS = {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh, "silu": torch.nn.SiLU}
# Relative-error loss: |y| below this (target units) counts as this, so y ≈ 0 cannot blow up.
_RELATIVE_FLOOR = 1e-3


def _layers(
    n_inputs: int, hidden: list[int], batch_norm: bool, activation: str, momentum: float
) -> torch.nn.Sequential:
    layers: list[torch.nn.Module] = []
    width = n_inputs
    for size in hidden:
        if batch_norm:
            layers.append(torch.nn.BatchNorm1d(width, momentum=momentum))
        layers += [torch.nn.Linear(width, size), _ACTIVATIONS[activation]()]
        width = size
    layers.append(torch.nn.Linear(width, 1))
    return torch.nn.Sequential(*layers)


class Regressor(torch.nn.Module):
    """One target from F inputs; a dense network with stored input and target scaling.

    Args:
        n_inputs: number of input columns F.
        cfg: architecture (``model4exp`` or ``mlp`` with ``hidden``, ``batch_norm``,
            ``activation``) and loss (``mse``, ``huber`` with ``huber_delta`` in target
            standard deviations, or ``relative``: mean ((ŷ − y)/y)²).
        input_names: names of the input columns (kept in the spec and the export sidecar).
        target_name: name of the target column.
    """

    kind = "regressor"
    batch_keys = ("inputs", "target")

    @property
    def loss_label(self) -> str:
        """Axis label of the training loss."""
        if self.cfg.loss == "relative":
            return "loss: mean ((ŷ − y)/y)²"
        return f"loss ({self.cfg.loss.upper() if self.cfg.loss == 'mse' else 'Huber'}) [σ_y²]"

    def __init__(
        self,
        n_inputs: int,
        cfg: RegressorConfig,
        input_names: list[str] | None = None,
        target_name: str = "target",
    ) -> None:
        super().__init__()
        if n_inputs < 1:
            raise DetlearnError(f"a regressor needs at least one input column (got {n_inputs})")
        self.n_inputs, self.cfg = n_inputs, cfg
        self.input_names = list(input_names or [f"x{i}" for i in range(n_inputs)])
        if len(self.input_names) != n_inputs:
            raise DetlearnError(f"{len(self.input_names)} input names for {n_inputs} inputs")
        self.target_name = target_name
        if cfg.arch == "model4exp":
            self.net = _layers(
                n_inputs, list(MODEL4EXP_HIDDEN), True, "relu", _MODEL4EXP_BN_MOMENTUM
            )
        else:
            self.net = _layers(n_inputs, cfg.hidden, cfg.batch_norm, cfg.activation, 0.1)
        self.register_buffer("x_mean", torch.zeros(n_inputs))
        self.register_buffer("x_std", torch.ones(n_inputs))
        self.register_buffer("y_mean", torch.zeros(()))
        self.register_buffer("y_std", torch.ones(()))

    def spec(self) -> dict[str, Any]:
        """JSON-serializable description; :meth:`from_spec` rebuilds the architecture."""
        return {
            "kind": self.kind,
            "n_inputs": self.n_inputs,
            "config": self.cfg.model_dump(mode="json"),
            "input_names": self.input_names,
            "target_name": self.target_name,
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Regressor:
        """Rebuild a regressor from :meth:`spec` (weights are loaded separately)."""
        return cls(
            spec["n_inputs"],
            RegressorConfig.model_validate(spec["config"]),
            spec["input_names"],
            spec["target_name"],
        )

    def keras_parameter_count(self) -> int:
        """Parameters as Keras counts them: weights plus BatchNorm moving mean and variance."""
        trainable = sum(p.numel() for p in self.net.parameters())
        moving = sum(
            m.running_mean.numel() + m.running_var.numel()
            for m in self.net.modules()
            if isinstance(m, torch.nn.BatchNorm1d)
        )
        return trainable + moving

    @torch.no_grad()
    def fit_normalization(self, inputs: Tensor, target: Tensor) -> None:
        """Set the input and target scaling from training rows (constant inputs keep σ = 1)."""
        std = inputs.double().std(0)
        self.x_mean.copy_(inputs.double().mean(0))
        self.x_std.copy_(torch.where(std > 0, std, torch.ones_like(std)))
        y = target.double().reshape(-1)
        self.y_mean.copy_(y.mean())
        self.y_std.copy_(y.std() if y.std() > 0 else torch.ones(()))

    def _check(self, inputs: Tensor) -> None:
        if inputs.ndim != 2 or inputs.shape[1] != self.n_inputs:
            raise DetlearnError(
                f"regressor inputs: expected shape [N, {self.n_inputs}], got {list(inputs.shape)}"
            )

    def _standardized(self, inputs: Tensor) -> Tensor:
        """The network's output in target standard deviations (before the target scaling)."""
        self._check(inputs)
        return self.net((inputs - self.x_mean) / self.x_std).squeeze(-1)

    def forward(self, inputs: Tensor) -> Tensor:
        """Prediction [N] in target units from inputs [N, F] in physical units."""
        return self._standardized(inputs) * self.y_std + self.y_mean

    def loss(self, batch: tuple[Tensor, ...] | list[Tensor]) -> Tensor:
        """Mean loss of ``(inputs, target[, weight])`` in target standard deviations².

        ``relative`` is the mean squared relative error ((ŷ − y)/y)² instead. With a weight
        column the mean of w·loss (signed weights scaled to mean 1 over the split by
        :func:`~detlearn.training.fit`: Σ w·loss / Σ w over the split).
        """
        inputs, target = batch[0], batch[1].reshape(-1)
        weight = batch[2] if len(batch) > 2 else None
        z = self._standardized(inputs)
        if self.cfg.loss == "relative":
            pred = z * self.y_std + self.y_mean
            per_row = ((pred - target) / target.abs().clamp_min(_RELATIVE_FLOOR)) ** 2
        else:
            t = (target - self.y_mean) / self.y_std
            per_row = (
                torch.nn.functional.huber_loss(z, t, reduction="none", delta=self.cfg.huber_delta)
                if self.cfg.loss == "huber"
                else (z - t) ** 2
            )
        if weight is None:
            return per_row.mean()
        return (per_row * weight.reshape(-1)).mean()

    @torch.no_grad()
    def folded_layers(self) -> tuple[Tensor, list[tuple[Tensor, Tensor]], str]:
        """The eval-mode function as ``x − c``, then affine layers with an activation between.

        The input scaling and the eval BatchNorms are affine maps: with the inputs centred
        first (x − c, the training means shifted by the first BatchNorm's running mean), every
        affine map a ⊙ x + b before ``Linear(W, β)`` becomes ``Linear(W diag(a), W b + β)``,
        and the target scaling multiplies the last layer. Computed in float64.

        Returns:
            ``(c [F], [(W [out, in], b [out]), ...], activation)``: the prediction in target
            units is ``L_k(act(... act(L_1(x − c))))`` with ``L_i(h) = W_i h + b_i``.
        """
        center = self.x_mean.double()
        scale = 1.0 / self.x_std.double()
        offset = torch.zeros_like(scale)  # the map so far: (x - center) * scale + offset
        affine: list[tuple[Tensor, Tensor]] = []
        for module in self.net:
            if isinstance(module, torch.nn.BatchNorm1d):
                a = module.weight.double() / torch.sqrt(module.running_var.double() + module.eps)
                if not affine:  # move the first running mean into the centring
                    center = center + module.running_mean.double() / scale
                else:
                    offset = offset - module.running_mean.double()
                offset = offset * a + module.bias.double()
                scale = scale * a
            elif isinstance(module, torch.nn.Linear):
                w = module.weight.double()
                affine.append((w * scale, w @ offset + module.bias.double()))
                scale = torch.ones(module.out_features, dtype=torch.float64)
                offset = torch.zeros(module.out_features, dtype=torch.float64)
        w, b = affine[-1]
        affine[-1] = (w * self.y_std.double(), b * self.y_std.double() + self.y_mean.double())
        return center, affine, self.activation

    @property
    def activation(self) -> str:
        """The hidden layers' activation: ``relu`` (Model4Exp), ``tanh`` or ``silu``."""
        return "relu" if self.cfg.arch == "model4exp" else self.cfg.activation

    @torch.no_grad()
    def folded(self) -> torch.nn.Sequential:
        """:meth:`folded_layers` as a float32 module: a centring, then Linear + activation.

        Centring before the first product keeps float32 round-off at the level of the unfolded
        model (inputs such as pedestals sit far from zero in units of their spread). Takes
        physical inputs [N, F], returns [N, 1] in target units.
        """
        center, affine, activation = self.folded_layers()
        layers: list[torch.nn.Module] = [_Center(center.float())]
        for i, (w, b) in enumerate(affine):
            linear = torch.nn.Linear(w.shape[1], w.shape[0])
            linear.weight.copy_(w)
            linear.bias.copy_(b)
            layers.append(linear)
            if i < len(affine) - 1:
                layers.append(_ACTIVATIONS[activation]())
        return torch.nn.Sequential(*layers).eval()


class _Center(torch.nn.Module):
    """x − c, per input column."""

    def __init__(self, center: Tensor) -> None:
        super().__init__()
        self.register_buffer("center", center)

    def forward(self, x: Tensor) -> Tensor:
        return x - self.center
