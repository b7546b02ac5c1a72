"""The classifier family: P(signal) of an event from its calorimeter hits (the ECal veto).

Its generic evaluation scores the classifier on the held-out test split of the run's own data:
ROC with log background efficiency, AUC with a bootstrap interval, working points at the
minimum misclassification and at fixed background efficiencies (where the test set can resolve
them), and the score distributions. A mass-parameterized model is scored with every background
event at a mass drawn from the training signal masses, as it was trained.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from detlearn._files import atomic_write_json
from detlearn.errors import DetlearnError
from detlearn.evaluation.classification import roc_curve, summarize
from detlearn.export.onnx import OPSET, PARITY_ATOL, PARITY_RTOL, export_onnx, parity
from detlearn.families.base import Family
from detlearn.io.dataset import Dataset
from detlearn.plots.classification import plot_roc, plot_scores
from detlearn.report import Section
from detlearn.runs.classification import Classifier, network_inputs, train_classifier

__all__ = ["CLASSIFIER", "evaluate_classifier", "export_classifier", "test_scores"]


def test_scores(
    clf: Classifier, seed: int = 0, max_rows: int | None = None
) -> dict[str, np.ndarray]:
    """P(signal), label, weight (ones without a weight column) and mass (when the dataset has
    one) of the run's test split; background events of a mass-parameterized model are scored
    at a mass drawn from the training signal masses."""
    info, cfg = clf.info, clf.config
    label = info.target_names[0]
    ds = Dataset.open(info.dataset)
    extra = [c for c in (cfg.mass_column, *ds.names("weight")[:1]) if c in ds.columns]
    test = info.load_split([*cfg.hits, label, *extra], "test", max_rows=max_rows)
    y = test[label].astype(np.float64)
    if not ((y == 1).any() and (y == 0).any()):
        raise DetlearnError(f"{info.dataset}: the test split needs signal and background events")
    mass = None
    if cfg.mass_parameterized:
        mass = test[cfg.mass_column].astype(np.float32).copy()
        background = y < 0.5
        rng = np.random.default_rng(seed)
        mass[background] = rng.choice(clf.signal_masses, int(background.sum()))
    weights = ds.names("weight")
    out = {
        "score": clf.predict(test, mass),
        "label": y,
        "weight": test[weights[0]].astype(np.float64) if weights else np.ones_like(y),
    }
    if cfg.mass_column in test:
        out["mass"] = test[cfg.mass_column].astype(np.float64)
    return out


def evaluate_classifier(run_dir: Path, out_dir: Path, seed: int = 0) -> Section:
    """The classifier's generic metrics on the test split of its own data (module docstring)."""
    clf = Classifier.load(run_dir)
    scored = test_scores(clf, seed, clf.info.config.evaluation.max_rows)
    score, label, weight = scored["score"], scored["label"], scored["weight"]
    summary = summarize(score, label, weight, seed=seed)
    roc = roc_curve(score, label, weight)
    figures = out_dir / "figures"
    rows = [
        {
            "ε_B target": wp["eff_b_target"],
            "ε_S": wp["eff_s"],
            "ε_S interval": (
                f"[{wp['eff_s_lo']:.4g}, {wp['eff_s_hi']:.4g}]"
                if wp.get("eff_s_lo") is not None
                else "—"
            ),
            "rejection 1/ε_B": wp["rejection"],
            "purity": wp["purity"],
            "note": wp["note"],
        }
        for wp in [summary["min_misclassification"], *summary["working_points"]]
    ]
    metrics: dict[str, Any] = {
        "auc": {"value": summary["auc"], "error": (summary["auc_hi"] - summary["auc_lo"]) / 2},
        "test_signal_events": summary["n_signal"],
        "test_background_events": summary["n_background"],
    }
    for wp in summary["working_points"]:
        metrics[f"eff_s_at_eff_b_{wp['eff_b_target']:g}"] = {
            "value": wp["eff_s"],
            "error": (wp["eff_s_hi"] - wp["eff_s_lo"]) / 2 if wp["resolved"] else None,
        }
    return Section(
        f"Generic classifier metrics on the run's own test split ({clf.config.arch})",
        metrics,
        tables=[("working points (min. misclassification, then fixed ε_B)", rows)],
        figures=[
            ("ROC", plot_roc({clf.config.arch: (roc.eff_s, roc.eff_b)}, figures / "roc.png")),
            (
                "P(signal) of signal and background",
                plot_scores(score, label, figures / "scores.png"),
            ),
        ],
    )


def export_classifier(run_dir: Path, out: Path, rows: int = 4096, seed: int = 0) -> dict[str, Any]:
    """The network as ONNX, its inputs as the network sees them (``images`` [N, C, H, W]; or
    ``hits`` [N, K, F] and ``mask`` [N, K]; plus ``mass`` [N] MeV when mass-parameterized),
    output ``logit`` [N] (P(signal) = sigmoid(logit)); the sidecar documents the pre-step
    (the image or point-cloud settings). Parity against PyTorch on ``rows`` test events.

    The bdt baseline is not exported: onnxmltools' LightGBM converter differed from LightGBM
    by up to 0.14 in P(signal) on 20 000 test rows (measured), and skl2onnx cannot convert
    scikit-learn's HistGradientBoosting with the onnx release in use; its model travels as
    LightGBM's own text file, which C++ LightGBM reads.
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
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["logit"], dict(zip(names, arrays, strict=True)))[0]
    with torch.inference_mode():
        want = model(*(torch.from_numpy(a) for a in arrays)).numpy()
    checked = parity(got, want, PARITY_ATOL + PARITY_RTOL * np.abs(want))
    if not checked["parity_max_scaled"] <= 1:
        raise DetlearnError(
            f"{path}: onnxruntime differs from PyTorch by {checked['parity_max_abs']:.2e}"
        )
    sidecar = {
        "model": path.name,
        "opset": OPSET,
        "recipe": clf.info.recipe,
        "detlearn_version": clf.info.detlearn_version,
        "inputs": {
            name: {"shape": ["batch", *a.shape[1:]], "dtype": "float32"}
            for name, a in zip(names, arrays, strict=True)
        },
        "outputs": {
            "logit": {"shape": ["batch"], "dtype": "float32", "note": "P = sigmoid(logit)"}
        },
        "preprocessing": {
            "arch": cfg.arch,
            "hits": cfg.hits,
            "image": cfg.image.model_dump(mode="json") if cfg.arch == "cnn" else None,
            "max_hits": cfg.max_hits if cfg.arch == "point_cloud" else None,
            "signal_masses": clf.signal_masses,
        },
        **checked,
    }
    atomic_write_json(out / "classifier.json", sidecar)
    return sidecar


CLASSIFIER = Family(
    name="classifier",
    summary="signal/background classifier of calorimeter hits: CNN, point cloud, or BDT",
    train=train_classifier,
    load=Classifier.load,
    export=export_classifier,
    evaluate=evaluate_classifier,
    roles=("label",),
)
