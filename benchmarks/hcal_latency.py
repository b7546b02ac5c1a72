"""Claim: the hcal-energy regressor (Model4Exp) reconstructs a channel in <= 50 ns at batch 16384
on 2 CPU cores (FACILE reported ~500 ns on a CPU).

Builds Model4Exp with its input and target scaling fitted on simulated channels (or loads a
trained run with ``--run``), exports it as ``detlearn export`` does (the folded form: a
centring, then Gemm + ReLU; ``detlearn.export.export_regressor_onnx``), and times, in this
process, back to back, the per-channel latency vs batch size (2^8 ... 2^16; medians over
``--trials`` timed trials after warm-up, each trial >= 20 ms of back-to-back calls):

- torch eager: the model as trained (scaling + BatchNorm layers, eval mode);
- TorchScript: the folded model, scripted and optimized for inference;
- onnxruntime on a plain export of the model as trained (``torch.onnx.export`` of the
  eval-mode module: scaling and BatchNorm ops in the graph), default ``InferenceSession``:
  the reference;
- onnxruntime on detlearn's export, default ``InferenceSession``.

torch runs with ``--threads`` intra-op threads. Prints the table, detlearn's export at 16384
against the 50 ns target and its ratio to the reference; writes timing.png.

Run: .venv/bin/python benchmarks/hcal_latency.py [--trials 15] [--run RUN_DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from detlearn.config import RegressorConfig
from detlearn.evaluation.latency import latency_per_row, plot_latency
from detlearn.export import export_onnx, export_regressor_onnx
from detlearn.models.regressors import Regressor
from detlearn.recipes.hcal_energy import HcalSimConfig, generate_channels
from detlearn.run import Regression

TARGET_NS = 50.0
BATCHES = [2**k for k in range(8, 17)]


def inputs_from_simulation(n: int) -> tuple[np.ndarray, np.ndarray]:
    """[n, 36] FACILE inputs (depth, ieta, iphi, gain, raw, ped, inNoiseADC, inNoisePhoto), genE."""
    ch = generate_channels(n, HcalSimConfig(), np.random.default_rng(0)).branches()
    scalars = [ch[k].reshape(-1, 1) for k in ("depth", "ieta", "iphi", "gain")]
    arrays = [ch[k] for k in ("raw", "ped", "inNoiseADC", "inNoisePhoto")]
    return np.concatenate(scalars + arrays, 1).astype(np.float32), ch["genE"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=15, help="timed trials per batch size")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--run", type=Path, default=None, help="a trained hcal-energy run")
    parser.add_argument("--out", type=Path, default=None, help="folder for timing.png")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="hcal_latency_"))
    out.mkdir(parents=True, exist_ok=True)

    x, gen_e = inputs_from_simulation(max(BATCHES))
    if args.run is not None:
        model = Regression.load(args.run).model
    else:
        model = Regressor(x.shape[1], RegressorConfig(arch="model4exp"))
        model.fit_normalization(torch.from_numpy(x), torch.from_numpy(gen_e))
    model.eval()
    onnx_path = export_regressor_onnx(model, out / "model.onnx")
    plain_path = export_onnx(model, (torch.zeros(2, x.shape[1]),), out / "plain.onnx",
                             ["inputs"], ["genE"])  # fmt: skip
    torch.set_num_threads(args.threads)

    def torch_eager(b: np.ndarray) -> torch.Tensor:
        with torch.inference_mode():
            return model(torch.from_numpy(b))

    scripted = torch.jit.optimize_for_inference(torch.jit.script(model.folded()))

    def torchscript(b: np.ndarray) -> torch.Tensor:
        with torch.inference_mode():
            return scripted(torch.from_numpy(b))

    sessions = {
        name: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for name, path in [("plain", plain_path), ("detlearn", onnx_path)]
    }

    def ort_plain(b: np.ndarray) -> list[np.ndarray]:
        return sessions["plain"].run(None, {"inputs": b})

    def ort_detlearn(b: np.ndarray) -> list[np.ndarray]:
        return sessions["detlearn"].run(None, {"inputs": b})

    # The runtimes agree before they are timed.
    check = x[:4096]
    want = torch_eager(check).numpy()
    for name, fn in [("torchscript", torchscript), ("ort plain", ort_plain),
                     ("ort detlearn", ort_detlearn)]:  # fmt: skip
        got = fn(check)
        got = np.asarray(got[0] if isinstance(got, list) else got).reshape(-1)
        err = np.abs(got - want).max() / float(model.y_std)
        assert err < 1e-4, f"{name} disagrees with torch eager by {err:.1e} sigma_y"

    runtimes = {
        "torch eager": torch_eager,
        "TorchScript (folded)": torchscript,
        "onnxruntime, plain export": ort_plain,
        "onnxruntime, detlearn export": ort_detlearn,
    }
    curves = {name: latency_per_row(fn, x, BATCHES, trials=args.trials)
              for name, fn in runtimes.items()}  # fmt: skip
    print(f"per-channel latency [ns], median of {args.trials} trials, {args.threads} threads")
    print(f"{'batch':>7} " + " ".join(f"{n:>22}" for n in curves))
    for i, b in enumerate(BATCHES):
        print(f"{b:>7} " + " ".join(f"{c[i]['ns_per_row']:>22.1f}" for c in curves.values()))
    at = {name: next(r["ns_per_row"] for r in rows if r["batch"] == 16384)
          for name, rows in curves.items()}  # fmt: skip
    ours, ref = at["onnxruntime, detlearn export"], at["onnxruntime, plain export"]
    verdict = "met" if ours <= TARGET_NS else "NOT met"
    print(
        f"batch 16384: detlearn export {ours:.1f} ns/channel (target <= {TARGET_NS:g} ns: "
        f"{verdict}); plain export, default session {ref:.1f} ns -> {ref / ours:.2f}x faster"
    )
    print(f"timing plot: {plot_latency(curves, out / 'timing.png', target_ns=TARGET_NS)}")


if __name__ == "__main__":
    main()
