"""Claim: onnxruntime runs detlearn's exported graphs (KLM sampler, flow density, HCAL
regressor, ECal CNN) faster per item than PyTorch eager runs the same models at every batch of
1 to 1,024 items, on 2 CPU cores; the time per item is measured up to 65,536 (the CNN 4,096).

Builds the four models in this process, untrained: random initial weights run the same
operations on the same shapes as trained ones (no graph has a data-dependent branch), so they
take the same time. Each is built with its recipe's settings and normalized on simulated data,
so that the inputs are realistic:

- KLM sampler and flow density: the klm-timing recipe's flow (``recipe.yaml``: nsf,
  3 transforms, 16 bins, hidden [128, 128]; contexts z, theta, p; target dt, lower -2 ns),
  its normalization fitted on 4,096 photons of events from the KLM simulator
  (``simulate_events``); exported as ``detlearn export`` does (``export_sampler_onnx``:
  ``(noise, context) -> sample``; ``export_log_prob_onnx``: ``(x, context) -> log_prob``).
  Timed on 65,536 simulated photons (their dt and contexts; standard-normal noise).
- HCAL regressor: Model4Exp, its scaling fitted on simulated channels, as ``hcal_latency.py``
  builds it; exported as detlearn's folded Gemm graph (``faithful_regressor_onnx``).
- ECal CNN: the ecal-veto recipe's classifier (cnn, not mass-parameterized: the recipe's
  default), on 20x20x3 images built (``build_images``, the recipe's image settings) from
  events of the ECal simulator (background and every default signal mass); exported as
  ``detlearn export`` does (``export_onnx`` of the eval-mode network). Batches stop at
  ``--cnn-max-batch`` (4,096): the CNN costs 0.15-0.5 ms per event on 2 cores, so a batch of
  65,536 events would take 10-30 s per call.

Each graph is checked against PyTorch before it is timed (the exporters' own criteria). Then,
per model, ``latency_curves`` times onnxruntime on the exported graph (detlearn's
``session()``) and PyTorch eager on the same model (``torch.inference_mode``; the sampler
``flow.sample_from_noise(noise, context)``, the density ``flow.log_prob(x, context)``, the
regressor's and the CNN's forward), on threads fitted to the free CPUs (``detlearn._threads``;
set ``OMP_NUM_THREADS`` to fix them), interleaved over
``--rounds`` rounds of ``--trials`` trials at batch sizes 1, 4, 16, ..., 65,536 (one untimed
call per batch and round first; each trial >= 20 ms of back-to-back calls, a single call at
the large batches). Both runtimes get the same contiguous input arrays, split out of
``latency_curves``'s rows once, in the untimed call. Prints, per model, the median ns per item
of each runtime and their ratio torch / onnxruntime, and the largest CPU steal (the
hypervisor's share) during its trials; then the claim's verdict and the ratios beyond batch
1,024. Writes one plot per model into ``--out`` (default: a temporary folder).

``--contended``: the main figure, the KLM sampler's onnxruntime ns/item at batch 16,384 (the
graph a fast simulation runs, at a batch where the per-call overhead is gone: ~50 KLM events'
photons), is measured again beside one busy process: the sampler's timing (both runtimes,
every batch) is repeated, and idle and contended are printed with their ratio
(``_contention``); the other models are timed idle only.

Run: .venv/bin/python benchmarks/export_latency.py [--trials 3] [--rounds 4]
     [--cnn-max-batch 4096] [--out DIR] [--contended]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from collections.abc import Callable, Sequence
from itertools import pairwise
from pathlib import Path

import _contention
import numpy as np
import torch

from detlearn._threads import usable_cpus
from detlearn.config import ClassifierConfig, FlowConfig, RegressorConfig
from detlearn.data.images import ImageSpec, build_images
from detlearn.evaluation.latency import latency_curves
from detlearn.export import (
    export_log_prob_onnx,
    export_onnx,
    export_sampler_onnx,
    regressor_runtimes,
)
from detlearn.export.flow import LOG_PROB_RTOL, ROUNDOFF_FACTOR, float_roundoff, flow_log_prob
from detlearn.export.onnx import check_parity, check_relative_parity, session
from detlearn.models.classifiers import ImageClassifier
from detlearn.models.flows import ConditionalFlow
from detlearn.models.regressors import Regressor
from detlearn.plots.latency import plot_latency
from detlearn.recipes import get_recipe
from detlearn.recipes.ecal_veto.simulate import DEFAULT_MASSES, EcalSimConfig, simulate_sample
from detlearn.recipes.hcal_energy import HcalSimConfig, generate_channels
from detlearn.recipes.klm_timing.simulate import KLMSimConfig, simulate_events

BATCHES = [4**k for k in range(9)]  # 1, 4, 16, ..., 65536
ROWS = max(BATCHES)  # distinct input rows per model (the CNN: fewer events, repeated)
ORT, TORCH = "onnxruntime (detlearn export)", "torch eager"
MAIN_BATCH = 16384
CLAIM_BATCH = 1024  # the claim: onnxruntime faster at every batch up to this
# The thread pool of the runtime timed before may still be awake (OpenMP's and onnxruntime's
# sleep at once under detlearn's policy; 0.5 s is a margin).
SETTLE_S = 0.5
# Every round: one untimed call per batch size (the first round also times one call to size
# the trials); more warm-up only costs seconds at the large batches.
WARMUP = 1
MIN_TRIAL_S = 0.02

Runtime = Callable[[np.ndarray], np.ndarray]


class Split:
    """A model's inputs as one [N, sum(widths)] array for ``latency_curves``, split back into
    contiguous arrays of ``widths`` columns, each batch once (cached while that batch exists):
    the runtimes are timed on their inputs, not on the copy that splits them."""

    def __init__(self, widths: Sequence[int]) -> None:
        self.edges = np.cumsum([0, *widths])
        self._cache: dict[int, tuple[np.ndarray, list[np.ndarray]]] = {}

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        hit = self._cache.get(id(x))
        if hit is None or hit[0] is not x:
            parts = [np.ascontiguousarray(x[:, a:b]) for a, b in pairwise(self.edges)]
            hit = self._cache[id(x)] = (x, parts)  # holding x keeps its id from being reused
        return hit[1]

    def clear(self) -> None:
        self._cache.clear()


# ---- the models ---------------------------------------------------------------------------


def klm_flow(rng: np.random.Generator) -> tuple[ConditionalFlow, np.ndarray, np.ndarray]:
    """The klm-timing recipe's flow, normalized on 4,096 simulated photons; and ROWS other
    photons' (dt [ROWS, 1], context [ROWS, 3]) in physical units, float32."""
    recipe = get_recipe("klm-timing").default_config()
    columns = recipe["data"]["columns"]
    context_names = [k for k, v in columns.items() if v.get("role") == "context"]
    target_names = [k for k, v in columns.items() if v.get("role") == "target"]
    assert context_names == ["z", "theta", "p"] and target_names == ["dt"], recipe["data"]
    events = simulate_events(64, KLMSimConfig(), rng)
    while int(events.n_photons.sum()) < ROWS + 4096:
        events = simulate_events(2 * len(events), KLMSimConfig(), rng)
    i = events.photon_event
    context = np.stack([events.z_hit[i], events.theta[i], events.p[i]], 1).astype(np.float32)
    dt = events.dt.reshape(-1, 1).astype(np.float32)
    order = rng.permutation(len(dt))
    fit, rows = order[:4096], order[4096 : 4096 + ROWS]
    torch.manual_seed(0)
    flow = ConditionalFlow(
        len(target_names),
        len(context_names),
        FlowConfig.model_validate(recipe["model"]["flow"]),
        [columns[t].get("lower") for t in target_names],
        [columns[t].get("upper") for t in target_names],
        names=target_names,
        context_names=context_names,
    )
    flow.fit_normalization(torch.from_numpy(dt[fit]), torch.from_numpy(context[fit]))
    return flow.eval(), dt[rows], context[rows]


