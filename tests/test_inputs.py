"""data.inputs as a physicist writes it: one path, per-sample constant columns, a file reached
twice."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import flat_config, write_flat

from detlearn.config import validate_config
from detlearn.errors import DetlearnError
from detlearn.io.dataset import Dataset
from detlearn.prepare import prepare
from detlearn.recipes import load_config


def test_a_string_input_is_one_path_not_its_characters(tmp_path):
    path = write_flat(tmp_path / "f.root")
    cfg = validate_config({"data": {"inputs": str(path)}})
    assert cfg.data.inputs == [str(path)]


def test_constant_columns_label_each_sample(tmp_path):
    sig, bkg = write_flat(tmp_path / "sig.root", 300, 1), write_flat(tmp_path / "bkg.root", 200, 2)
    cfg = load_config(
        flat_config(
            tmp_path,
            [
                {"path": "sig.root", "columns": {"label": 1, "mass": 10.0}},
                {"path": str(bkg), "columns": {"label": 0, "mass": 0.0}},
            ],
            columns={
                "p": {"expr": "sqrt(px**2 + py**2 + pz**2)", "role": "context"},
                "label": {"role": "label"},
                "mass": {"role": "context", "unit": "MeV"},
            },
        )
    )
    assert cfg.data.inputs[0].path == str(sig)  # resolved against the config's folder
    prepare(cfg, tmp_path / "ds", progress=False)
    ds = Dataset.open(tmp_path / "ds")
    rows = ds.load(["label", "mass"])
    assert ds.columns["label"]["role"] == "label"
    assert (rows["label"] == 1).sum() == 300 and (rows["label"] == 0).sum() == 200
    assert set(rows["mass"][rows["label"] == 1]) == {10.0}


def test_a_declared_column_no_file_provides_is_an_error_naming_it(tmp_path):
    path = write_flat(tmp_path / "f.root")
    cfg = load_config(
        flat_config(
            tmp_path,
            [str(path)],
            columns={"p": {"expr": "px", "role": "context"}, "label": {"role": "label"}},
        )
    )
    with pytest.raises(DetlearnError, match=r"'label' .*f\.root"):
        prepare(cfg, tmp_path / "ds", progress=False)


def test_the_same_file_through_two_spellings_is_read_once(tmp_path):
    path = write_flat(tmp_path / "a" / "f.root", 400)
    os.symlink(path, tmp_path / "link.root")
    spellings = [
        str(path),
        str(tmp_path / "a" / ".." / "a" / "f.root"),
        str(tmp_path / "link.root"),
    ]
    cfg = load_config(flat_config(tmp_path, spellings))
    summary = prepare(cfg, tmp_path / "ds", progress=False)
    assert summary.files == 1
    direct = load_config(flat_config(tmp_path, [str(path)]))
    assert summary.rows == prepare(direct, tmp_path / "ds1", progress=False).rows


def test_one_file_with_two_different_labels_is_an_error(tmp_path):
    path = write_flat(tmp_path / "f.root")
    inputs = [{"path": str(path), "columns": {"label": 1}}, {"path": str(path), "columns": {}}]
    cfg = load_config(flat_config(tmp_path, inputs))
    with pytest.raises(DetlearnError, match=r"listed twice in data\.inputs with different columns"):
        prepare(cfg, tmp_path / "ds", progress=False)


def test_changing_a_files_constant_redoes_its_shards(tmp_path):
    path = write_flat(tmp_path / "f.root", 300)
    columns = {"p": {"expr": "px", "role": "context"}, "mass": {"role": "context"}}
    for mass in (5.0, 50.0):
        cfg = load_config(
            flat_config(tmp_path, [{"path": str(path), "columns": {"mass": mass}}], columns=columns)
        )
        prepare(cfg, tmp_path / "ds", progress=False)
        np.testing.assert_array_equal(
            np.unique(Dataset.open(tmp_path / "ds").load(["mass"])["mass"]), [mass]
        )
