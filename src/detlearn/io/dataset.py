"""The prepared-dataset store: parquet shards plus a ``manifest.json`` describing them.

Layout of a dataset directory::

    manifest.json                  schema (units, roles), shards, failed inputs, config hash
    shards/<key>.parquet           one per work item, written atomically
    shards/<key>.done.json         the shard's record; present only once the shard is complete

The split of a row is decided by ``_group``, a uint64 hash of the shard's source file name and
the row's group id (the manifest's ``group_column``), so rows of one event never straddle train
and test. It is not stored: :meth:`Dataset.load` computes it from the group column, which every
shard holds (hashing 10 million ids takes ~0.1 s; writing them took longer).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from detlearn._files import atomic_path, file_checksum, read_json_object
from detlearn.errors import DetlearnError
from detlearn.io.splits import group_hash, split_mask

__all__ = [
    "GROUP_COLUMN",
    "Dataset",
    "read_shard_record",
    "write_shard",
]

GROUP_COLUMN = "_group"
_CHECKSUM = re.compile(r"xxh3:[0-9a-f]{16}")
MANIFEST = "manifest.json"


def write_shard(columns: dict[str, np.ndarray], path: Path) -> str:
    """Write one shard atomically; returns its checksum (see :func:`file_checksum`)."""
    table = pa.table({name: pa.array(values) for name, values in columns.items()})
    with atomic_path(path) as tmp:
        # No dictionary encoding: physics columns (floats, event ids) are nearly all distinct,
        # and building the dictionary took most of the write time (measured). lz4 keeps writing
        # several times faster than zstd for a few per cent more disk (the demos' shards: 10 %
        # and 75 % of their size uncompressed). No min/max statistics: nothing here filters
        # shards by value, and they cost ~7 % of writing. Written by pyarrow's own file (a
        # Python file object in between cost a copy of every page) and checksummed as it lies
        # in the page cache, before the rename makes it a shard.
        pq.write_table(table, tmp, compression="lz4", use_dictionary=False, write_statistics=False)
        return file_checksum(tmp)


def read_shard_record(shard: Path, config_hash: str, source: dict[str, Any]) -> dict | None:
    """The record of a complete, intact shard made from the same config and source, else None.

    A shard is reusable when its ``.done.json`` exists, names the same config hash and source
    file (size and mtime), and the parquet file's checksum still matches.
    """
    done = shard.with_suffix(".done.json")
    if not (shard.is_file() and done.is_file()):
        return None
    try:
        record = json.loads(done.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    same_source = {k: record.get("source", {}).get(k) for k in ("path", "size", "mtime")} == {
        k: source[k] for k in ("path", "size", "mtime")
    }
    if record.get("config_hash") != config_hash or not same_source:
        return None
    if file_checksum(shard) != record.get("checksum"):
        return None
    return record


@dataclass
class Dataset:
    """A prepared dataset directory (read side).

    Example:
        >>> ds = Dataset.open("demo/dataset")                          # doctest: +SKIP
        >>> train = ds.load(["z", "theta", "p", "dt"], split="train")  # doctest: +SKIP
    """

    root: Path
    manifest: dict[str, Any] = field(repr=False)

    @classmethod
    def open(cls, root: str | Path) -> Dataset:
        """Open a dataset directory written by ``prepare``, its manifest checked: every shard
        a ``.parquet`` file inside ``shards/`` with an XXH3 checksum (a manifest passed around
        cannot point a run at files elsewhere)."""
        root = Path(root)
        path = root / MANIFEST
        if not path.is_file():
            raise DetlearnError(f"{root}: not a prepared dataset (no {MANIFEST})")
        manifest = read_json_object(path)
        for key, kind in (("shards", list), ("columns", dict), ("group_column", str)):
            if not isinstance(manifest.get(key), kind):
                raise DetlearnError(f"{path}: key '{key}' is missing or not a {kind.__name__}")
        shard_dir = (root / "shards").resolve()
        for i, shard in enumerate(manifest["shards"]):
            file = shard.get("file") if isinstance(shard, dict) else None
            where = f"{path}: shards[{i}]"
            if not isinstance(file, str) or not file.endswith(".parquet"):
                raise DetlearnError(f"{where}: 'file' is not a .parquet file name")
            if (root / file).resolve().parent != shard_dir:
                raise DetlearnError(f"{where}: '{file}' lies outside {root / 'shards'}")
            if not _CHECKSUM.fullmatch(str(shard.get("checksum"))):
                raise DetlearnError(f"{where}: checksum {shard.get('checksum')!r} is not xxh3")
            if not isinstance(shard.get("rows"), int) or not isinstance(shard.get("source"), dict):
                raise DetlearnError(f"{where}: 'rows' or 'source' is missing")
        return cls(root, manifest)

    @property
    def fingerprint(self) -> str:
        """A hash of the data config and every shard's checksum: it changes when the folder
        is prepared again from other files or another config."""
        parts = [str(self.manifest.get("config_hash"))]
        parts += sorted(s["checksum"] for s in self.manifest["shards"])
        return f"xxh3:{xxhash.xxh3_64_hexdigest(chr(10).join(parts).encode())}"

    @property
    def columns(self) -> dict[str, dict[str, Any]]:
        """Column name -> {role, unit, dtype, lower, upper}."""
        return self.manifest["columns"]

    def names(self, role: str) -> list[str]:
        """Columns with the given role, in manifest order."""
        return [n for n, c in self.columns.items() if c["role"] == role]

    @property
    def rows(self) -> int:
        """Total rows over all shards."""
        return sum(s["rows"] for s in self.manifest["shards"])

    def load(
        self,
        columns: Sequence[str] | None = None,
        split: str | None = None,
        max_rows: int | None = None,
        fractions: Mapping[str, Any] | None = None,
    ) -> dict[str, np.ndarray]:
        """Read columns of all shards (optionally only one split) as numpy arrays.

        ``fractions``: the split's ``train``/``val``/``test`` fractions and ``seed`` (a run's
        ``split`` config); by default those the dataset was prepared with. Splits are decided
        on loading, so a run may change them without preparing again.
        """
        wanted = list(columns) if columns is not None else list(self.columns)
        unknown = [c for c in wanted if c not in self.columns and c != GROUP_COLUMN]
        if unknown:
            raise DetlearnError(
                f"{self.root}: no column '{unknown[0]}' in dataset (columns: "
                f"{', '.join(self.columns)})"
            )
        groups_needed = split is not None or GROUP_COLUMN in wanted
        group = self.manifest["group_column"]
        read = [c for c in wanted if c != GROUP_COLUMN]
        if groups_needed and group not in read:
            read.append(group)
        if not self.manifest["shards"]:
            raise DetlearnError(f"{self.root}: dataset has no shards")
        tables, hashes = [], []
        for shard in self.manifest["shards"]:
            table = self._read_shard(shard, read)
            tables.append(table)
            if groups_needed:
                ids = table.column(group).to_numpy()
                hashes.append(group_hash(Path(shard["source"]["path"]).name, ids))
        table = pa.concat_tables(tables)
        groups = np.concatenate(hashes) if groups_needed else None
        out = {
            name: groups if name == GROUP_COLUMN else table.column(name).to_numpy()
            for name in wanted
        }
        if groups is not None and split is not None:
            mask = split_mask(groups, split, fractions or self.manifest["split"])
            out = {k: v[mask] for k, v in out.items()}
        if max_rows is not None:
            out = {k: v[:max_rows] for k, v in out.items()}
        return out

    def _read_shard(self, shard: Mapping[str, Any], columns: list[str]) -> pa.Table:
        """One shard's columns, after checking its checksum against the manifest's."""
        path = self.root / shard["file"]
        if not path.is_file():
            raise DetlearnError(f"{path}: shard listed in the manifest is missing")
        if file_checksum(path) != shard["checksum"]:
            raise DetlearnError(
                f"{path}: checksum differs from the manifest's: the shard changed after "
                "prepare; run detlearn prepare again"
            )
        try:
            return pq.read_table(path, columns=columns)
        except (pa.ArrowException, OSError) as err:
            raise DetlearnError(f"{path}: unreadable shard ({str(err).splitlines()[0]})") from None