def sampler_runtimes(
    flow: ConditionalFlow, noise: np.ndarray, context: np.ndarray, out: Path
) -> tuple[dict[str, Runtime], np.ndarray, Split]:
    """The sampler in onnxruntime and torch eager; their inputs [ROWS, F + C] and splitter."""
    graph = session(export_sampler_onnx(flow, out / "sample.onnx"))
    split = Split([flow.features, flow.context])

    def onnxruntime(x: np.ndarray) -> np.ndarray:
        z, c = split(x)
        return graph.run(None, {"noise": z, "context": c})[0]

    def eager(x: np.ndarray) -> np.ndarray:
        z, c = split(x)
        with torch.inference_mode():
            return flow.sample_from_noise(torch.from_numpy(z), torch.from_numpy(c)).numpy()

    check = np.concatenate([noise[:4096], context[:4096]], 1)
    check_relative_parity(
        onnxruntime(check), eager(check), "the sampler's export criterion", "sample.onnx"
    )
    return {ORT: onnxruntime, TORCH: eager}, np.concatenate([noise, context], 1), split


def density_runtimes(
    flow: ConditionalFlow, dt: np.ndarray, context: np.ndarray, out: Path
) -> tuple[dict[str, Runtime], np.ndarray, Split]:
    """The density in onnxruntime and torch eager; their inputs [ROWS, F + C] and splitter."""
    graph = session(export_log_prob_onnx(flow, out / "log_prob.onnx"))
    split = Split([flow.features, flow.context])

    def onnxruntime(x: np.ndarray) -> np.ndarray:
        v, c = split(x)
        return graph.run(None, {"x": v, "context": c})[0]

    def eager(x: np.ndarray) -> np.ndarray:
        v, c = split(x)
        with torch.inference_mode():
            return flow.log_prob(torch.from_numpy(v), torch.from_numpy(c)).numpy()

    v, c = dt[:4096], context[:4096]
    want = flow_log_prob(flow, v, c)
    exact = flow_log_prob(copy.deepcopy(flow).double(), v, c)
    check_parity(
        onnxruntime(np.concatenate([v, c], 1)),
        want,
        LOG_PROB_RTOL * np.maximum(1.0, np.abs(want))
        + ROUNDOFF_FACTOR * float_roundoff(want, exact),
        "the density's export criterion",
        "log_prob.onnx",
        rel_floor=1.0,
    )
    return {ORT: onnxruntime, TORCH: eager}, np.concatenate([dt, context], 1), split


