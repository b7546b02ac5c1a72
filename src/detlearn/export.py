"""Deployment: ONNX export of a trained run, a JSON sidecar, and a parity check.

A regressor exports as ``inputs[N, F] -> <target>[N]`` (physical units both sides): Gemm +
activation nodes only, the input and target scaling and the eval-mode BatchNorms folded in, the
batch along the GEMMs' wide dimension (:func:`regressor_onnx_model`), checked against the
PyTorch model as trained on test-split inputs: |onnx − torch| ≤ 1e-5 σ_y, σ_y the target's
standard deviation in training (the scale the network computes in; float32 evaluation of the
same function in a different order differs by about that much). The input centring is folded
into the first bias too when that graph meets the criterion, else kept as a Sub node (the
sidecar's ``center_folded``).

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

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detlearn.errors import DetlearnError
from detlearn.io.dataset import atomic_path, atomic_write_bytes, atomic_write_json
from detlearn.models.regressors import Regressor

__all__ = [
    "check_parity",
    "export_onnx",
    "export_run",
    "faithful_regressor_onnx",
    "regressor_onnx_model",
    "regressor_runtimes",
]

OPSET = 17
# float32 round-off of a few hundred graph operations: |onnx - torch| <= atol + rtol |torch|.
PARITY_ATOL = 1e-5
PARITY_RTOL = 5e-5
# Regressors: |onnx - torch| <= this x the target's training standard deviation.
REGRESSOR_PARITY = 1e-5


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
    import warnings

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


def regressor_onnx_model(model: Regressor, fold_center: bool = True) -> Any:
    """The regressor's eval-mode function as an ONNX graph ``inputs[N, F] -> <target>[N]``.

    Built from :meth:`~detlearn.models.Regressor.folded_layers` as plain Gemm + activation
    nodes. The batch runs along the columns: the first Gemm reads ``inputs`` transposed
    (``W_1 · inputsᵀ``, ``transB``) and every hidden state is [width, N]; a per-row layout
    would give the narrow layers (11, 3, 1 outputs) GEMMs a few columns wide, which the CPU
    kernels pad to full vectors. With ``fold_center`` the centring goes into the first bias
    (``b_1 − W_1 c``, float64): one pass over the inputs less (onnxruntime's broadcast Sub
    costs as much as a third of the network), at the price of float32 cancellation when an
    input sits far from zero in units of its spread (HCAL pedestals: 17.3 ± 0.2 fC).
    Otherwise the graph starts with ``inputs − c``. Physical units on both sides.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def const(name: str, value: torch.Tensor, shape: tuple[int, ...]) -> Any:
        return numpy_helper.from_array(value.numpy().astype(np.float32).reshape(shape), name)

    center, affine, activation = model.folded_layers()
    nodes, weights = [], []
    h = "inputs"
    if fold_center:
        w0, b0 = affine[0]
        affine = [(w0, b0 - w0 @ center), *affine[1:]]
    else:
        weights.append(const("center", center, (-1,)))
        nodes.append(helper.make_node("Sub", [h, "center"], ["centred"]))
        h = "centred"
    for i, (w, b) in enumerate(affine):
        weights += [const(f"W{i}", w, tuple(w.shape)), const(f"b{i}", b, (-1, 1))]
        nodes.append(helper.make_node("Gemm", [f"W{i}", h, f"b{i}"], [f"z{i}"], transB=int(i == 0)))
        h = f"z{i}"
        if i < len(affine) - 1:
            if activation == "silu":
                nodes += [
                    helper.make_node("Sigmoid", [h], [f"s{i}"]),
                    helper.make_node("Mul", [h, f"s{i}"], [f"a{i}"]),
                ]
            else:
                op = {"relu": "Relu", "tanh": "Tanh"}[activation]
                nodes.append(helper.make_node(op, [h], [f"a{i}"]))
            h = f"a{i}"
    weights.append(numpy_helper.from_array(np.array([-1], np.int64), "flat"))
    nodes.append(helper.make_node("Reshape", [h, "flat"], [model.target_name]))
    graph = helper.make_graph(
        nodes,
        "detlearn_regressor",
        [helper.make_tensor_value_info("inputs", TensorProto.FLOAT, ["batch", model.n_inputs])],
        [helper.make_tensor_value_info(model.target_name, TensorProto.FLOAT, ["batch"])],
        weights,
    )
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(onnx_model)
    return onnx_model


def faithful_regressor_onnx(model: Regressor, x: np.ndarray) -> tuple[bytes, dict[str, Any]]:
    """The fastest :func:`regressor_onnx_model` that reproduces ``model`` on inputs ``x``.

    The graph with the centring folded when onnxruntime's output on ``x`` [N, F] (physical
    units) is within ``REGRESSOR_PARITY`` σ_y of PyTorch's, else the one with a Sub node.

    Returns:
        The serialized graph and its parity: ``parity_max_abs`` (target units),
        ``parity_max_rel``, ``parity_max_scaled`` (in units of the criterion), ``parity_rows``,
        ``center_folded``.

    Raises:
        DetlearnError: neither graph meets the criterion.
    """
    import onnxruntime as ort

    x = np.ascontiguousarray(x, dtype=np.float32)
    with torch.inference_mode():
        want = model.eval()(torch.from_numpy(x)).numpy()
    scale = float(model.y_std)
    for fold_center in (True, False):
        graph = regressor_onnx_model(model, fold_center).SerializeToString()
        session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
        got = session.run(None, {"inputs": x})[0]
        parity = _parity(got, want, REGRESSOR_PARITY * scale) | {"center_folded": fold_center}
        if parity["parity_max_scaled"] <= 1:
            return graph, parity
    raise DetlearnError(
        f"onnxruntime differs from PyTorch by {parity['parity_max_abs']:.2e} "
        f"(> {REGRESSOR_PARITY:g} x sigma_y = {REGRESSOR_PARITY * scale:.2e}) on "
        f"{len(x)} test rows; the export is not faithful"
    )


