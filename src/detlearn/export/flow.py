r"""The flow's exporter: the sampler, the density and the count model as ONNX graphs.

A flow run exports as up to three graphs, each with its :class:`~.sidecar.Sidecar`, contexts
and targets in physical units, the support map and the standardization inside the graph:

- ``sample.onnx``: ``(noise [N, F], context [N, C]) -> sample [N, F]``; the host draws
  standard-normal noise (the pattern Geant4 Par04 and EICrecon use), every sample lies
  strictly inside the support;
- ``log_prob.onnx``: ``(x [N, F], context [N, C]) -> log_prob [N]``, log p(x | c) in nats per
  unit of x, -inf where x lies outside the support;
- ``count.onnx`` (a run with a count model): ``context [N, C] -> mean [N], dispersion [N]``,
  μ and r of the negative binomial

  .. math:: P(N = n | c) = \frac{\Gamma(n + r)}{\Gamma(r)\, n!}
            \left(\frac{r}{r + \mu}\right)^r \left(\frac{\mu}{r + \mu}\right)^n,

  which a host samples as λ ~ Gamma(shape r, scale μ / r), N ~ Poisson(λ).

Each is checked against PyTorch with onnxruntime on held-out inputs: the sampler and the count
model on ``rows`` contexts drawn uniformly in the training range (with fresh noise), the
density on ``rows`` rows of the run's test split. Criteria, from float32 round-off: samples
|Δ| <= 1e-5 + 5e-5 |x|; count parameters |Δ| <= 1e-5 |value|; log-densities |Δ| <= 1e-5
max(1, |log p|) + 2 δ (equal where -inf), δ PyTorch's own float32 round-off on those rows
(max |float32 - float64| of the same model), as a trained spline flow in float32 is off its
exact value by up to ~3e-5 relative, in either runtime. A graph that misses its criterion is an
error: it would not be the model that was validated.

Example:
    >>> summary = export_flow(Path("runs/klm"), Path("runs/klm/export"))   # doctest: +SKIP
    >>> sorted(summary["graphs"])                                        # doctest: +SKIP
    ['count.onnx', 'log_prob.onnx', 'sample.onnx']
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from detlearn.errors import DetlearnError
from detlearn.export.onnx import (
    OPSET,
    check_parity,
    check_relative_parity,
    export_onnx,
    session,
)
from detlearn.export.sidecar import (
    Column,
    Sidecar,
    Standardization,
    TensorSpec,
    export_summary,
    run_fields,
    write_sidecar,
)
from detlearn.models import CountModel
from detlearn.models.flows import ConditionalFlow
from detlearn.runs.artifact import RunInfo
from detlearn.runs.surrogate import Surrogate

__all__ = [
    "COUNT_RTOL",
    "LOG_PROB_RTOL",
    "ROUNDOFF_FACTOR",
    "CountParameters",
    "LogDensity",
    "NoiseSampler",
    "export_count_onnx",
    "export_flow",
    "export_log_prob_onnx",
    "export_sampler_onnx",
    "float_roundoff",
    "flow_log_prob",
]

# |onnx - torch| <= this max(1, |log p|) + ROUNDOFF_FACTOR x PyTorch's own float32 round-off.
LOG_PROB_RTOL = 1e-5
# A trained spline flow evaluated in float32 is itself off its float64 value by up to ~3e-5
# relative (measured on a mass-grid run: max |float32 - float64| = 7.3e-5 nats at |log p| ~ 4,
# from the conditioner and the spline, whose GEMMs onnxruntime orders differently): the graph
# may differ from PyTorch by as much as either differs from the exact value.
ROUNDOFF_FACTOR = 2
# mu and r are exp() of a small network's outputs: |onnx - torch| <= this |value|.
COUNT_RTOL = 1e-5


class NoiseSampler(torch.nn.Module):
    """(noise, context) -> sample, the module traced for ``sample.onnx``."""

    def __init__(self, flow: ConditionalFlow) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, noise: Tensor, context: Tensor) -> Tensor:
        return self.flow.sample_from_noise(noise, context)


class LogDensity(torch.nn.Module):
    """(x, context) -> log p(x | context), the module traced for ``log_prob.onnx``."""

    def __init__(self, flow: ConditionalFlow) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        return self.flow.log_prob(x, context)


class CountParameters(torch.nn.Module):
    """context -> (mean μ, dispersion r), the module traced for ``count.onnx``."""

    def __init__(self, count: CountModel) -> None:
        super().__init__()
        self.count = count

    def forward(self, context: Tensor) -> tuple[Tensor, Tensor]:
        log_mu, log_r = self.count._params(context)
        return log_mu.exp(), log_r.exp()


def _example(module: torch.nn.Module, *widths: int) -> tuple[Tensor, ...]:
    """Zeros [2, width] per input in the module's dtype and device: shapes for the tracer (the
    graphs have no data-dependent branch, so the values do not matter)."""
    ref = next(iter(module.buffers()))
    return tuple(torch.zeros(2, w, dtype=ref.dtype, device=ref.device) for w in widths)


def export_sampler_onnx(model: ConditionalFlow, path: str | Path, opset: int = OPSET) -> Path:
    """Export ``(noise[N, F], context[N, C]) -> sample[N, F]`` to ONNX with a dynamic batch axis.

    Inputs are named ``noise`` and ``context`` (float32, physical units for the context),
    the output ``sample`` (physical units). zuko's spline has no data-dependent branch, so
    tracing is exact.

    Example:
        >>> export_sampler_onnx(flow, "sample.onnx")  # doctest: +SKIP
    """
    # The wrapper starts in the model's mode, which export_onnx restores afterwards.
    wrapper = NoiseSampler(model).train(model.training)
    example = _example(model, model.features, model.context)
    return export_onnx(wrapper, example, path, ["noise", "context"], ["sample"], opset=opset)


def export_log_prob_onnx(model: ConditionalFlow, path: str | Path, opset: int = OPSET) -> Path:
    """Export ``(x[N, F], context[N, C]) -> log_prob[N]`` to ONNX with a dynamic batch axis.

    Inputs ``x`` and ``context`` in physical units (float32), output log p(x | c) in nats per
    unit of x, -inf where x lies outside the support.

    Example:
        >>> export_log_prob_onnx(flow, "log_prob.onnx")  # doctest: +SKIP
    """
    wrapper = LogDensity(model).train(model.training)
    example = _example(model, model.features, model.context)
    return export_onnx(wrapper, example, path, ["x", "context"], ["log_prob"], opset=opset)


def export_count_onnx(model: CountModel, path: str | Path, opset: int = OPSET) -> Path:
    """Export ``context[N, C] -> mean[N], dispersion[N]`` (μ and r of the negative binomial,
    module docstring) to ONNX with a dynamic batch axis.

    Example:
        >>> export_count_onnx(count, "count.onnx")  # doctest: +SKIP
    """
    wrapper = CountParameters(model).train(model.training)
    example = _example(model, model.context)
    return export_onnx(wrapper, example, path, ["context"], ["mean", "dispersion"], opset=opset)


def _context_input(info: RunInfo) -> TensorSpec:
    columns = [Column(name=c.name, unit=c.unit) for c in info.context]
    return TensorSpec(shape=["batch", len(columns)], dtype="float32", columns=columns)


def _target_tensor(info: RunInfo) -> TensorSpec:
    columns = [Column(name=t.name, unit=t.unit) for t in info.target]
    return TensorSpec(shape=["batch", len(columns)], dtype="float32", columns=columns)


def _flow_normalization(flow: ConditionalFlow, target: str) -> dict[str, Standardization]:
    """The flow's standardization of the context and of the target tensor ``target``."""
    return {
        "context": Standardization(
            center=flow.c_mean.tolist(),
            scale=flow.c_std.tolist(),
            log_columns=list(flow.cfg.log_context),
            note="of the context column, of its log for log_columns",
        ),
        target: Standardization(
            center=flow.x_mean.tolist(),
            scale=flow.x_std.tolist(),
            relative_to=dict(flow.cfg.relative_to),
            note=(
                "of s(x), the support map: log(x - lower), -log(upper - x), "
                "log((x - lower) / (upper - x)) or x, as the target's bounds are; a target "
                "relative_to a context column c has s(x) - log c (one bound) or x / c (none)"
            ),
        ),
    }


