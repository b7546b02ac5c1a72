"""Deployment: every family's model as ONNX with a JSON sidecar, checked with onnxruntime.

- :mod:`.onnx`: tracing, opset and the parity record every exporter shares;
- :mod:`.flow`: the flow's sampler ``(noise, context) -> sample``;
- :mod:`.regressor`: the regressor's folded Gemm graph.

Which exporter a run uses is decided by :mod:`detlearn.families`.
"""

from __future__ import annotations

from detlearn.export.flow import check_parity, export_flow, export_sampler_onnx
from detlearn.export.onnx import OPSET, export_onnx, parity
from detlearn.export.regressor import (
    REGRESSOR_PARITY,
    export_regressor,
    faithful_regressor_onnx,
    regressor_onnx_model,
    regressor_runtimes,
)

__all__ = [
    "OPSET",
    "REGRESSOR_PARITY",
    "check_parity",
    "export_flow",
    "export_onnx",
    "export_regressor",
    "export_sampler_onnx",
    "faithful_regressor_onnx",
    "parity",
    "regressor_onnx_model",
    "regressor_runtimes",
]
