"""The flow's exporter: the sampler ``(noise, context) -> sample`` as ONNX, with its sidecar.

A flow exports as its sampler ``(noise[N, F], context[N, C]) -> sample[N, F]``: the host draws
standard-normal noise (the pattern Geant4 Par04 and EICrecon use) and passes contexts in
physical units; the support map and the standardization are inside the graph. The sidecar
``sampler.json`` lists the input and output names, units, the support, the normalization
constants and the training range of every context, and the measured parity with PyTorch.

Example:
    >>> sidecar = export_flow(Path("runs/klm"), Path("runs/klm/export"))   # doctest: +SKIP
    >>> sidecar["parity_max_abs"] < 1e-4                                  # doctest: +SKIP
    True
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor

from detlearn._files import atomic_write_json
from detlearn.errors import DetlearnError
from detlearn.export.onnx import OPSET, PARITY_ATOL, PARITY_RTOL, export_onnx, parity
from detlearn.models.flows import ConditionalFlow
from detlearn.runs.surrogate import Surrogate

__all__ = ["NoiseSampler", "check_parity", "export_flow", "export_sampler_onnx"]


class NoiseSampler(torch.nn.Module):
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
    ref = model.x_mean
    example = (
        torch.randn(2, model.features, dtype=ref.dtype, device=ref.device),
        torch.zeros(2, model.context, dtype=ref.dtype, device=ref.device),
    )
    # The wrapper starts in the model's mode, which export_onnx restores afterwards.
    wrapper = NoiseSampler(model).train(model.training)
    return export_onnx(wrapper, example, path, ["noise", "context"], ["sample"], opset=opset)


def check_parity(
    onnx_path: Path, flow: ConditionalFlow, noise: np.ndarray, context: np.ndarray
) -> dict[str, float]:
    """Max absolute and relative difference of onnxruntime vs PyTorch on the same inputs."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(["sample"], {"noise": noise, "context": context})[0]
    with torch.no_grad():
        want = flow.sample_from_noise(torch.from_numpy(noise), torch.from_numpy(context)).numpy()
    return parity(got, want, PARITY_ATOL + PARITY_RTOL * np.abs(want))


def export_flow(run_dir: Path, out: Path, rows: int = 4096, seed: int = 0) -> dict[str, Any]:
    """Export a flow run's sampler to ``out/sampler.onnx`` + ``sampler.json``; returns the
    sidecar.

    Parity is checked with onnxruntime on ``rows`` held-out inputs: contexts drawn uniformly in
    the training range and fresh noise. A difference above 1e-5 + 5e-5 |x| (physical units)
    is an error: the exported graph would not be the model that was validated.
    """
    surrogate = Surrogate.load(run_dir)
    onnx_path = export_sampler_onnx(surrogate.flow, out / "sampler.onnx", opset=OPSET)

    rng = np.random.default_rng(seed)
    lo, hi = surrogate.info.context_range()
    context = rng.uniform(lo, hi, (rows, len(lo))).astype(np.float32)
    noise = rng.standard_normal((rows, len(surrogate.target_names))).astype(np.float32)
    checked = check_parity(onnx_path, surrogate.flow, noise, context)
    if not checked["parity_max_scaled"] <= 1:  # NaN fails too
        raise DetlearnError(
            f"{onnx_path}: onnxruntime differs from PyTorch by {checked['parity_max_abs']:.2e} "
            f"(relative {checked['parity_max_rel']:.1e}); the export is not faithful"
        )
    flow = surrogate.flow
    sidecar = {
        "model": onnx_path.name,
        "opset": OPSET,
        "recipe": surrogate.info.recipe,
        "detlearn_version": surrogate.info.detlearn_version,
        "inputs": {
            "noise": {
                "shape": ["batch", flow.features],
                "dtype": "float32",
                "distribution": "standard normal, drawn by the host",
            },
            "context": {
                "shape": ["batch", flow.context],
                "dtype": "float32",
                "columns": [c.model_dump() for c in surrogate.info.context],
            },
        },
        "outputs": {
            "sample": {
                "shape": ["batch", flow.features],
                "dtype": "float32",
                "columns": [t.model_dump() for t in surrogate.info.target],
            }
        },
        "normalization": {
            "target_center": flow.x_mean.tolist(),
            "target_scale": flow.x_std.tolist(),
            "context_mean": flow.c_mean.tolist(),
            "context_std": flow.c_std.tolist(),
            "target_relative_to": flow.cfg.relative_to,
            "context_log": flow.cfg.log_context,
            "note": (
                "applied inside the graph: u = (support(x / c) - target_center) / "
                "target_scale, c the target_relative_to context column (1 if none); the "
                "context_log columns are standardized as log(context)"
            ),
        },
        **checked,
    }
    atomic_write_json(out / "sampler.json", sidecar)
    return sidecar
