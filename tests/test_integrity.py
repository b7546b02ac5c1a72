"""Silent wrong results refused: a changed shard, a manifest pointing elsewhere, a diverged or
untrained model, a run whose dataset was prepared again, NaN in a JSON artifact."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import write_tree

from detlearn._files import atomic_write_json, read_json_object
from detlearn.config import validate_config
from detlearn.errors import DetlearnError
from detlearn.families import train
from detlearn.io.dataset import Dataset
from detlearn.prepare import prepare
from detlearn.runs import read_run_info


def _config(tmp, **training):
    return validate_config(
        {
            "data": {
                "inputs": [str(tmp / "toy.root")],
                "columns": {
                    "c": {"role": "context"},
                    "t": {"role": "target", "unit": "ns", "lower": 0.0},
                },
            },
            "executor": {"workers": 1},
            "model": {"flow": {"transforms": 1, "hidden": [8], "bins": 4}},
            "training": {"batch_size": 256, "max_epochs": 2, **training},
        }
    )


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("integrity")
    rng = np.random.default_rng(2)
    c = rng.uniform(0, 1, 3000)
    write_tree(tmp / "toy.root", "Events", {"c": c, "t": rng.lognormal(c, 0.3)})
    prepare(_config(tmp), tmp / "ds", progress=False)
    return tmp


def _copy(prepared, tmp_path):
    shutil.copytree(prepared / "ds", tmp_path / "ds")
    return tmp_path / "ds"


def _edit_manifest(ds, edit):
    manifest = json.loads((ds / "manifest.json").read_text())
    edit(manifest)
    (ds / "manifest.json").write_text(json.dumps(manifest))


def test_a_flipped_bit_in_a_shard_is_refused_naming_the_shard(prepared, tmp_path):
    ds = _copy(prepared, tmp_path)
    shard = next((ds / "shards").glob("*.parquet"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(DetlearnError, match=f"{shard.name}: checksum differs"):
        Dataset.open(ds).load(["c"])


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("file", "../../toy.root", "not a .parquet"),
        ("file", "../outside.parquet", "lies outside"),
        ("file", "/etc/passwd.parquet", "lies outside"),
        ("checksum", "xxh3:0", "is not xxh3"),
        ("checksum", 0, "is not xxh3"),
    ],
)
def test_a_manifest_pointing_elsewhere_or_unchecked_is_refused(
    prepared, tmp_path, field, value, message
):
    ds = _copy(prepared, tmp_path)
    _edit_manifest(ds, lambda m: m["shards"][0].__setitem__(field, value))
    with pytest.raises(DetlearnError, match=message):
        Dataset.open(ds)


@pytest.mark.parametrize(
    ("training", "key"),
    [({"lr": float("inf")}, "training.lr"), ({"max_minutes": -1}, "training.max_minutes")],
)
def test_impossible_training_settings_are_config_errors(prepared, training, key):
    with pytest.raises(DetlearnError, match=key):
        _config(prepared, **training)


def test_a_training_that_diverges_publishes_no_run(prepared, tmp_path):
    with pytest.raises(DetlearnError, match="diverged"):
        train(_config(prepared, lr=1e12), prepared / "ds", tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "run.json").exists()
    assert not (tmp_path / "run" / "flow" / "model.safetensors").exists()


def test_a_training_stopped_before_its_first_epoch_publishes_no_run(prepared, tmp_path):
    with pytest.raises(DetlearnError, match="before its first epoch ended"):
        train(
            _config(prepared, max_minutes=1e-9), prepared / "ds", tmp_path / "run", progress=False
        )
    assert not (tmp_path / "run" / "run.json").exists()


def test_a_run_refuses_a_dataset_prepared_again_in_its_folder(prepared, tmp_path):
    ds = _copy(prepared, tmp_path)
    train(_config(prepared), ds, tmp_path / "run", progress=False)
    info = read_run_info(tmp_path / "run")
    assert info.load_split(["c"], "test")["c"].size > 0
    rng = np.random.default_rng(3)
    write_tree(tmp_path / "toy.root", "Events", {"c": rng.uniform(0, 1, 900), "t": rng.random(900)})
    prepare(_config(tmp_path), ds, force=True, progress=False)
    with pytest.raises(DetlearnError, match="prepared again since this run was trained"):
        info.load_split(["c"], "test")


def test_json_artifacts_never_hold_nan(tmp_path):
    with pytest.raises(DetlearnError, match="NaN or inf"):
        atomic_write_json(tmp_path / "a.json", {"x": float("nan")})
    assert not (tmp_path / "a.json").exists()
    (tmp_path / "b.json").write_text('{"x": NaN}')
    with pytest.raises(DetlearnError, match="not valid JSON"):
        read_json_object(tmp_path / "b.json")
    (tmp_path / "c.json").write_bytes(b'{"x": "\xff"}')
    with pytest.raises(DetlearnError, match="not UTF-8"):
        read_json_object(tmp_path / "c.json")
