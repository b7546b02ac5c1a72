"""The classifier family's trained run: :func:`train_classifier` writes it, :class:`Classifier`
uses it.

A classifier reads each event's hits (the dataset's list columns ``model.classifier.hits``: x,
y, z [mm], energy [MeV], layer) through a pre-step that gives the network its inputs
(:func:`network_inputs`): hit images for ``cnn``, the hardest hits as a padded point cloud for
``point_cloud``, LDMX-BDT-style features for ``bdt``. A mass-parameterized model also reads the
signal mass [MeV]; each background event is given a random mass from the training signal's
masses, so that the mass is no shortcut to the label.

Layout of a classifier run directory::

    run.json       the RunInfo; ``details``: arch, inputs, signal masses, hits outside images
    classifier/    cnn, point_cloud: model.safetensors + model.json, history.csv, loss.png
                   bdt: model.txt (LightGBM's text format) + model.json, history.csv

Example:
    >>> clf = Classifier.load("runs/ecal-cnn")                              # doctest: +SKIP
    >>> p_signal = clf.predict({"x": x, "y": y, "z": z, "E": e, "layer": layer})  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import torch

from detlearn._threads import adapt, usable_cpus
from detlearn.config import ClassifierConfig, RunConfig
from detlearn.data.hit_features import FEATURE_NAMES, feature_matrix, hit_features
from detlearn.data.images import ImageSpec, build_images
from detlearn.data.selection import training_splits
from detlearn.errors import DetlearnError
from detlearn.io.dataset import GROUP_COLUMN
from detlearn.models import BoostedTrees, ImageClassifier, PointCloudClassifier, load_model
from detlearn.models.classifiers import top_hits
from detlearn.runs.artifact import RunInfo, TargetColumn, read_run_info
from detlearn.runs.training_data import TrainingData, seeded
from detlearn.training import ModelSize, fit, meta_parameters, unit_mean_weights

__all__ = [
    "MODEL_DIR",
    "Classifier",
    "background_masses",
    "classifier_sizes",
    "network_inputs",
    "train_classifier",
]

MODEL_DIR = "classifier"


def network_inputs(cfg: ClassifierConfig, events: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The pre-step: the network's inputs from a batch of events' hit lists.

    Args:
        cfg: the classifier settings (which inputs, image and point-cloud sizes).
        events: the hit columns named by ``cfg.hits`` (x, y, z [mm], energy [MeV], layer), as
            awkward lists, one list per event.

    Returns:
        ``{"images": [N, C, H, W]}`` (cnn, with ``"outside"`` [N]: hits outside the image),
        ``{"hits": [N, K, F], "mask": [N, K]}`` (point_cloud) or ``{"features": [N, F]}`` (bdt),
        float32.
    """
    missing = [h for h in cfg.hits if h not in events]
    if missing:
        raise DetlearnError(f"classifier inputs: no hit column '{missing[0]}' (needs {cfg.hits})")
    counts = ak.to_numpy(ak.num(events[cfg.hits[0]])).astype(np.int64)
    flat = {h: ak.to_numpy(ak.flatten(events[h])).astype(np.float32) for h in cfg.hits}
    x, y, z, e = (flat[h] for h in cfg.hits[:4])
    if cfg.arch == "cnn":
        spec = ImageSpec(**cfg.image.model_dump())
        images, outside = build_images(spec, counts, x, y, z, e, threads=usable_cpus())
        return {"images": images, "outside": outside.astype(np.float32)}
    if cfg.arch == "point_cloud":
        hits, mask = top_hits(counts, flat, cfg.max_hits)
        return {"hits": hits, "mask": mask}
    layer = flat[cfg.hits[4]] if len(cfg.hits) > 4 else np.zeros_like(z)
    layer = np.rint(layer).astype(np.int64)
    return {"features": feature_matrix(hit_features(counts, x, y, z, e, layer))}


