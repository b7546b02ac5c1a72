"""ONNX helpers every family's exporter shares: tracing, opset, and the parity record.

Every exported graph has opset >= 17 and a dynamic batch axis, and is checked against
onnxruntime on held-out inputs; :func:`parity` is the record of that check kept in the sidecar.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detlearn._files import atomic_path

__all__ = ["OPSET", "PARITY_ATOL", "PARITY_RTOL", "export_onnx", "parity"]

OPSET = 17
# float32 round-off of a few hundred graph operations: |onnx - torch| <= atol + rtol |torch|.
PARITY_ATOL = 1e-5
PARITY_RTOL = 5e-5


def export_onnx(
    module: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    path: str | Path,
    input_names: list[str],
    output_names: list[str],
    opset: int = OPSET,
) -> Path:
    """Trace ``module`` (eval mode) to ONNX at ``path`` atomically, batch axis 0 dynamic.

    Uses the TorchScript exporter (``dynamo=False``), which needs no onnxscript.
    """
    path = Path(path)
    was_training = module.training
    batch = {0: "batch"}
    try:
        with warnings.catch_warnings(), atomic_path(path) as tmp:
            # The legacy exporter is chosen on purpose (the dynamo one needs onnxscript); its
            # deprecation notices are not the user's concern.
            warnings.simplefilter("ignore", DeprecationWarning)
            # Shape checks are Python bools on traced shapes; they do not enter the graph.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            # A spline's F.pad traces to a reversed Slice that is merely left unfolded.
            warnings.filterwarnings("ignore", "Constant folding", UserWarning)
            torch.onnx.export(
                module.eval(),
                example,
                str(tmp),
                dynamo=False,
                opset_version=opset,
                input_names=input_names,
                output_names=output_names,
                dynamic_axes={name: batch for name in input_names + output_names},
            )
    finally:
        module.train(was_training)
    return path


def parity(got: np.ndarray, want: np.ndarray, tolerance: Any) -> dict[str, float]:
    """The sidecar's parity record of outputs ``got`` against ``want``; ``tolerance`` (a scalar
    or per value) is the criterion's unit of ``parity_max_scaled`` (faithful when <= 1)."""
    diff = np.abs(got - want)
    return {
        "parity_max_abs": float(diff.max()),
        "parity_max_rel": float((diff / np.maximum(np.abs(want), 1e-6)).max()),
        "parity_max_scaled": float((diff / tolerance).max()),
        "parity_rows": len(want),
    }
