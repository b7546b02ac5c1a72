"""Claim: detlearn's threading policy (``detlearn._threads``: torch's pool spinning with its thread
count fitted to the free CPUs, the other OpenMP pools sleeping, onnxruntime likewise fitted)
costs at most 5 % of the runtimes' own spinning pools with fixed threads on 2 idle cores, and
keeps more than 1/2.3 of its idle speed beside a busy process, where the spinning pools
collapse.

Three workloads, each under both policies, back to back and alternated (``--rounds``; medians):

1. KLM sampling (``benchmarks/klm_sample.py``'s main figure, M photons/s);
2. KLM training steps (the recipe's flow and batch of 8192, Adam; ms/step), with
   :func:`detlearn._threads.adapt` before each step as ``detlearn.training.fit`` calls it;
3. the hcal-energy regressor (Model4Exp, detlearn's export, batch 16384, ns/channel) in
   onnxruntime: ``detlearn.export.onnx.session`` against a default ``InferenceSession`` on the
   same threads, in this process, interleaved over 3x ``--rounds`` rounds (a 2-vCPU virtual
   machine has spells where every session runs 2-3x slower).

The runtimes' own policy is ``OMP_NUM_THREADS`` = the usable CPUs (a fixed count: detlearn then
adapts nothing) with ``GOMP_SPINCOUNT=300000`` (libgomp's default spinning, for every OpenMP
runtime). The OpenMP policy is read when a runtime loads, so 1. and 2. run in fresh
interpreters.

Prints, per workload, both idle figures and detlearn's idle cost (1 - its speed / the spinning
one's, target <= 5 %); with ``--contended`` also both policies beside one busy process. The
comparison line of ``_contention`` is the training step under detlearn's policy.

Run: .venv/bin/python benchmarks/idle_cost.py [--rounds 5] [--contended]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import _contention
import numpy as np
import onnxruntime as ort
import torch
from hcal_latency import inputs_from_simulation

from detlearn._threads import POLICY_VARIABLES, adapt, usable_cpus
from detlearn.config import FlowConfig, RegressorConfig
from detlearn.evaluation.latency import latency_curves
from detlearn.export.onnx import session
from detlearn.export.regressor import faithful_regressor_onnx
from detlearn.models.flows import ConditionalFlow
from detlearn.models.regressors import Regressor
from detlearn.recipes import get_recipe

HERE = Path(__file__).resolve().parent
TARGET = 0.05  # the largest idle cost allowed
BATCH = 16384
TRAIN_BATCH = 8192
OURS, SPINNING = "detlearn", "spinning, fixed threads"
POLICIES = {
    OURS: {},
    SPINNING: {"GOMP_SPINCOUNT": "300000", "OMP_NUM_THREADS": str(usable_cpus())},
}
_SAMPLING = re.compile(r"idle ([\d.]+) M photons/s, contended ([\d.]+) M photons/s")
_ONLY = re.compile(r"conditioner once per context :\s+([\d.]+) M photons/s")
_STEPS = re.compile(r"steps: idle ([\d.]+) ms, contended ([\d.]+|-) ms")


def fresh(argv: list[str], env: dict[str, str]) -> str:
    """stdout of ``argv`` in a fresh interpreter, the user's thread settings replaced by ``env``."""
    base = {k: v for k, v in os.environ.items() if k not in POLICY_VARIABLES}
    return subprocess.run(
        [sys.executable, *argv], env=base | env, capture_output=True, text=True, check=True
    ).stdout


def klm_sampling(env: dict[str, str], contended: bool) -> tuple[float, float | None]:
    """KLM sampling M photons/s, idle and (with ``contended``) beside a busy process."""
    out = fresh([str(HERE / "klm_sample.py"), *(["--contended"] if contended else [])], env)
    if contended:
        idle, loaded = _SAMPLING.search(out).groups()
        return float(idle), float(loaded)
    return float(_ONLY.search(out).group(1)), None


def training_steps(env: dict[str, str], contended: bool) -> tuple[float, float | None]:
    """KLM training ms/step, idle and (with ``contended``) beside a busy process."""
    out = fresh([__file__, "--steps", *(["--contended"] if contended else [])], env)
    idle, loaded = _STEPS.search(out).groups()
    return float(idle), None if loaded == "-" else float(loaded)