def regressor_runtimes(
    model: Regressor, x: np.ndarray
) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """The regressor in torch eager, TorchScript and onnxruntime: name -> ``inputs -> [N]``.

    TorchScript runs :meth:`~detlearn.models.Regressor.folded`, scripted and optimized for
    inference; onnxruntime (default session) the graph ``detlearn export`` writes, chosen with
    the rows ``x`` (:func:`faithful_regressor_onnx`). Inputs [N, F] float32, physical units.
    """
    import onnxruntime as ort

    model = model.eval()
    scripted = torch.jit.optimize_for_inference(torch.jit.script(model.folded()))
    session = ort.InferenceSession(
        faithful_regressor_onnx(model, x)[0], providers=["CPUExecutionProvider"]
    )

    def torch_eager(b: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(b)).numpy()

    def torchscript(b: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return scripted(torch.from_numpy(b)).reshape(-1).numpy()

    def onnxruntime(b: np.ndarray) -> np.ndarray:
        return session.run(None, {"inputs": b})[0]

    return {
        "torch eager": torch_eager,
        "TorchScript (folded)": torchscript,
        "onnxruntime (detlearn export)": onnxruntime,
    }


def _export_regressor(run_dir: Path, out: Path, rows: int) -> dict[str, Any]:
    """The regressor branch of :func:`export_run` (parity on test-split inputs)."""
    from detlearn.run import Regression, load_run_split

    reg = Regression.load(run_dir)
    model = reg.model
    name = reg.target_name
    part = load_run_split(reg.info, reg.input_names, "test", max_rows=rows)
    x = np.stack([part[k] for k in reg.input_names], 1)
    try:
        graph, parity = faithful_regressor_onnx(model, x)
    except DetlearnError as err:
        raise DetlearnError(f"{run_dir}: {err}") from None
    onnx_path = out / "regressor.onnx"
    atomic_write_bytes(onnx_path, graph)
    scale = float(model.y_std)
    target = reg.info["target"][0]
    sidecar = {
        "model": onnx_path.name,
        "opset": OPSET,
        "recipe": reg.info.get("recipe"),
        "detlearn_version": reg.info.get("detlearn_version"),
        "inputs": {
            "inputs": {
                "shape": ["batch", model.n_inputs],
                "dtype": "float32",
                "columns": reg.info["context"],
            }
        },
        "outputs": {name: {"shape": ["batch"], "dtype": "float32", "unit": target["unit"]}},
        "normalization": {
            "input_mean": model.x_mean.tolist(),
            "input_std": model.x_std.tolist(),
            "target_mean": float(model.y_mean),
            "target_std": scale,
            "note": "applied inside the graph",
        },
        **parity,
    }
    atomic_write_json(out / "regressor.json", sidecar)
    return sidecar


def _parity(got: np.ndarray, want: np.ndarray, tolerance: Any) -> dict[str, float]:
    """The sidecar's parity record of outputs ``got`` against ``want``; ``tolerance`` (a scalar
    or per value) is the criterion's unit of ``parity_max_scaled`` (faithful when <= 1)."""
    diff = np.abs(got - want)
    return {
        "parity_max_abs": float(diff.max()),
        "parity_max_rel": float((diff / np.maximum(np.abs(want), 1e-6)).max()),
        "parity_max_scaled": float((diff / tolerance).max()),
        "parity_rows": len(want),
    }


def check_parity(
    onnx_path: Path, flow: Any, noise: np.ndarray, context: np.ndarray
) -> dict[str, float]:
    """Max absolute and relative difference of onnxruntime vs PyTorch on the same inputs."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(["sample"], {"noise": noise, "context": context})[0]
    with torch.no_grad():
        want = flow.sample_from_noise(torch.from_numpy(noise), torch.from_numpy(context)).numpy()
    return _parity(got, want, PARITY_ATOL + PARITY_RTOL * np.abs(want))


def export_run(
    run_dir: str | Path, out: str | Path | None = None, rows: int = 4096, seed: int = 0
) -> dict[str, Any]:
    """Export a run's model to ONNX with its sidecar; returns the sidecar contents.

    A regressor run is checked on ``rows`` test-split inputs (see the module docstring).

    Parity is checked with onnxruntime on ``rows`` held-out inputs: contexts drawn uniformly in
    the training range and fresh noise. A difference above 1e-5 + 5e-5 |x| (physical units)
    is an error: the exported graph would not be the model that was validated.
    """
    from detlearn.models.flows import export_sampler_onnx
    from detlearn.run import Surrogate, read_run_info

    out = Path(out) if out is not None else Path(run_dir) / "export"
    out.mkdir(parents=True, exist_ok=True)
    if read_run_info(run_dir).get("family") == "regressor":
        return _export_regressor(Path(run_dir), out, rows)
    surrogate = Surrogate.load(run_dir)
    onnx_path = export_sampler_onnx(surrogate.flow, out / "sampler.onnx", opset=OPSET)

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
        **parity,
    }
    atomic_write_json(out / "sampler.json", sidecar)
    return sidecar
