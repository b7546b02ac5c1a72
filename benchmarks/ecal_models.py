"""Claim (a figure the issue asks for, without a target): training and inference events/s of each
ecal-veto classifier from hit lists on 2 CPU cores, data pipeline included, beside the BDT's.

Simulates a small ecal-veto sample (``--events`` per signal mass and background, the recipe's
masses), prepares it once, then for each model of the demo (``cnn``, ``cnn_mass``,
``point_cloud``, ``bdt``; the recipe's own settings) times, back to back in this process:

  1. training: ``detlearn.families.train`` for ``--epochs`` epochs on the training split (images
     or point clouds or features built from the hit lists as the data loader does, forward,
     backward, the validation pass); events/s = training events x epochs / wall time;
  2. inference: ``Classifier.predict`` on the test split's hit lists (the pre-step and the
     network, in batches of 4096; best of ``--repeat``); events/s.

The BDT baseline is timed first; each network's figures are printed with their ratio to its.

``--contended``: the main figure (the cnn's inference events/s) is measured again beside one busy
process, and both are printed with their ratio (``_contention``).

Run: .venv/bin/python benchmarks/ecal_models.py [--events 2000] [--epochs 1] [--contended]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import _contention
import _timing
import numpy as np

from detlearn.config import deep_merge, validate_config
from detlearn.families import train
from detlearn.prepare import prepare
from detlearn.recipes import get_recipe
from detlearn.runs.classification import Classifier, background_masses

#: The demo's models, the baseline first (cnn_mass_all is cnn_mass trained on every mass: the
#: same network).
MODELS = ("bdt", "cnn", "cnn_mass", "point_cloud")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000, help="events per sample")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=2)
    _contention.add_flag(parser)
    args = parser.parse_args()
    recipe = get_recipe("ecal-veto")
    work = Path(tempfile.mkdtemp(prefix="ecal_models_"))
    try:
        base = recipe.default_config()
        recipe.simulate(work / "sim", args.events, 1, base.get("simulate"))
        raw = deep_merge(
            base,
            {
                "data": {"inputs": [str(work / "sim")]},
                "training": {"max_epochs": args.epochs, "patience": args.epochs},
            },
        )
        prepare(validate_config(raw), work / "dataset", progress=False)
        print(f"ecal-veto sample: {args.events} events per sample, load {_timing.load_average()}")
        print(f"{'model':<12} {'train ev/s':>11} {'infer ev/s':>11}")
        bdt: dict[str, float] = {}
        for name in MODELS:
            cfg = validate_config(deep_merge(raw, dict(recipe.variants[name])))
            t0 = time.perf_counter()
            run = train(cfg, work / "dataset", work / f"run_{name}", progress=False)
            seconds = time.perf_counter() - t0
            clf = Classifier.load(run)
            training = clf.info.load_split([*clf.config.hits], "train")
            rate_train = len(training[clf.config.hits[0]]) * args.epochs / seconds
            test = clf.info.load_split([*clf.config.hits, "label", "mass"], "test")
            mass = None
            if clf.config.mass_parameterized:
                rng = np.random.default_rng(0)
                masses = np.asarray(clf.signal_masses, dtype=np.float32)
                mass = background_masses(test["label"], test["mass"], masses, rng)
            n_test = len(test["label"])

            def infer(clf=clf, test=test, mass=mass):
                return _timing.best_of(lambda: clf.predict(test, mass), args.repeat)

            def show(result, name=name, rate_train=rate_train, n_test=n_test):
                rate = n_test / result[0]
                bdt.setdefault("train", rate_train)
                bdt.setdefault("infer", rate)
                print(
                    f"{name:<12} {rate_train:>11,.0f} {rate:>11,.0f}   "
                    f"(the BDT's x {rate_train / bdt['train']:.3f} / x {rate / bdt['infer']:.3f}; "
                    f"{n_test:,} test events)"
                )

            _contention.measure(
                infer,
                figure=f"{name} inference from hit lists",
                unit="events/s",
                value=lambda result, n_test=n_test: n_test / result[0],
                contended=args.contended and name == "cnn",
                show=show,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
