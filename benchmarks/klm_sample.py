"""Claim: a KLM surrogate samples >= 5 million photon times/s on 2 CPU cores with ~100 photons
per context, because the conditioner runs once per context (vs once per photon).

Times, back to back in this process, with the recipe's default flow (NSF, 3 transforms,
16 bins, 128x128 hidden, normalized on KLM-like data):
  1. ``ConditionalFlow.sample(contexts, 100)``: conditioner once per context row;
  2. the same photons with the context repeated per photon (``sample_from_noise``), i.e. the
     conditioner once per photon, as a naive loop over photons would do.

``--contended``: the main figure (1.) is measured again beside one busy process, and both are
printed with their ratio (``_contention``).

Run: .venv/bin/python benchmarks/klm_sample.py [--contexts 20000] [--per-context 100]
     [--contended]
"""

from __future__ import annotations

import argparse
import os

import _contention
import _timing
import torch

from detlearn.config import FlowConfig
from detlearn.models.flows import ConditionalFlow
from detlearn.recipes import get_recipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, default=20_000)
    parser.add_argument("--per-context", type=int, default=100)
    _contention.add_flag(parser)
    args = parser.parse_args()
    torch.manual_seed(0)
    flow_cfg = FlowConfig(**get_recipe("klm-timing").default_config()["model"]["flow"])
    flow = ConditionalFlow(1, 3, flow_cfg, lower=[0.0]).eval()
    c = torch.stack(
        [
            torch.empty(50_000).uniform_(-732, 767),
            torch.empty(50_000).uniform_(0.8, 2.3),
            torch.empty(50_000).uniform_(0.1, 10),
        ],
        1,
    )
    flow.fit_normalization(torch.empty(50_000, 1).exponential_(0.2) + 4.0, c)
    ctx = c[: args.contexts]
    n = args.contexts * args.per_context
    with torch.no_grad():
        flow.sample(ctx[:100], 10)  # warm-up
        t_once = _contention.measure(
            lambda: _timing.best_of(lambda: flow.sample(ctx, args.per_context))[0],
            figure="conditioner once per context",
            unit="M photons/s",
            value=lambda t: n / t / 1e6,
            contended=args.contended,
        )
        rep = ctx.repeat_interleave(args.per_context, 0)
        noise = torch.randn(n, 1)
        t_rep = _timing.best_of(lambda: flow.sample_from_noise(noise, rep), repeat=1)[0]
    # Other jobs on the same cores slow every step: the load average says how shared they were.
    print(
        f"torch threads: {torch.get_num_threads()}, flow: {flow_cfg.kind} x{flow_cfg.transforms}, "
        f"bins {flow_cfg.bins}, hidden {flow_cfg.hidden}, load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"conditioner once per context : {n / t_once / 1e6:6.2f} M photons/s "
        f"(target >= 5, ratio {n / t_once / 5e6:.2f})"
    )
    print(f"context repeated per photon  : {n / t_rep / 1e6:6.2f} M photons/s")
    print(f"speed-up of once-per-context : {t_rep / t_once:.1f}x")


if __name__ == "__main__":
    main()