def background_masses(
    label: np.ndarray, mass: np.ndarray, signal_masses: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Signal events keep their mass [MeV]; background events get one drawn from
    ``signal_masses``, as a mass-parameterized model is trained and scored (float32 [N])."""
    out = np.asarray(mass, dtype=np.float32).copy()
    background = label < 0.5
    out[background] = rng.choice(signal_masses, int(background.sum())).astype(np.float32)
    return out


def _network(cfg: ClassifierConfig) -> torch.nn.Module:
    """The untrained network of arch cnn or point_cloud."""
    if cfg.arch == "cnn":
        return ImageClassifier(cfg.image.channels, cfg.image.shape, cfg)
    return PointCloudClassifier(len(cfg.hits), cfg)


def classifier_sizes(cfg: RunConfig, data: TrainingData) -> list[ModelSize]:
    """The size of the network :func:`train_classifier` trains (built on the meta device; none
    for the bdt). Per event: a cnn's image and, per block, the convolution's, its ReLU's and
    the max-pool's outputs; a point cloud's pairwise hit distances and, per EdgeConv block,
    its edge features (hits × neighbours × width, two of them) and per-hit outputs; then the
    dense head's layers and activations."""
    ccfg = cfg.model.classifier
    if ccfg.arch == "bdt":
        return []
    parameters = meta_parameters(lambda: _network(ccfg))
    if ccfg.arch == "cnn":
        height, width = ccfg.image.shape
        activations = ccfg.image.channels * height * width
        for channels in ccfg.conv_channels:
            activations += 2 * channels * height * width
            height, width = math.ceil(height / 2), math.ceil(width / 2)
            activations += channels * height * width
        keys = ("model.classifier.conv_channels", "model.classifier.image.shape")
    else:
        hits, k = ccfg.max_hits, min(ccfg.neighbours, ccfg.max_hits)
        activations = 4 * hits * hits
        for channels in ccfg.edge_channels:
            activations += 2 * hits * k * channels + 3 * hits * channels
        keys = ("model.classifier.edge_channels", "model.classifier.max_hits")
    activations += 2 * sum(ccfg.dense) + 1
    return [ModelSize(parameters, activations, (*keys, "model.classifier.dense"))]


def train_classifier(
    cfg: RunConfig, data: TrainingData, out: Path, resume: bool = False, progress: bool = True
) -> Path:
    """Train the classifier ``model.classifier`` describes; returns the run directory.

    The dataset's ``label`` column (role ``label``, 1 = signal) is the truth; rows with weight
    (role ``weight``) weigh the loss with their sign (the bdt refuses negative weights). Both
    classes must be present in every split; a mass-parameterized model needs the mass column
    (role ``context``).
    """
    ccfg, ds = cfg.model.classifier, data.ds
    if len(data.label) != 1:
        raise DetlearnError(f"{ds.root}: a classifier needs one 'label' column, found {data.label}")
    label = data.label[0]
    if ccfg.arch == "bdt" and ccfg.mass_parameterized:
        raise DetlearnError("model.classifier: the bdt baseline is not mass-parameterized")
    has_mass = ccfg.mass_column in ds.columns
    if ccfg.mass_parameterized and not has_mass:
        raise DetlearnError(
            f"{ds.root}: model.classifier.mass_parameterized needs the column "
            f"'{ccfg.mass_column}' (columns: {', '.join(ds.columns)})"
        )
    context = [ccfg.mass_column] if ccfg.mass_column in data.context else []
    columns = [*ccfg.hits, label, *([ccfg.mass_column] if has_mass else []), *data.weight]
    splits, records = training_splits(cfg, ds, [*dict.fromkeys(columns), GROUP_COLUMN], context)
    for name, part in splits.items():
        for value, sample in ((1, "signal"), (0, "background")):
            if not np.any(part[label] == value):
                raise DetlearnError(f"{ds.root}: the {sample} sample has no events in '{name}'")
    signal_masses = (
        np.unique(splits["train"][ccfg.mass_column][splits["train"][label] > 0.5])
        if has_mass
        else np.zeros(0)
    )
    rng = np.random.default_rng(cfg.training.seed)
    batches, outside = {}, {}
    for name, part in splits.items():
        inputs = network_inputs(ccfg, part)
        outside[name] = int(inputs.pop("outside").sum()) if "outside" in inputs else 0
        batch = {**inputs, "label": part[label].astype(np.float32)}
        if ccfg.mass_parameterized:
            batch["mass"] = background_masses(
                batch["label"], part[ccfg.mass_column], signal_masses, rng
            )
        if data.weight:
            batch["weight"] = part[data.weight[0]].astype(np.float32)
        batches[name] = batch
    out.mkdir(parents=True, exist_ok=True)
    if ccfg.arch == "bdt":
        train, val = _bdt_rows(batches["train"]), batches["val"]
        trees = BoostedTrees.train(
            train["features"],
            train["label"],
            train.get("weight"),
            val["features"],
            val["label"],
            FEATURE_NAMES,
            val_weight=val.get("weight"),
            iterations=ccfg.bdt_max_iter,
            learning_rate=ccfg.bdt_learning_rate,
            leaves=ccfg.bdt_max_leaf_nodes,
            patience=cfg.training.patience * 4,
            seed=cfg.training.seed,
            threads=adapt(),
        )
        trees.save(out / MODEL_DIR)
    else:
        with seeded(cfg.training.seed):
            model = _network(ccfg)
        fit(
            model, batches["train"], batches["val"], cfg.training, out / MODEL_DIR, resume, progress
        )
    details = {
        "arch": ccfg.arch,
        "hits": ccfg.hits,
        "signal_masses": signal_masses.tolist(),
        "hits_outside_images": outside,
    }
    target = [TargetColumn(name=label, lower=0.0, upper=1.0)]
    RunInfo.describe(cfg, ds, splits["train"], context, target, details=details, **records).write(
        out
    )
    return out


def _bdt_rows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The BDT's training rows: weights checked and scaled as for the networks (rows of weight
    0 left out); negative weights refused, since a tree's leaf divides by its summed hessian,
    which they can turn ≤ 0."""
    if "weight" not in batch:
        return batch
    keep, weight = unit_mean_weights(batch["weight"], "train")
    if (weight < 0).any():
        raise DetlearnError(
            f"model.classifier.arch bdt: {int((weight < 0).sum()):,} training events have "
            "negative weights, which gradient-boosted trees cannot fit; train arch cnn or "
            "point_cloud (their loss takes signed weights)"
        )
    return {**{k: v[keep] for k, v in batch.items()}, "weight": weight}


class Classifier:
    """A trained classifier loaded from a run directory: P(signal) from hit lists.

    Example:
        >>> clf = Classifier.load("runs/ecal-cnn", recipe="ecal-veto")      # doctest: +SKIP
    """

    def __init__(self, run_dir: Path, info: RunInfo, model: Any) -> None:
        self.run_dir, self.info, self.model = run_dir, info, model

    @classmethod
    def load(cls, run_dir: str | Path, recipe: str | None = None) -> Classifier:
        """Load a classifier run directory written by :func:`train_classifier`."""
        run_dir = Path(run_dir)
        info = read_run_info(run_dir, recipe, family="classifier")
        directory = run_dir / MODEL_DIR
        arch = info.config.model.classifier.arch
        model = BoostedTrees.load(directory) if arch == "bdt" else load_model(directory)
        return cls(run_dir, info, model)

    @property
    def config(self) -> ClassifierConfig:
        """The classifier settings it was trained with."""
        return self.info.config.model.classifier

    @property
    def signal_masses(self) -> list[float]:
        """The signal masses [MeV] seen in training."""
        return list((self.info.details or {}).get("signal_masses", []))

    def predict(
        self,
        events: Mapping[str, Any],
        mass: float | np.ndarray | None = None,
        batch_size: int = 4096,
    ) -> np.ndarray:
        """P(signal) [N] for a batch of events (their hit lists, ``config.hits``).

        A mass-parameterized model needs the mass hypothesis [MeV], one per event or one for
        all; others take none. Events run through the network in batches of ``batch_size``.
        """
        n = len(events[self.config.hits[0]])
        if self.config.mass_parameterized:
            if mass is None:
                raise DetlearnError(f"{self.run_dir}: a mass-parameterized model needs a mass")
            masses = np.broadcast_to(np.asarray(mass, dtype=np.float32), (n,)).copy()
        elif mass is not None:
            raise DetlearnError(f"{self.run_dir}: this model takes no mass")
        parts = []
        for start in range(0, n, batch_size):
            adapt()
            chunk = {h: events[h][start : start + batch_size] for h in self.config.hits}
            inputs = network_inputs(self.config, chunk)
            if isinstance(self.model, BoostedTrees):
                parts.append(self.model.predict_proba(inputs["features"]))
                continue
            tensors = [
                torch.from_numpy(inputs[k]) for k in self.model.batch_keys[:-1] if k != "mass"
            ]
            if self.config.mass_parameterized:
                tensors.append(torch.from_numpy(masses[start : start + batch_size]))
            with torch.inference_mode():
                # The sigmoid in float64: in float32 it reaches 1.0 at a logit of 17, and the
                # hardest events would tie at the top of the ranking.
                parts.append(torch.sigmoid(self.model.eval()(*tensors).double()).numpy())
        return np.concatenate(parts) if parts else np.zeros(0)