def _sample_graph(
    flow: ConditionalFlow, info: RunInfo, out: Path, noise: np.ndarray, context: np.ndarray
) -> Sidecar:
    path = export_sampler_onnx(flow, out / "sample.onnx")
    got = session(path).run(["sample"], {"noise": noise, "context": context})[0]
    with torch.no_grad():
        want = flow.sample_from_noise(torch.from_numpy(noise), torch.from_numpy(context)).numpy()
    checked = check_relative_parity(
        got,
        want,
        "per value (physical units), on contexts uniform in the training range and "
        "standard-normal noise",
        path,
    )
    return Sidecar(
        model=path.name,
        opset=OPSET,
        description=(
            "the flow's sampler: x = F^-1(noise; context) in physical units, strictly inside "
            "the support. The host draws the noise and repeats a context row once per sample "
            "it wants there."
        ),
        inputs={
            "noise": TensorSpec(
                shape=["batch", flow.features],
                dtype="float32",
                note="standard normal N(0, 1), independent values, drawn by the host",
            ),
            "context": _context_input(info),
        },
        outputs={"sample": _target_tensor(info)},
        normalization=_flow_normalization(flow, "sample"),
        parity=checked,
        **run_fields(info),
    )


def _test_rows(info: RunInfo, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``rows`` rows (x [N, F], c [N, C], float32) of the run's test split."""
    test = info.load_split([*info.context_names, *info.target_names], "test", max_rows=rows)
    if not len(test[info.target_names[0]]):
        raise DetlearnError(
            f"{info.dataset}: the test split has no rows to check the exported density on"
        )
    x = np.stack([test[k] for k in info.target_names], 1).astype(np.float32)
    c = np.stack([test[k] for k in info.context_names], 1).astype(np.float32)
    return x, c


def flow_log_prob(flow: ConditionalFlow, x: np.ndarray, context: np.ndarray) -> np.ndarray:
    """PyTorch's log p(x | c) [N] (float64 numpy) of float32 inputs, in the flow's dtype."""
    ref = flow.x_mean
    with torch.no_grad():
        lp = flow.log_prob(torch.from_numpy(x).to(ref), torch.from_numpy(context).to(ref))
    return lp.double().numpy()


def float_roundoff(value: np.ndarray, exact: np.ndarray) -> float:
    """The largest |value - exact| where ``exact`` is finite: how far a float32 evaluation
    is off the same function evaluated in float64."""
    finite = np.isfinite(exact)
    return float(np.max(np.abs(value[finite] - exact[finite]), initial=0.0))


def _log_prob_graph(
    flow: ConditionalFlow, info: RunInfo, out: Path, x: np.ndarray, context: np.ndarray
) -> Sidecar:
    path = export_log_prob_onnx(flow, out / "log_prob.onnx")
    got = session(path).run(["log_prob"], {"x": x, "context": context})[0]
    want = flow_log_prob(flow, x, context)
    exact = flow_log_prob(copy.deepcopy(flow).double(), x, context)
    roundoff = float_roundoff(want, exact)
    checked = check_parity(
        got,
        want,
        LOG_PROB_RTOL * np.maximum(1.0, np.abs(want)) + ROUNDOFF_FACTOR * roundoff,
        f"|onnx - torch| <= {LOG_PROB_RTOL:g} max(1, |torch|) + {ROUNDOFF_FACTOR} x "
        f"{roundoff:.2g} (nats; PyTorch's own float32 round-off on these rows, max |float32 - "
        "float64|), equal where -inf, on rows of the run's test split",
        path,
        rel_floor=1.0,  # a log-density's relative difference is |Δ| / max(1, |log p|)
    )
    return Sidecar(
        model=path.name,
        opset=OPSET,
        description=(
            "the flow's density: log p(x | context) in nats per unit of x, physical units in "
            "(the support map and the standardization are inside the graph), -inf where x "
            "lies outside the support"
        ),
        inputs={"x": _target_tensor(info), "context": _context_input(info)},
        outputs={
            "log_prob": TensorSpec(
                shape=["batch"], dtype="float32", unit="nat", note="per unit of x; -inf outside"
            )
        },
        normalization=_flow_normalization(flow, "x"),
        parity=checked,
        **run_fields(info),
    )


def _count_graph(count: CountModel, info: RunInfo, out: Path, context: np.ndarray) -> Sidecar:
    path = export_count_onnx(count, out / "count.onnx")
    got = np.stack(session(path).run(["mean", "dispersion"], {"context": context}), 1)
    with torch.no_grad():
        log_mu, log_r = count._params(torch.from_numpy(context))
    want = torch.stack([log_mu, log_r], 1).exp().numpy()
    checked = check_parity(
        got,
        want,
        COUNT_RTOL * np.abs(want.astype(np.float64)),
        f"|onnx - torch| <= {COUNT_RTOL:g} |torch| for mean and dispersion, on contexts "
        "uniform in the training range",
        path,
    )
    column = (info.count or {}).get("column", "N")
    return Sidecar(
        model=path.name,
        opset=OPSET,
        description=(
            f"the count N ('{column}') per context: a negative binomial of mean mu and "
            "dispersion r, P(N = n) = Gamma(n + r) / (Gamma(r) n!) (r / (r + mu))^r "
            "(mu / (r + mu))^n for n = 0, 1, ...; E[N] = mu, Var[N] = mu + mu^2 / r. A host "
            "samples N as lambda ~ Gamma(shape r, scale mu / r), N ~ Poisson(lambda)."
        ),
        inputs={"context": _context_input(info)},
        outputs={
            "mean": TensorSpec(shape=["batch"], dtype="float32", note="mu = E[N | context] > 0"),
            "dispersion": TensorSpec(
                shape=["batch"],
                dtype="float32",
                note="r in (e^-10, e^10); r -> infinity is Poisson",
            ),
        },
        normalization={
            "context": Standardization(center=count.c_mean.tolist(), scale=count.c_std.tolist()),
            "mean": Standardization(
                center=[float(count.log_mean)],
                scale=[1.0],
                note="of log mu: the network's first output",
            ),
        },
        parity=checked,
        **run_fields(info, support=False),
    )


def export_flow(run_dir: Path, out: Path, rows: int = 4096, seed: int = 0) -> dict[str, Any]:
    """Export a flow run to ``out``: ``sample.onnx``, ``log_prob.onnx`` and, with a count
    model, ``count.onnx``, each with its sidecar ``<name>.json`` (module docstring).

    Each graph is checked with onnxruntime on ``rows`` held-out inputs (``seed`` draws the
    contexts and the noise). Returns the :func:`~.sidecar.export_summary` of the sidecars,
    the sampler's first.

    Raises:
        DetlearnError: a graph misses its parity criterion, or the test split is empty.
    """
    surrogate = Surrogate.load(run_dir)
    info, flow = surrogate.info, surrogate.flow
    rng = np.random.default_rng(seed)
    lo, hi = info.context_range()
    context = rng.uniform(lo, hi, (rows, len(lo))).astype(np.float32)
    noise = rng.standard_normal((rows, flow.features)).astype(np.float32)
    graphs = [
        lambda: _sample_graph(flow, info, out, noise, context),
        lambda: _log_prob_graph(flow, info, out, *_test_rows(info, rows)),
    ]
    if (count := surrogate.count) is not None:
        graphs.append(lambda: _count_graph(count, info, out, context))
    sidecars = []
    for graph in graphs:
        # Each sidecar as soon as its graph passes: a graph and its sidecar always belong together.
        sidecars.append(graph())
        write_sidecar(out, sidecars[-1])
    return export_summary(sidecars)