def step_worker(contended: bool) -> None:
    """Time KLM training steps here (the ``--steps`` worker) and print ``steps: idle ...``."""
    torch.manual_seed(0)
    cfg = FlowConfig(**get_recipe("klm-timing").default_config()["model"]["flow"])
    flow = ConditionalFlow(1, 3, cfg, lower=[0.0])
    n = TRAIN_BATCH * 24
    c = torch.stack(
        [
            torch.empty(n).uniform_(-732, 767),
            torch.empty(n).uniform_(0.8, 2.3),
            torch.empty(n).uniform_(0.1, 10),
        ],
        1,
    )
    x = torch.empty(n, 1).exponential_(0.2) + 4.0
    flow.fit_normalization(x, c)
    opt = torch.optim.Adam(flow.parameters(), 1e-3)

    def epoch() -> float:
        """ms per step of one pass over the rows."""
        start = time.perf_counter()
        for i in range(0, n, TRAIN_BATCH):
            adapt()
            loss = -flow.log_prob(x[i : i + TRAIN_BATCH], c[i : i + TRAIN_BATCH]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return (time.perf_counter() - start) / (n // TRAIN_BATCH) * 1e3

    epoch()  # warm-up
    idle = min(epoch() for _ in range(3))
    loaded = None
    if contended:
        with _contention.busy_process():
            loaded = min(epoch() for _ in range(3))
    print(f"steps: idle {idle:.2f} ms, contended {'-' if loaded is None else f'{loaded:.2f}'} ms")


def regressor_sessions() -> tuple[dict[str, object], np.ndarray]:
    """The exported regressor's onnxruntime call under each policy, and its inputs."""
    torch.manual_seed(0)
    x, gen_e = inputs_from_simulation(BATCH)
    model = Regressor(x.shape[1], RegressorConfig(arch="model4exp"))
    model.fit_normalization(torch.from_numpy(x), torch.from_numpy(gen_e))
    graph = faithful_regressor_onnx(model.eval(), x[:4096])[0]
    ours = session(graph)
    options = ort.SessionOptions()
    options.intra_op_num_threads = usable_cpus()
    spinning = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
    calls = {
        name: (lambda b, s=s: s.run(None, {"inputs": b})[0])
        for name, s in zip(POLICIES, (ours, spinning), strict=True)
    }
    return calls, x


def regressor_ns(calls: dict[str, object], x: np.ndarray, rounds: int) -> dict[str, float]:
    """Median ns/channel at batch 16384 of each policy, interleaved."""
    curves = latency_curves(calls, x, [BATCH], trials=3, rounds=rounds, settle_s=0.5)
    return {name: rows[0]["ns_per_row"] for name, rows in curves.items()}


def cost_line(what: str, unit: str, figures: dict[str, float], higher_is_faster: bool) -> str:
    """One workload's idle figures under both policies and detlearn's idle cost."""
    speed = (
        figures[OURS] / figures[SPINNING] if higher_is_faster else figures[SPINNING] / figures[OURS]
    )
    verdict = "met" if 1 - speed <= TARGET else "NOT met"
    shown = ", ".join(f"{k} {v:.3g} {unit}" for k, v in figures.items())
    return f"{what}: {shown}; idle cost {1 - speed:.1%} (target <= {TARGET:.0%}): {verdict}"


def alternated(measure, rounds: int, contended: bool) -> tuple[dict, dict]:
    """Median idle and contended figures of ``measure(env, contended)`` per policy."""
    runs = {name: [] for name in POLICIES}
    for _ in range(rounds):
        for name, env in POLICIES.items():
            runs[name].append(measure(env, contended))
    idle = {name: statistics.median(r[0] for r in rs) for name, rs in runs.items()}
    loaded = {name: statistics.median(r[1] for r in rs) for name, rs in runs.items()}
    return idle, loaded if contended else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternated runs per policy")
    parser.add_argument("--steps", action="store_true", help=argparse.SUPPRESS)  # the worker
    _contention.add_flag(parser)
    args = parser.parse_args()
    if args.steps:
        step_worker(args.contended)
        return

    sampling, sampling_loaded = alternated(klm_sampling, args.rounds, args.contended)
    print(cost_line("KLM sampling", "M photons/s", sampling, higher_is_faster=True))
    steps, steps_loaded = alternated(training_steps, args.rounds, args.contended)
    print(cost_line("KLM training step", "ms", steps, higher_is_faster=False))
    calls, x = regressor_sessions()
    ns = regressor_ns(calls, x, 3 * args.rounds)
    print(cost_line("hcal regressor, onnxruntime", "ns/channel", ns, higher_is_faster=False))
    if not args.contended:
        return
    with _contention.busy_process():
        ns_loaded = regressor_ns(calls, x, 3 * args.rounds)
    for name in POLICIES:
        print(
            f"beside a busy process, {name}: KLM sampling {sampling_loaded[name]:.3g} M photons/s "
            f"({sampling_loaded[name] / sampling[name]:.2f} of idle); training "
            f"{steps_loaded[name]:.3g} ms/step ({steps[name] / steps_loaded[name]:.2f} of idle "
            f"speed); regressor {ns_loaded[name]:.3g} ns/channel ({ns[name] / ns_loaded[name]:.2f} "
            "of idle speed)"
        )
    print(
        _contention.Comparison(
            "KLM training step, detlearn's policy",
            "ms",
            steps[OURS],
            steps_loaded[OURS],
            lower_is_better=True,
        ).line()
    )


if __name__ == "__main__":
    main()
