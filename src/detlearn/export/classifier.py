"""The classifier's exporter: the network as ONNX, its pre-step documented in the sidecar.

A classifier exports as its network on the inputs it sees: ``images [N, C, H, W]`` (cnn) or
``hits [N, K, F]`` and ``mask [N, K]`` (point cloud), plus ``mass [N]`` [MeV] when it is
mass-parameterized, giving ``logit [N]`` (P(signal) = sigmoid(logit)). The host builds those
inputs from an event's hits as :func:`~detlearn.runs.classification.network_inputs` does, with
the settings in the sidecar's ``preprocessing``. Parity with PyTorch is checked on the run's
test events: |Δlogit| <= 1e-5 + 5e-5 |logit|.

The bdt baseline is not exported: onnxmltools' LightGBM converter differed from LightGBM by up
to 0.14 in P(signal) on 20 000 test rows (measured), and skl2onnx cannot convert
scikit-learn's HistGradientBoosting with the onnx release in use; its model travels as
LightGBM's own text file, which C++ LightGBM reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from detlearn.errors import DetlearnError
from detlearn.export.onnx import OPSET, check_relative_parity, export_onnx, session
from detlearn.export.sidecar import (
    Preprocessing,
    Sidecar,
    TensorSpec,
    export_summary,
    run_fields,
    write_sidecar,
)
from detlearn.runs.classification import Classifier, network_inputs

__all__ = ["export_classifier"]


def export_classifier(run_dir: Path, out: Path, rows: int = 4096, seed: int = 0) -> dict[str, Any]:
    """Export a classifier run to ``out/classifier.onnx`` + ``classifier.json`` (module
    docstring); returns the :func:`~.sidecar.export_summary`. Parity is checked on ``rows``
    test events, background events of a mass-parameterized model at masses drawn (``seed``)
    from the training signal masses.

    Raises:
        DetlearnError: the run is the bdt baseline, or the graph misses its criterion.
    """
    clf = Classifier.load(run_dir)
    cfg = clf.config
    if cfg.arch == "bdt":
        raise DetlearnError(
            f"{run_dir}: the bdt baseline is not exported to ONNX (no faithful converter: "
            "onnxmltools differs from LightGBM by up to 0.14 in P(signal)); use "
            f"{run_dir / 'classifier' / 'model.txt'} with LightGBM"
        )
    label = clf.info.target_names[0]
    test = clf.info.load_split([*cfg.hits, label], "test", max_rows=rows)
    inputs = network_inputs(cfg, test)
    names = [k for k in clf.model.batch_keys[:-1] if k != "mass"]
    arrays = [np.ascontiguousarray(inputs[k]) for k in names]
    if cfg.mass_parameterized:
        rng = np.random.default_rng(seed)
        names.append("mass")
        arrays.append(rng.choice(clf.signal_masses, len(arrays[0])).astype(np.float32))
    path = out / "classifier.onnx"
    model = clf.model.eval()
    export_onnx(model, tuple(torch.from_numpy(a[:2]) for a in arrays), path, names, ["logit"])
    got = session(path).run(["logit"], dict(zip(names, arrays, strict=True)))[0]
    with torch.inference_mode():
        want = model(*(torch.from_numpy(a) for a in arrays)).numpy()
    checked = check_relative_parity(got, want, "(logit), on the run's test events", path)
    notes = {
        "images": "hit images: preprocessing.image",
        "hits": "the hardest preprocessing.max_hits hits, features preprocessing.hits",
        "mask": "1 for a hit, 0 for padding",
        "mass": "the signal mass hypothesis [MeV]; one of preprocessing.signal_masses in training",
    }
    sidecar = Sidecar(
        model=path.name,
        opset=OPSET,
        description=(
            "the classifier's network: logit of P(signal) from the inputs its pre-step builds "
            "from an event's hits (preprocessing)"
        ),
        inputs={
            name: TensorSpec(
                shape=["batch", *a.shape[1:]],
                dtype="float32",
                unit="MeV" if name == "mass" else None,
                note=notes.get(name),
            )
            for name, a in zip(names, arrays, strict=True)
        },
        outputs={"logit": TensorSpec(shape=["batch"], dtype="float32", note="P = sigmoid(logit)")},
        preprocessing=Preprocessing(
            arch=cfg.arch,
            hits=cfg.hits,
            image=cfg.image if cfg.arch == "cnn" else None,
            max_hits=cfg.max_hits if cfg.arch == "point_cloud" else None,
            signal_masses=clf.signal_masses,
        ),
        parity=checked,
        **run_fields(clf.info, support=False),
    )
    write_sidecar(out, sidecar)
    return export_summary([sidecar])
