"""Models and their safe on-disk form: ``model.safetensors`` (weights) + ``model.json`` (spec).

Every model class exposes ``kind`` (the key of :data:`MODELS`), ``spec() -> dict``
(JSON-serializable, with that ``"kind"``) and a classmethod ``from_spec(spec)`` that rebuilds
the architecture; the weights (parameters and buffers, normalization constants included) live in
safetensors. Nothing is pickled and nothing is read with ``torch.load``, so a run directory
someone sent you is safe to open. ``model.json`` also records the weights file's checksum
(``weights_checksum``): weights changed on disk since (a flipped bit, another run's file) are
refused on load, as is anything that is not a safetensors file (a ``.pt`` pickle, a truncated
copy).

Example:
    >>> import tempfile
    >>> from detlearn.config import FlowConfig
    >>> flow = ConditionalFlow(1, 2, FlowConfig(hidden=[8]), lower=[0.0])
    >>> with tempfile.TemporaryDirectory() as run_dir:
    ...     _ = save_model(flow, run_dir)
    ...     load_model(run_dir).spec() == flow.spec()
    True
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from detlearn._files import atomic_path, atomic_write_json, file_checksum, read_json_object
from detlearn.errors import DetlearnError
from detlearn.models.classifiers import ImageClassifier, PointCloudClassifier
from detlearn.models.counts import CountModel
from detlearn.models.flows import ConditionalFlow
from detlearn.models.regressors import Regressor

__all__ = ["MODELS", "SPEC_FILE", "WEIGHTS_FILE", "load_model", "model_class", "save_model"]

WEIGHTS_FILE = "model.safetensors"
SPEC_FILE = "model.json"
#: The key of ``model.json`` holding the weights file's checksum (absent: written before it).
_CHECKSUM_KEY = "weights_checksum"

#: Every model kind a ``model.json`` may name, and the class that rebuilds it.
MODELS: dict[str, type[torch.nn.Module]] = {
    cls.kind: cls
    for cls in (ConditionalFlow, CountModel, Regressor, ImageClassifier, PointCloudClassifier)
}


def model_class(kind: str) -> type[torch.nn.Module]:
    """The class registered under ``kind`` (a one-line :class:`DetlearnError` if unknown)."""
    try:
        return MODELS[kind]
    except KeyError:
        known = ", ".join(sorted(MODELS))
        raise DetlearnError(f"unknown model kind '{kind}' (known: {known})") from None


def save_model(model: torch.nn.Module, directory: str | Path) -> Path:
    """Write ``model.safetensors`` and ``model.json`` into ``directory``; returns the weights path.

    Both files are written to a temporary name first and renamed, so a crash never leaves a
    half-written model behind.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    spec = model.spec()
    model_class(spec["kind"])
    weights = directory / WEIGHTS_FILE
    with atomic_path(weights) as tmp:
        try:
            # save_model (not save_file) de-duplicates tensors that share storage.
            safetensors.torch.save_model(model, str(tmp), metadata={"kind": spec["kind"]})
        except safetensors.SafetensorError as err:
            # Its I/O errors are not OSErrors: made one, a full disk is one line naming the file.
            code = re.search(r"\(os error (\d+)\)", str(err))
            if code is None:
                raise
            raise OSError(int(code[1]), str(err)) from err
    atomic_write_json(directory / SPEC_FILE, {**spec, _CHECKSUM_KEY: file_checksum(weights)})
    return weights


#: The largest size (features, context columns, channels, image side) a spec may give.
_MAX_SIZE = 100_000


def _check_sizes(spec: dict[str, Any], spec_path: Path) -> None:
    """Refuse a spec whose top-level sizes no model detlearn builds has (a crafted file must
    not make loading it take the machine's memory or hours); nested settings are validated by
    their config models (``detlearn.config``: widths, layers, transforms, bins)."""
    for key, value in spec.items():
        values = value if isinstance(value, list) else [value]
        for v in values:
            if isinstance(v, int) and not isinstance(v, bool) and not 0 <= v <= _MAX_SIZE:
                raise DetlearnError(
                    f"{spec_path}: '{key}' = {v} is outside 0..{_MAX_SIZE} (no detlearn model "
                    "is that large; the file was not written by detlearn)"
                )


def load_model(directory: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Rebuild the model saved by :func:`save_model` in ``directory``, in eval mode."""
    directory = Path(directory)
    spec_path, weights = directory / SPEC_FILE, directory / WEIGHTS_FILE
    for path in (spec_path, weights):
        if not path.is_file():
            raise DetlearnError(f"{path}: model file not found")
    spec = read_json_object(spec_path)
    if "kind" not in spec:
        raise DetlearnError(f"{spec_path}: missing key 'kind'")
    recorded = spec.pop(_CHECKSUM_KEY, None)
    if recorded is not None and file_checksum(weights) != recorded:
        raise DetlearnError(
            f"{weights}: checksum {file_checksum(weights)} differs from {recorded} recorded in "
            f"{spec_path.name} (the weights changed since they were saved)"
        )
    _check_sizes(spec, spec_path)
    try:
        model = model_class(spec["kind"]).from_spec(spec)
    except (KeyError, TypeError, ValueError) as err:
        raise DetlearnError(f"{spec_path}: not a valid '{spec['kind']}' spec ({err!r})") from None
    try:
        missing, unexpected = safetensors.torch.load_model(model, str(weights), strict=False)
    except (safetensors.SafetensorError, OSError) as err:
        raise DetlearnError(f"{weights}: not a readable safetensors file ({err})") from None
    if missing or unexpected:
        raise DetlearnError(
            f"{weights}: weights do not match {spec_path.name} "
            f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})"
        )
    return model.to(device).eval()
