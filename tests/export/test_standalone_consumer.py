"""Leave detlearn: a process with only numpy and onnxruntime (its own venv, no torch, no
detlearn) reads the exported files and sidecars, samples photon counts and times for given
contexts and regresses given inputs, reproducing the run's own numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from importlib.metadata import version

import numpy as np
import pytest
import torch
from conftest import write_tree

from detlearn.config import validate_config
from detlearn.families import export_run, train
from detlearn.prepare import prepare
from detlearn.runs import Regression, Surrogate

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

    flow_dir, reg_dir, inputs, out = sys.argv[1:5]
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
    np.savez(out, mean=mean, dispersion=dispersion, n=n, times=times, predicted=predicted)
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
    export_run(flow_run)
    export_run(reg_run)
    return flow_run, reg_run


def test_a_numpy_and_onnxruntime_process_reproduces_the_run(exported, tmp_path):
    flow_run, reg_run = exported
    python = _consumer_env(tmp_path)
    rng = np.random.default_rng(9)
    context = rng.uniform(0.6, 1.9, (50, 1))
    noise = rng.standard_normal((5000, 1))
    features = rng.normal(size=(64, 3))
    given = tmp_path / "given.npz"
    np.savez(given, context=context, noise=noise, features=features, seed=7)
    (tmp_path / "consumer.py").write_text(CONSUMER)
    out = tmp_path / "out.npz"
    done = subprocess.run(
        [str(python), str(tmp_path / "consumer.py"), str(flow_run / "export"),
         str(reg_run / "export"), str(given), str(out)],
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
