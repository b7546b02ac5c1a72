"""Leave detlearn: a process with only numpy and onnxruntime (its own venv, no torch, no
detlearn) reads the exported files and sidecars, samples photon counts and times for given
contexts, regresses given inputs and classifies held-out events, reproducing the run's own
numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from importlib.metadata import version

import awkward as ak
import numpy as np
import pytest
import torch
import uproot
from conftest import write_tree

from detlearn.config import deep_merge, validate_config
from detlearn.families import export_run, train
from detlearn.prepare import prepare
from detlearn.recipes import get_recipe
from detlearn.runs import Regression, Surrogate
from detlearn.runs.classification import Classifier, network_inputs

CONSUMER = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import onnxruntime as ort

    for forbidden in ("torch", "detlearn"):
        try:
            __import__(forbidden)
        except ImportError:
            pass
        else:
            raise SystemExit(f"{forbidden} is importable in the consumer's environment")

    flow_dir, reg_dir, clf_dir, inputs, out = sys.argv[1:6]
    given = np.load(inputs)

    def graph(directory, name):
        sidecar = json.load(open(f"{directory}/{name}.json"))
        return ort.InferenceSession(f"{directory}/{sidecar['model']}"), sidecar

    count, count_side = graph(flow_dir, "count")
    sample, sample_side = graph(flow_dir, "sample")
    assert list(count_side["inputs"]) == ["context"], count_side["inputs"]
    assert list(sample_side["inputs"]) == ["noise", "context"], sample_side["inputs"]
    context = given["context"].astype(np.float32)
    mean, dispersion = count.run(["mean", "dispersion"], {"context": context})
    # The sidecar's recipe for N: lambda ~ Gamma(r, mu / r), N ~ Poisson(lambda).
    rng = np.random.default_rng(int(given["seed"]))
    n = rng.poisson(rng.gamma(dispersion, mean / dispersion))
    rows = np.repeat(context, n, axis=0)
    noise = given["noise"][: len(rows)].astype(np.float32)
    times = sample.run(["sample"], {"noise": noise, "context": rows})[0]
    regressor, reg_side = graph(reg_dir, "regressor")
    predicted = regressor.run(None, {"inputs": given["features"].astype(np.float32)})[0]
    classifier, clf_side = graph(clf_dir, "classifier")
    assert list(clf_side["inputs"]) == ["images", "mass"], clf_side["inputs"]
    assert clf_side["preprocessing"]["arch"] == "cnn"
    feed = {"images": given["images"], "mass": given["mass"]}
    logit = classifier.run(["logit"], feed)[0]
    p_signal = 1 / (1 + np.exp(-logit.astype(np.float64)))
    np.savez(out, mean=mean, dispersion=dispersion, n=n, times=times, predicted=predicted,
             p_signal=p_signal)
    """
)


