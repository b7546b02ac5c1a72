"""Models: torch modules in physical units, and their safe on-disk form.

- :mod:`.flows`: conditional normalizing flows (support bijections, fast per-context sampling);
- :mod:`.counts`: a negative-binomial count model N | context;
- :mod:`.regressors`: small dense regressors with folded normalization;
- :mod:`.classifiers`: signal/background classifiers of hit images and point clouds;
- :mod:`.gbdt`: gradient-boosted trees on engineered features (LightGBM, text model files);
- :mod:`.registry`: model kind -> class, ``save_model`` / ``load_model`` (safetensors + JSON).
"""

from __future__ import annotations

from detlearn.models.classifiers import ImageClassifier, PointCloudClassifier
from detlearn.models.counts import CountModel
from detlearn.models.flows import ConditionalFlow
from detlearn.models.gbdt import BoostedTrees
from detlearn.models.registry import (
    MODELS,
    SPEC_FILE,
    WEIGHTS_FILE,
    load_model,
    model_class,
    save_model,
)
from detlearn.models.regressors import Regressor

__all__ = [
    "MODELS",
    "SPEC_FILE",
    "WEIGHTS_FILE",
    "BoostedTrees",
    "ConditionalFlow",
    "CountModel",
    "ImageClassifier",
    "PointCloudClassifier",
    "Regressor",
    "load_model",
    "model_class",
    "save_model",
]