def hcal_regressor(rng: np.random.Generator) -> tuple[dict[str, Runtime], np.ndarray]:
    """Model4Exp with its scaling fitted on simulated channels, as ``hcal_latency.py`` builds
    it; its runtimes and ROWS channels' inputs [ROWS, 36] (``regressor_runtimes`` checks the
    export on 4,096 of them)."""
    ch = generate_channels(ROWS, HcalSimConfig(), rng).branches()
    scalars = [ch[k].reshape(-1, 1) for k in ("depth", "ieta", "iphi", "gain")]
    arrays = [ch[k] for k in ("raw", "ped", "inNoiseADC", "inNoisePhoto")]
    x = np.concatenate(scalars + arrays, 1).astype(np.float32)
    model = Regressor(x.shape[1], RegressorConfig(arch="model4exp"))
    model.fit_normalization(torch.from_numpy(x), torch.from_numpy(ch["genE"]))
    runtimes = regressor_runtimes(model.eval(), x[:4096])
    return {ORT: runtimes[ORT], TORCH: runtimes[TORCH]}, x


def ecal_cnn(out: Path, events: int) -> tuple[dict[str, Runtime], np.ndarray, ClassifierConfig]:
    """The ecal-veto recipe's CNN, its runtimes, and images [N, C, H, W] of simulated events."""
    cfg = ClassifierConfig.model_validate(
        get_recipe("ecal-veto").default_config()["model"]["classifier"]
    )
    assert cfg.arch == "cnn" and not cfg.mass_parameterized, cfg
    sim = EcalSimConfig()
    per_sample = max(1, events // (2 * len(DEFAULT_MASSES)))
    samples = [simulate_sample(None, events // 2, 0, sim)]
    samples += [simulate_sample(m, per_sample, 0, sim) for m in DEFAULT_MASSES]
    images = np.concatenate(
        [
            build_images(
                ImageSpec(**cfg.image.model_dump()), s.n_hits, s.x, s.y, s.z, s.energy,
                threads=usable_cpus(),
            )[0]
            for s in samples
        ]
    )  # fmt: skip
    shape = images.shape[1:]
    torch.manual_seed(0)
    model = ImageClassifier(shape[0], shape[1:], cfg).eval()
    path = export_onnx(model, (torch.from_numpy(images[:2]),), out / "classifier.onnx",
                       ["images"], ["logit"])  # fmt: skip
    graph = session(path)

    def onnxruntime(x: np.ndarray) -> np.ndarray:
        return graph.run(None, {"images": x})[0]

    def eager(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    check_relative_parity(
        onnxruntime(images), eager(images), "the classifier's export criterion", "classifier.onnx"
    )
    return {ORT: onnxruntime, TORCH: eager}, images, cfg


# ---- timing and report --------------------------------------------------------------------


def show(name: str, curves: dict[str, list[dict]], unit: str, out: Path, stem: str) -> None:
    """One model's table (median ns per item of each runtime, torch / onnxruntime) and plot."""
    print(f"\n{name}: {unit}")
    print(f"{'batch':>7} {'onnxruntime ns/item':>20} {'torch ns/item':>14} {'torch/ort':>10}")
    for ort_row, torch_row in zip(curves[ORT], curves[TORCH], strict=True):
        o, t = ort_row["ns_per_row"], torch_row["ns_per_row"]
        print(f"{ort_row['batch']:>7} {o:>20,.1f} {t:>14,.1f} {t / o:>10.2f}")
    steal = max(r["steal"] for rows in curves.values() for r in rows)
    print(f"largest CPU steal during a batch's trials: {100 * steal:.0f} %")
    print(f"plot: {plot_latency(curves, out / f'{stem}.png')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3, help="timed trials per batch and round")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved passes")
    parser.add_argument(
        "--cnn-max-batch", type=int, default=4096, help="the CNN's largest batch (events)"
    )
    parser.add_argument("--cnn-events", type=int, default=512, help="simulated ECal events")
    parser.add_argument("--out", type=Path, default=None, help="folder for the plots")
    _contention.add_flag(parser)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="export_latency_"))
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)

    flow, dt, context = klm_flow(rng)
    noise = rng.standard_normal(dt.shape).astype(np.float32)
    models = {
        "KLM sampler (sample.onnx)": (*sampler_runtimes(flow, noise, context, out), BATCHES),
        "KLM flow density (log_prob.onnx)": (
            *density_runtimes(flow, dt, context, out),
            BATCHES,
        ),
    }
    fns, x = hcal_regressor(rng)
    models["HCAL regressor (Model4Exp, regressor.onnx)"] = (fns, x, None, BATCHES)
    fns, images, cfg = ecal_cnn(out, args.cnn_events)
    cnn_batches = [b for b in BATCHES if b <= args.cnn_max_batch]
    name = f"ECal CNN ({cfg.image.channels}x{cfg.image.shape[0]}x{cfg.image.shape[1]} images)"
    models[name] = (fns, images, None, cnn_batches)
    print(
        f"onnxruntime and torch eager on threads fitted to the free CPUs (up to {usable_cpus()});"
        f" median of {args.trials * args.rounds} trials in {args.rounds} interleaved "
        f"rounds; inputs: {ROWS:,} simulated rows per model ({len(images):,} ECal events, "
        f"repeated); CNN batches up to {cnn_batches[-1]:,} events (--cnn-max-batch)",
        flush=True,
    )

    def timed(title: str) -> dict[str, list[dict]]:
        fns, inputs, split, batches = models[title]
        curves = latency_curves(fns, inputs, batches, trials=args.trials, rounds=args.rounds,
                                warmup=WARMUP, min_trial_s=MIN_TRIAL_S, settle_s=SETTLE_S)  # fmt: skip
        if split is not None:
            split.clear()  # the split copies of this call's batches
        return curves

    units = ["ns per photon sampled", "ns per photon density", "ns per channel", "ns per event"]
    stems = ["klm_sample", "klm_log_prob", "hcal_regressor", "ecal_cnn"]
    first = next(iter(models))
    results = {}
    results[first] = _contention.measure(
        lambda: timed(first),
        figure=f"KLM sampler, onnxruntime at batch {MAIN_BATCH}",
        unit="ns/photon",
        value=lambda curves: next(r["ns_per_row"] for r in curves[ORT] if r["batch"] == MAIN_BATCH),
        lower_is_better=True,
        contended=args.contended,
        show=lambda curves: show(first, curves, units[0], out, stems[0]),
    )
    for title, unit, stem in zip(list(models)[1:], units[1:], stems[1:], strict=True):
        results[title] = timed(title)
        show(title, results[title], unit, out, stem)
    summary(results)


def summary(results: dict[str, dict[str, list[dict]]]) -> None:
    """The claim's verdict (onnxruntime faster than torch eager at every batch <= CLAIM_BATCH)
    and, beyond it, the range of torch / onnxruntime per model."""
    ratios = {
        title.split(" (")[0]: [
            (o["batch"], t["ns_per_row"] / o["ns_per_row"])
            for o, t in zip(curves[ORT], curves[TORCH], strict=True)
        ]
        for title, curves in results.items()
    }
    small = [(m, b, r) for m, rows in ratios.items() for b, r in rows if b <= CLAIM_BATCH]
    slower = [f"{m} at {b:,} ({r:.2f}x)" for m, b, r in small if r < 1]
    print(
        f"\nonnxruntime faster than torch eager at {len(small) - len(slower)} of {len(small)} "
        f"(model, batch <= {CLAIM_BATCH:,}) points: claim {'met' if not slower else 'NOT met'}"
        + (f"; slower (torch/ort) at {', '.join(slower)}" if slower else "")
    )
    large = [
        f"{m} {min(r for b, r in rows if b > CLAIM_BATCH):.2f}-"
        f"{max(r for b, r in rows if b > CLAIM_BATCH):.2f}x"
        for m, rows in ratios.items()
        if any(b > CLAIM_BATCH for b, _ in rows)
    ]
    print(f"torch/ort at batches > {CLAIM_BATCH:,}: {', '.join(large)}")


if __name__ == "__main__":
    main()
