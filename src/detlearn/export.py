"""Deployment: ONNX export of a trained run, a JSON sidecar, and a parity check.

A flow exports as its sampler ``(noise[N, F], context[N, C]) -> sample[N, F]``: the host draws
standard-normal noise (the pattern Geant4 Par04 and EICrecon use) and passes contexts in
physical units; the support map and the standardization are inside the graph. The sidecar
``<name>.json`` lists the input and output names, units, the support, the normalization
constants and the training range of every context, and the measured parity with PyTorch.

Example:
    >>> result = export_run("runs/klm")           # doctest: +SKIP
    >>> result["parity_max_abs"] < 1e-4           # doctest: +SKIP
    True
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from detlearn.errors import DetlearnError
from detlearn.io.dataset import atomic_write_json

__all__ = ["check_parity", "export_run"]

OPSET = 17
# float32 round-off of a few hundred graph operations: |onnx - torch| <= atol + rtol |torch|.
PARITY_ATOL = 1e-5
PARITY_RTOL = 5e-5


def check_parity(
    onnx_path: Path, flow: Any, noise: np.ndarray, context: np.ndarray
) -> dict[str, float]:
    """Max absolute and relative difference of onnxruntime vs PyTorch on the same inputs."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(["sample"], {"noise": noise, "context": context})[0]
    with torch.no_grad():
        want = flow.sample_from_noise(torch.from_numpy(noise), torch.from_numpy(context)).numpy()
    diff = np.abs(got - want)
    return {
        "parity_max_abs": float(diff.max()),
        "parity_max_rel": float((diff / np.maximum(np.abs(want), 1e-6)).max()),
        "parity_max_scaled": float((diff / (PARITY_ATOL + PARITY_RTOL * np.abs(want))).max()),
        "parity_rows": len(noise),
    }


def export_run(
    run_dir: str | Path, out: str | Path | None = None, rows: int = 4096, seed: int = 0
) -> dict[str, Any]:
    """Export a run's flow to ONNX with its sidecar; returns the sidecar contents.

    Parity is checked with onnxruntime on ``rows`` held-out inputs: contexts drawn uniformly in
    the training range and fresh noise. A difference above 1e-5 + 5e-5 |x| (physical units)
    is an error: the exported graph would not be the model that was validated.
    """
    from detlearn.models.flows import export_sampler_onnx
    from detlearn.run import Surrogate

    surrogate = Surrogate.load(run_dir)
    out = Path(out) if out is not None else Path(run_dir) / "export"
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / "sampler.onnx"
    tmp = out / ".sampler.onnx.tmp"
    export_sampler_onnx(surrogate.flow, tmp, opset=OPSET)
    tmp.replace(onnx_path)

    rng = np.random.default_rng(seed)
    lo = np.array([c["min"] for c in surrogate.info["context"]])
    hi = np.array([c["max"] for c in surrogate.info["context"]])
    context = rng.uniform(lo, hi, (rows, len(lo))).astype(np.float32)
    noise = rng.standard_normal((rows, len(surrogate.target_names))).astype(np.float32)
    parity = check_parity(onnx_path, surrogate.flow, noise, context)
    if parity["parity_max_scaled"] > 1:
        raise DetlearnError(
            f"{onnx_path}: onnxruntime differs from PyTorch by {parity['parity_max_abs']:.2e} "
            f"(relative {parity['parity_max_rel']:.1e}); the export is not faithful"
        )
    flow = surrogate.flow
    sidecar = {
        "model": onnx_path.name,
        "opset": OPSET,
        "recipe": surrogate.info.get("recipe"),
        "detlearn_version": surrogate.info.get("detlearn_version"),
        "inputs": {
            "noise": {
                "shape": ["batch", flow.features],
                "dtype": "float32",
                "distribution": "standard normal, drawn by the host",
            },
            "context": {
                "shape": ["batch", flow.context],
                "dtype": "float32",
                "columns": surrogate.info["context"],
            },
        },
        "outputs": {
            "sample": {
                "shape": ["batch", flow.features],
                "dtype": "float32",
                "columns": surrogate.info["target"],
            }
        },
        "normalization": {
            "target_mean": flow.x_mean.tolist(),
            "target_std": flow.x_std.tolist(),
            "context_mean": flow.c_mean.tolist(),
            "context_std": flow.c_std.tolist(),
            "note": "applied inside the graph, after the support map of each target",
        },
        **parity,
    }
    atomic_write_json(out / "sampler.json", sidecar)
    return sidecar
