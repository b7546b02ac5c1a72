"""Deployment: every family's model as ONNX with one JSON sidecar contract, checked with
onnxruntime.

- :mod:`.sidecar`: the :class:`Sidecar` record every graph has beside it, written and read;
- :mod:`.onnx`: tracing, opset and the parity check every exporter shares;
- :mod:`.flow`: the flow's sampler ``(noise, context) -> sample``, density
  ``(x, context) -> log_prob`` and count model ``context -> (mean, dispersion)``;
- :mod:`.regressor`: the regressor's folded Gemm graph;
- :mod:`.classifier`: the classifier's network, its pre-step in the sidecar.

Which exporter a run uses is decided by :mod:`detlearn.families`.
"""

from __future__ import annotations

from detlearn.export.classifier import export_classifier
from detlearn.export.flow import (
    export_count_onnx,
    export_flow,
    export_log_prob_onnx,
    export_sampler_onnx,
)
from detlearn.export.onnx import OPSET, check_parity, export_onnx
from detlearn.export.regressor import (
    REGRESSOR_PARITY,
    export_regressor,
    faithful_regressor_onnx,
    regressor_onnx_model,
    regressor_runtimes,
)
from detlearn.export.sidecar import Sidecar, read_sidecar, write_sidecar

__all__ = [
    "OPSET",
    "REGRESSOR_PARITY",
    "Sidecar",
    "check_parity",
    "export_classifier",
    "export_count_onnx",
    "export_flow",
    "export_log_prob_onnx",
    "export_onnx",
    "export_regressor",
    "export_sampler_onnx",
    "faithful_regressor_onnx",
    "read_sidecar",
    "regressor_onnx_model",
    "regressor_runtimes",
    "write_sidecar",
]
