from __future__ import annotations

import numpy as np
import pytest

from detlearn.data.splits import group_hash, split_index, split_mask
from detlearn.errors import DetlearnError

FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1, "seed": 0}


def test_rows_of_one_group_share_a_split():
    events = np.repeat(np.arange(5000), 7)  # 7 photons per event
    idx = split_index(group_hash("a.root", events), FRACTIONS)
    per_event = idx.reshape(5000, 7)
    assert (per_event == per_event[:, :1]).all()


def test_fractions_match_within_binomial_error():
    n = 200_000
    idx = split_index(group_hash("a.root", np.arange(n)), FRACTIONS)
    for k, f in enumerate((0.8, 0.1, 0.1)):
        sigma = np.sqrt(n * f * (1 - f))
        assert abs((idx == k).sum() - n * f) < 5 * sigma


def test_split_is_deterministic_and_depends_on_seed_and_file():
    g = np.arange(10_000)
    a = split_index(group_hash("a.root", g), FRACTIONS)
    assert (a == split_index(group_hash("a.root", g), FRACTIONS)).all()
    assert (a != split_index(group_hash("b.root", g), FRACTIONS)).any()
    assert (a != split_index(group_hash("a.root", g), {**FRACTIONS, "seed": 1})).any()


def test_fractions_must_sum_to_one():
    with pytest.raises(DetlearnError, match="must be 1"):
        split_index(group_hash("a", np.arange(3)), {"train": 0.5, "val": 0.1, "test": 0.1})


def test_unknown_split_name():
    with pytest.raises(DetlearnError, match="unknown split 'tran'"):
        split_mask(np.zeros(3, np.uint64), "tran", FRACTIONS)
