"""Deterministic train/val/test splits by a hash of the group id (the event by default).

Each row carries ``_group = splitmix64(crc32(file name) + group id)``; the split of a row is
decided by ``splitmix64(_group ^ seed)`` mapped to [0, 1) and cut at the split fractions. Rows
of one group (one event, one muon with all its photons) therefore always share a split, the
split does not depend on how files were chunked, and fractions can change without re-preparing.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from detlearn.errors import DetlearnError

__all__ = ["SPLITS", "group_hash", "split_index", "split_mask"]

SPLITS = ("train", "val", "test")
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer: a cheap, well-mixed bijection of uint64."""
    with np.errstate(over="ignore"):
        z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return (z ^ (z >> np.uint64(31))) & _MASK64


def group_hash(file_name: str, group: np.ndarray) -> np.ndarray:
    """uint64 hash of (file name, integer group id) per row."""
    salt = np.uint64(zlib.crc32(file_name.encode()))
    with np.errstate(over="ignore"):
        return _splitmix64(
            np.asarray(group).astype(np.int64).view(np.uint64) + (salt << np.uint64(32))
        )


def split_index(groups: np.ndarray, fractions: Mapping[str, Any]) -> np.ndarray:
    """0 (train), 1 (val) or 2 (test) per row, from the group hashes and split fractions."""
    f = [float(fractions[s]) for s in SPLITS]
    if abs(sum(f) - 1.0) > 1e-9:
        raise DetlearnError(f"split: train + val + test must be 1 (got {sum(f):g})")
    u = _splitmix64(groups ^ np.uint64(int(fractions.get("seed", 0)) & 0xFFFFFFFF)) >> np.uint64(11)
    u = u.astype(np.float64) / float(1 << 53)
    return np.searchsorted(np.cumsum(f)[:-1], u, side="right").astype(np.int8)


def split_mask(groups: np.ndarray, split: str, fractions: Mapping[str, Any]) -> np.ndarray:
    """Boolean mask of the rows in ``split``."""
    if split not in SPLITS:
        raise DetlearnError(f"unknown split '{split}' (choose from {', '.join(SPLITS)})")
    return split_index(groups, fractions) == SPLITS.index(split)