def _consumer_env(root):
    """A venv with numpy and onnxruntime only (the project's versions: pip's cache serves
    them)."""
    env = root / "consumer-venv"
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True, timeout=120)
    pins = [f"numpy=={version('numpy')}", f"onnxruntime=={version('onnxruntime')}"]
    subprocess.run(
        [str(env / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", *pins],
        check=True,
        timeout=600,
    )
    return env / "bin" / "python"


def _ecal_file(path, n, spread, rng):
    """``n`` events in the ecal-veto reader's layout: hits around the axis, ``spread`` [mm]."""
    counts = rng.integers(3, 30, n)
    hits = {
        "x": rng.normal(0, spread, counts.sum()),
        "y": rng.normal(0, spread, counts.sum()),
        "z": rng.uniform(240, 560, counts.sum()),
        "E": rng.exponential(5, counts.sum()),
    }
    columns = {
        "eventNumber": np.arange(n, dtype=np.int32),
        "nHits": counts.astype(np.int32),
        **{k: ak.unflatten(v.astype(np.float32), counts) for k, v in hits.items()},
    }
    with uproot.recreate(path) as f:
        f.mktree("ecalHits", {k: ak.type(ak.Array(v)).content for k, v in columns.items()})
        f["ecalHits"].extend(columns)
    return str(path)


def _classifier_run(tmp, rng):
    """A mass-parameterized CNN on toy signal (narrow showers, two masses) and background."""
    inputs = [
        {"path": _ecal_file(tmp / f"sig{m}.root", 300, 10, rng), "columns": {"label": 1, "mass": m}}
        for m in (10.0, 100.0)
    ]
    inputs.append(
        {"path": _ecal_file(tmp / "bkg.root", 600, 60, rng), "columns": {"label": 0, "mass": 0.0}}
    )
    overrides = {
        "data": {"inputs": inputs},
        "split": {"holdout": None},
        "executor": {"workers": 1},
        "model": {"classifier": {"arch": "cnn", "mass_parameterized": True,
                                 "conv_channels": [4, 4], "dense": [8]}},
        "training": {"max_epochs": 1, "batch_size": 128},
    }  # fmt: skip
    cfg = validate_config(deep_merge(get_recipe("ecal-veto").default_config(), overrides))
    prepare(cfg, tmp / "ds", progress=False)
    return train(cfg, tmp / "ds", tmp / "run", progress=False)


def _run(tmp, columns, model, training):
    cfg = validate_config(
        {
            "data": {"inputs": [str(tmp / "toy.root")], "columns": columns},
            "executor": {"workers": 1},
            "model": model,
            "training": training,
        }
    )
    prepare(cfg, tmp / "ds", progress=False)
    return train(cfg, tmp / "ds", tmp / "run", progress=False)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    rng = np.random.default_rng(4)
    flow_tmp, reg_tmp = tmp_path_factory.mktemp("flow"), tmp_path_factory.mktemp("reg")
    c = rng.uniform(0.5, 2, 3000)
    write_tree(
        flow_tmp / "toy.root",
        "Events",
        {"c": c, "t": c * rng.lognormal(0, 0.3, 3000), "n": rng.poisson(5 + 5 * c)},
    )
    flow_run = _run(
        flow_tmp,
        {
            "c": {"role": "context", "unit": "GeV"},
            "t": {"role": "target", "unit": "ns", "lower": 0.0},
            "n": {"role": "observer"},
        },
        {
            "count": "negbinom",
            "count_column": "n",
            "count_hidden": [8],
            "count_max_epochs": 2,
            "flow": {"transforms": 1, "hidden": [16], "bins": 6},
        },
        {"batch_size": 512, "max_epochs": 2},
    )
    x = rng.normal(size=(3000, 3))
    write_tree(
        reg_tmp / "toy.root",
        "Events",
        {"a": x[:, 0], "b": x[:, 1], "d": x[:, 2], "y": x @ [1.0, -2.0, 0.5] + 3.0},
    )
    reg_run = _run(
        reg_tmp,
        {
            "a": {"role": "context"},
            "b": {"role": "context"},
            "d": {"role": "context"},
            "y": {"role": "target", "unit": "GeV"},
        },
        {"family": "regressor", "regressor": {"arch": "mlp", "hidden": [8]}},
        {"batch_size": 256, "max_epochs": 2},
    )
    clf_run = _classifier_run(tmp_path_factory.mktemp("clf"), rng)
    for run in (flow_run, reg_run, clf_run):
        export_run(run)
    return flow_run, reg_run, clf_run


def test_a_numpy_and_onnxruntime_process_reproduces_the_run(exported, tmp_path):
    flow_run, reg_run, clf_run = exported
    python = _consumer_env(tmp_path)
    rng = np.random.default_rng(9)
    context = rng.uniform(0.6, 1.9, (50, 1))
    noise = rng.standard_normal((5000, 1))
    features = rng.normal(size=(64, 3))
    # The classifier's held-out events, as its pre-step turns them into network inputs.
    clf = Classifier.load(clf_run)
    events = clf.info.load_split([*clf.config.hits, "label", "mass"], "test")
    mass = np.where(events["label"] > 0.5, events["mass"], 100.0).astype(np.float32)
    images = network_inputs(clf.config, events)["images"]
    given = tmp_path / "given.npz"
    np.savez(given, context=context, noise=noise, features=features, seed=7, images=images,
             mass=mass)  # fmt: skip
    (tmp_path / "consumer.py").write_text(CONSUMER)
    out = tmp_path / "out.npz"
    done = subprocess.run(
        [str(python), str(tmp_path / "consumer.py"), str(flow_run / "export"),
         str(reg_run / "export"), str(clf_run / "export"), str(given), str(out)],
        capture_output=True, text=True, timeout=300, env={"PATH": os.environ["PATH"]},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    got = np.load(out)

    surrogate = Surrogate.load(flow_run)
    c = torch.as_tensor(context, dtype=torch.float32)
    with torch.no_grad():
        mean = surrogate.count.mean(c).numpy()
        rows = torch.as_tensor(np.repeat(context, got["n"], axis=0), dtype=torch.float32)
        noise_rows = torch.as_tensor(noise[: len(rows)], dtype=torch.float32)
        times = surrogate.flow.sample_from_noise(noise_rows, rows).numpy()
    np.testing.assert_allclose(got["mean"], mean, rtol=1e-5)
    assert got["n"].sum() > 0 and np.all(got["dispersion"] > 0)
    np.testing.assert_allclose(got["times"], times, rtol=5e-5, atol=1e-5)
    assert np.all(got["times"] > 0)  # the support travels inside the graph

    reg = Regression.load(reg_run)
    expected = reg.predict(features.astype(np.float32))
    scale = json.loads((reg_run / "export" / "regressor.json").read_text())
    assert scale["parity"]["max_scaled"] <= 1
    np.testing.assert_allclose(got["predicted"], expected, rtol=1e-4, atol=1e-4)

    p_signal = clf.predict(events, mass)
    assert len(p_signal) == len(images) > 100
    np.testing.assert_allclose(got["p_signal"], p_signal, atol=1e-5)
