"""ONNX helpers every family's exporter shares: tracing, opset, and the parity check.

Every exported graph has opset >= 17 and a dynamic batch axis, and is checked against
onnxruntime on held-out inputs; :func:`check_parity` makes that check and returns its record,
the sidecar's :class:`~detlearn.export.sidecar.Parity`, or refuses an export that is not
faithful.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from detlearn._files import atomic_path
from detlearn._threads import adapt, adapting
from detlearn.errors import DetlearnError
from detlearn.export.sidecar import Parity

__all__ = [
    "OPSET",
    "PARITY_ATOL",
    "PARITY_RTOL",
    "Session",
    "check_parity",
    "check_relative_parity",
    "export_onnx",
    "session",
]

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

    Raises:
        ValueError: ``opset`` is below 17.
    """
    if opset < OPSET:
        raise ValueError(f"opset must be >= {OPSET}, got {opset}")
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


class Session:
    """An onnxruntime CPU session of one graph whose intra-op threads follow the CPUs free now
    (:func:`detlearn._threads.adapt`, before each :meth:`run`): onnxruntime's own pool spins
    while it waits, and beside one competing process that cost 60 % of the regressor's speed
    (the same collapse as OpenMP's), while a sleeping pool costs ~20 % on idle cores. It keeps
    one onnxruntime session per thread count met; with fixed thread counts (a user's
    ``OMP_NUM_THREADS``), one that does not spin. Other attributes (``get_inputs``, ...) are the
    first session's."""

    def __init__(self, source: str | bytes) -> None:
        self._source = source
        self._sessions: dict[int, ort.InferenceSession] = {}
        self._first = self._with(adapt())  # a graph that does not load fails here

    def _with(self, threads: int) -> ort.InferenceSession:
        if threads not in self._sessions:
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            if not adapting():
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self._sessions[threads] = ort.InferenceSession(
                self._source, options, providers=["CPUExecutionProvider"]
            )
        return self._sessions[threads]

    def run(
        self,
        output_names: Sequence[str] | None,
        input_feed: Mapping[str, Any],
        run_options: ort.RunOptions | None = None,
    ) -> list[Any]:
        """``InferenceSession.run`` on the threads free now."""
        return self._with(adapt()).run(output_names, input_feed, run_options)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._first, name)


def session(model: str | Path | bytes) -> Session:
    """A :class:`Session` of a graph file (or its serialized bytes) on the CPUs free now."""
    return Session(model if isinstance(model, bytes) else str(model))


def check_relative_parity(
    got: np.ndarray, want: np.ndarray, compared: str, what: str | Path
) -> Parity:
    """:func:`check_parity` at the common tolerance ``PARITY_ATOL + PARITY_RTOL |want|``;
    ``compared`` completes the criterion (what was compared, on which inputs)."""
    return check_parity(
        got,
        want,
        PARITY_ATOL + PARITY_RTOL * np.abs(np.asarray(want, np.float64)),
        f"|onnx - torch| <= {PARITY_ATOL:g} + {PARITY_RTOL:g} |torch| {compared}",
        what,
    )


def check_parity(
    got: np.ndarray,
    want: np.ndarray,
    tolerance: Any,
    criterion: str,
    what: str | Path,
    rel_floor: float = 1e-6,
) -> Parity:
    """Check onnxruntime's outputs ``got`` against PyTorch's ``want`` (rows along axis 0).

    ``tolerance`` (a scalar, or one per value) bounds |got - want|; ``criterion`` says it in
    words for the sidecar. Equal non-finite values (a log-density's -inf outside the support)
    agree; any other non-finite value, or NaN, does not.

    Returns:
        The sidecar's parity record: largest absolute and relative (to max(|want|,
        ``rel_floor``)) difference, the largest in units of ``tolerance``, the number of rows.

    Raises:
        DetlearnError: a difference exceeds the tolerance (naming ``what``, the graph).
    """
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        raise DetlearnError(f"{what}: onnxruntime gives shape {got.shape}, PyTorch {want.shape}")
    with np.errstate(invalid="ignore"):
        diff = np.where(got == want, 0.0, np.abs(got - want))
        scaled = float(np.max(diff / tolerance, initial=0.0))
    finite = np.isfinite(want)
    rel = diff[finite] / np.maximum(np.abs(want[finite]), rel_floor)
    if not scaled <= 1:  # NaN fails too
        raise DetlearnError(
            f"{what}: onnxruntime differs from PyTorch by {np.max(diff):.2e} (relative "
            f"{np.max(rel, initial=0.0):.1e}) on {len(want)} rows, more than {criterion}; "
            "the export is not faithful"
        )
    return Parity(
        max_abs=float(np.max(diff, initial=0.0)),
        max_rel=float(np.max(rel, initial=0.0)),
        max_scaled=scaled,
        rows=len(want),
        criterion=criterion,
    )
