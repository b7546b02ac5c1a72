"""A model directory is refused, in one line naming the file, when its weights are not the
safetensors file saved with it: a pickle, a truncated copy, changed bytes, a bad spec."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from detlearn.config import FlowConfig
from detlearn.errors import DetlearnError
from detlearn.models import ConditionalFlow
from detlearn.models.gbdt import BoostedTrees
from detlearn.models.registry import SPEC_FILE, WEIGHTS_FILE, load_model, save_model


@pytest.fixture
def saved(tmp_path):
    flow = ConditionalFlow(1, 2, FlowConfig(hidden=[8]), lower=[0.0])
    save_model(flow, tmp_path)
    return tmp_path, flow


def test_a_saved_model_loads_with_the_same_weights(saved):
    directory, flow = saved
    loaded = load_model(directory)
    for (name, a), (_, b) in zip(
        flow.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def _flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: p.write_bytes(pickle.dumps({"w": 1})), "checksum"),
        (lambda p: torch.save({"w": torch.zeros(3)}, p), "checksum"),
        (lambda p: p.write_bytes(p.read_bytes()[:100]), "checksum"),
        (_flip_last_byte, "the weights changed since they were saved"),
    ],
    ids=["pickle", "torch-save", "truncated", "one-bit"],
)
def test_weights_that_are_not_the_saved_file_are_refused(saved, damage, message):
    directory, _ = saved
    damage(directory / WEIGHTS_FILE)
    with pytest.raises(DetlearnError, match=message) as err:
        load_model(directory)
    assert str(directory / WEIGHTS_FILE) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "damage",
    [lambda p: p.write_bytes(pickle.dumps({"w": 1})), lambda p: p.write_bytes(b"")],
    ids=["pickle", "empty"],
)
def test_without_a_recorded_checksum_a_non_safetensors_file_is_still_refused(saved, damage):
    directory, _ = saved
    spec = json.loads((directory / SPEC_FILE).read_text())
    del spec["weights_checksum"]  # as written before checksums were recorded
    (directory / SPEC_FILE).write_text(json.dumps(spec))
    damage(directory / WEIGHTS_FILE)
    with pytest.raises(DetlearnError, match="not a readable safetensors file"):
        load_model(directory)


def test_a_spec_missing_a_key_is_a_one_line_error(saved):
    directory, _ = saved
    spec = json.loads((directory / SPEC_FILE).read_text())
    del spec["features"]
    (directory / SPEC_FILE).write_text(json.dumps(spec))
    with pytest.raises(DetlearnError, match=r"model\.json: not a valid 'conditional_flow' spec"):
        load_model(directory)


def test_a_boosted_trees_model_that_changed_on_disk_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 2)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.float32)
    trees = BoostedTrees.train(x, y, None, x, y, ["a", "b"], iterations=5)
    trees.save(tmp_path)
    np.testing.assert_array_equal(
        BoostedTrees.load(tmp_path).predict_proba(x), trees.predict_proba(x)
    )
    text = (tmp_path / "model.txt").read_text()
    (tmp_path / "model.txt").write_text(text.replace("leaf_value=", "leaf_value=1", 1))
    with pytest.raises(DetlearnError, match=r"model\.txt: checksum .* \(the model changed"):
        BoostedTrees.load(tmp_path)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("features", 10**9, r"'features' = 1000000000 is outside 0\.\.100000"),
        ("flow", {"transforms": 10**7}, r"model\.json: not a valid 'conditional_flow' spec"),
        ("flow", {"hidden": [10**6, 10**6]}, r"not a valid 'conditional_flow' spec"),
    ],
)
def test_a_crafted_spec_cannot_make_loading_take_the_machine(saved, key, value, message):
    directory, _ = saved
    spec = json.loads((directory / SPEC_FILE).read_text())
    spec[key] = spec[key] | value if isinstance(value, dict) else value
    (directory / SPEC_FILE).write_text(json.dumps(spec))
    with pytest.raises(DetlearnError, match=message):
        load_model(directory)
