r"""How many: a negative-binomial model of a count N | c (e.g. photons per muon).

An MLP maps the standardized context to the mean mu > 0 and the dispersion (total count)
r > 0 of

.. math:: P(N = n | c) = \frac{\Gamma(n + r)}{\Gamma(r)\, n!}
          \left(\frac{r}{r + \mu}\right)^r \left(\frac{\mu}{r + \mu}\right)^n,
          \qquad \mathrm{E}[N] = \mu,\ \mathrm{Var}[N] = \mu + \mu^2 / r,

so a Poisson count is the limit r -> infinity and N = 0 is allowed. The mean is predicted on
a log scale around the training mean (``log mu = log mean(N) + net``), so counts that span
decades train as easily as counts near 1.

Example:
    >>> model = CountModel(context=2, hidden=[16])
    >>> c = torch.randn(4, 2)
    >>> model.sample(c).shape, model.mean(c).shape
    (torch.Size([4]), torch.Size([4]))
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
import zuko
from torch import Tensor

from detlearn.errors import DetlearnError

__all__ = ["CountModel"]

# Soft bound on log r: r in (e^-10, e^10) keeps lgamma and the Gamma sampler well-conditioned;
# r = e^10 is already indistinguishable from Poisson for any realistic count.
_LOG_R_BOUND = 10.0


class CountModel(torch.nn.Module):
    """Negative-binomial N | c with context-dependent mean and dispersion.

    Arguments:
        context: number of context features C (>= 1).
        hidden: hidden layer sizes of the MLP.
        context_names: optional names of the context features.
    """

    kind = "count_negbinom"
    batch_keys = ("count", "context")

    def __init__(
        self,
        context: int,
        hidden: list[int] | tuple[int, ...] = (64, 64),
        *,
        context_names: list[str] | None = None,
    ) -> None:
        super().__init__()
        if context < 1:
            raise DetlearnError(f"a count model needs >= 1 context feature (got {context})")
        self.context, self.hidden = context, [int(h) for h in hidden]
        self.context_names = (
            list(context_names) if context_names is not None else [f"c{i}" for i in range(context)]
        )
        self.register_buffer("c_mean", torch.zeros(context))
        self.register_buffer("c_std", torch.ones(context))
        self.register_buffer("log_mean", torch.zeros(()))
        self.net = zuko.nn.MLP(context, 2, hidden_features=self.hidden)
        # Start at mu = training mean and r = 1 for every context, a sane overdispersed prior.
        torch.nn.init.zeros_(self.net[-1].weight)
        torch.nn.init.zeros_(self.net[-1].bias)

    def spec(self) -> dict[str, Any]:
        """JSON-serializable architecture (weights and normalization live in safetensors)."""
        return {
            "kind": self.kind,
            "context": self.context,
            "hidden": self.hidden,
            "context_names": self.context_names,
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> CountModel:
        """Rebuild the (untrained) architecture described by :meth:`spec`."""
        return cls(spec["context"], spec["hidden"], context_names=spec.get("context_names"))

    @torch.no_grad()
    def fit_normalization(self, n: Tensor, c: Tensor) -> None:
        """Set the context standardization and the mean-count offset from training data."""
        n, c = torch.as_tensor(n).double(), torch.as_tensor(c).double()
        if (n < 0).any() or not torch.isfinite(n).all():
            raise DetlearnError("counts must be finite and >= 0")
        if not torch.isfinite(c).all():
            raise DetlearnError("context has non-finite values")
        s = c.std(dim=0) if len(c) > 1 else torch.ones_like(c[0])
        self.c_mean.copy_(c.mean(dim=0))
        self.c_std.copy_(torch.where(s > 0, s, torch.ones_like(s)))
        # An all-zero training set would give log 0; 1e-3 stands for "almost never".
        self.log_mean.copy_(torch.log(n.mean().clamp(min=1e-3)))

    def _params(self, c: Tensor) -> tuple[Tensor, Tensor]:
        """log mu [B] and log r [B]."""
        if c.ndim != 2 or c.shape[1] != self.context:
            raise ValueError(f"c must be [B, {self.context}], got {list(c.shape)}")
        out = self.net((c.to(self.c_mean) - self.c_mean) / self.c_std)
        raw = out[:, 1]
        return self.log_mean + out[:, 0], raw / (1 + raw.abs() / _LOG_R_BOUND)

    def log_prob(self, n: Tensor, c: Tensor) -> Tensor:
        """log P(N = n | c) [B] (n may be integer or float; n = 0 is allowed)."""
        log_mu, log_r = self._params(c)
        n = n.to(log_mu.dtype).reshape(log_mu.shape)
        r = log_r.exp()
        # log(r/(r+mu)) = -softplus(log mu - log r), stable for any ratio of mu and r.
        return (
            torch.lgamma(n + r)
            - torch.lgamma(r)
            - torch.lgamma(n + 1)
            - r * F.softplus(log_mu - log_r)
            - n * F.softplus(log_r - log_mu)
        )

    def loss(self, batch: tuple[Tensor, ...] | list[Tensor]) -> Tensor:
        """Mean negative log-likelihood of a batch ``(n, c)``, or weighted ``(n, c, w)``: the
        mean of w·NLL (weights scaled to mean 1 over the split by ``fit``)."""
        n, c, *weight = batch
        nll = -self.log_prob(n, c)
        if weight:
            return (nll * weight[0]).mean()
        return nll.mean()

    def mean(self, c: Tensor) -> Tensor:
        """E[N | c] = mu [B]."""
        return self._params(c)[0].exp()

    @torch.no_grad()
    def sample(self, c: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One count per context row: c [B, C] -> LongTensor [B], as a Gamma-Poisson mixture.

        ``lambda ~ Gamma(r, mu / r)``, ``N ~ Poisson(lambda)``.
        """
        log_mu, log_r = self._params(c)
        r = log_r.exp()
        # torch.distributions.Gamma.sample takes no generator; _standard_gamma does.
        rate = torch._standard_gamma(r, generator=generator) * (log_mu - log_r).exp()
        return torch.poisson(rate, generator=generator).long()
