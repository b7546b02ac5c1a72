"""Claim: detlearn's threading policy (idle threads sleep) costs at most 5 % of the runtimes' own
spinning thread pools on 2 idle cores, and keeps more than half the idle speed beside a busy
process where the spinning pools collapse.

Two workloads, each under both policies, back to back and alternated (``--rounds``; medians):

1. KLM sampling (``benchmarks/klm_sample.py``'s main figure, M photons/s), torch's and
   numba's OpenMP pools: detlearn's default (``OMP_WAIT_POLICY=PASSIVE``) against libgomp's
   own spinning, kept by a user's ``GOMP_SPINCOUNT`` (``detlearn._threads``; 300000 is
   libgomp's default count). The policy is read when the OpenMP library loads, so each run
   is a fresh interpreter.
2. The hcal-energy regressor (Model4Exp, detlearn's export, batch 16384, ns/channel) in
   onnxruntime: ``detlearn.export.onnx.session`` (``allow_spinning`` 0) against the same
   session with onnxruntime's default spinning, in this process, interleaved.

Prints, per workload, the idle figure of each policy and the sleeping policy's idle cost
(1 − its speed / the spinning one's, target ≤ 5 %); with ``--contended`` also both policies
beside one busy process. The comparison line of ``_contention`` is the KLM figure under
detlearn's policy.

Run: .venv/bin/python benchmarks/idle_cost.py [--rounds 3] [--contended]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import _contention
import numpy as np
import onnxruntime as ort
import torch
from hcal_latency import inputs_from_simulation

from detlearn.config import RegressorConfig
from detlearn.evaluation.latency import latency_curves
from detlearn.export.onnx import session
from detlearn.export.regressor import faithful_regressor_onnx
from detlearn.models.regressors import Regressor

HERE = Path(__file__).resolve().parent
TARGET = 0.05  # the largest idle cost allowed
BATCH = 16384
POLICIES = {"sleeping (detlearn)": {}, "spinning (runtime default)": {"GOMP_SPINCOUNT": "300000"}}
_IDLE = re.compile(r"idle ([\d.]+) M photons/s, contended ([\d.]+) M photons/s")
_ONLY = re.compile(r"conditioner once per context :\s+([\d.]+) M photons/s")


def klm_sampling(env: dict[str, str], contended: bool) -> tuple[float, float | None]:
    """KLM sampling M photons/s, idle and (with ``contended``) beside a busy process, in a
    fresh interpreter with ``env`` added."""
    argv = [sys.executable, str(HERE / "klm_sample.py"), *(["--contended"] if contended else [])]
    out = subprocess.run(
        argv, env=os.environ | env, capture_output=True, text=True, check=True
    ).stdout
    if contended:
        idle, loaded = _IDLE.search(out).groups()
        return float(idle), float(loaded)
    return float(_ONLY.search(out).group(1)), None


def regressor_sessions() -> tuple[dict[str, object], np.ndarray]:
    """The exported regressor's onnxruntime call under each policy, and its inputs."""
    torch.manual_seed(0)
    x, gen_e = inputs_from_simulation(BATCH)
    model = Regressor(x.shape[1], RegressorConfig(arch="model4exp"))
    model.fit_normalization(torch.from_numpy(x), torch.from_numpy(gen_e))
    graph = faithful_regressor_onnx(model.eval(), x[:4096])[0]
    sleeping = session(graph)
    options = ort.SessionOptions()
    options.intra_op_num_threads = sleeping.get_session_options().intra_op_num_threads
    spinning = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
    calls = {
        name: (lambda b, s=s: s.run(None, {"inputs": b})[0])
        for name, s in zip(POLICIES, (sleeping, spinning), strict=True)
    }
    return calls, x


def regressor_ns(calls: dict[str, object], x: np.ndarray, rounds: int) -> dict[str, float]:
    """Median ns/channel at batch 16384 of each policy, interleaved."""
    curves = latency_curves(calls, x, [BATCH], trials=3, rounds=rounds, settle_s=0.5)
    return {name: rows[0]["ns_per_row"] for name, rows in curves.items()}


def cost_line(what: str, unit: str, figures: dict[str, float], higher_is_faster: bool) -> str:
    sleeping, spinning = figures.values()
    speed = sleeping / spinning if higher_is_faster else spinning / sleeping
    verdict = "met" if 1 - speed <= TARGET else "NOT met"
    shown = ", ".join(f"{k} {v:.3g} {unit}" for k, v in figures.items())
    return f"{what}: {shown}; idle cost {1 - speed:.1%} (target <= {TARGET:.0%}): {verdict}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternated runs per policy")
    _contention.add_flag(parser)
    args = parser.parse_args()

    klm = {name: [] for name in POLICIES}
    for _ in range(args.rounds):
        for name, env in POLICIES.items():
            klm[name].append(klm_sampling(env, args.contended))
    idle = {name: statistics.median(r[0] for r in runs) for name, runs in klm.items()}
    print(cost_line("KLM sampling", "M photons/s", idle, higher_is_faster=True))

    calls, x = regressor_sessions()
    ns = regressor_ns(calls, x, args.rounds)
    print(cost_line("hcal regressor, onnxruntime", "ns/channel", ns, higher_is_faster=False))
    if not args.contended:
        return
    with _contention.busy_process():
        ns_loaded = regressor_ns(calls, x, args.rounds)
    loaded = {name: statistics.median(r[1] for r in runs) for name, runs in klm.items()}
    for name in POLICIES:
        print(
            f"beside a busy process, {name}: KLM sampling {loaded[name]:.3g} M photons/s "
            f"({loaded[name] / idle[name]:.2f} of idle); regressor {ns_loaded[name]:.3g} "
            f"ns/channel ({ns[name] / ns_loaded[name]:.2f} of idle speed)"
        )
    ours = next(iter(POLICIES))
    print(
        _contention.Comparison(
            "KLM sampling, sleeping threads",
            "M photons/s",
            idle[ours],
            loaded[ours],
        ).line()
    )


if __name__ == "__main__":
    main()
