"""The prepared-dataset store: parquet shards plus a ``manifest.json`` describing them.

Layout of a dataset directory::

    manifest.json                  schema (units, roles), shards, failed inputs, config hash
    shards/<key>.parquet           one per work item, written atomically
    shards/<key>.done.json         the shard's record; present only once the shard is complete

Columns are flat (one number per row: the fast path, a photon per row), variable-length lists
(an event's hits, one event per row: awkward arrays in, arrow list columns on disk, awkward
arrays out) or fixed-size tensors (an image per event: numpy ``[rows, *shape]`` in and out,
arrow fixed-size lists on disk). :meth:`Dataset.batches` reads them a batch at a time.

The split of a row is decided by ``_group``, a uint64 hash of the shard's source file name and
the row's group id (the manifest's ``group_column``), so rows of one event never straddle train
and test. It is not stored: :meth:`Dataset.load` computes it from the group column, which every
shard holds (hashing 10 million ids takes ~0.1 s; writing them took longer).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import awkward as ak
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
    "column_dtype",
    "read_shard_record",
    "write_shard",
]

GROUP_COLUMN = "_group"
_CHECKSUM = re.compile(r"xxh3:[0-9a-f]{16}")
MANIFEST = "manifest.json"


def column_dtype(values: Any) -> str:
    """How a column is described in the manifest: ``float32``, ``float32[3,20,20]`` (a
    fixed-size tensor per row) or ``list<float32>`` (a variable-length list per row)."""
    if isinstance(values, ak.Array):
        inner = ak.flatten(values, axis=None)
        return f"list<{ak.to_numpy(inner).dtype if len(inner) else values.layout.form.type}>"
    if values.ndim > 1:
        return f"{values.dtype}[{','.join(str(n) for n in values.shape[1:])}]"
    return str(values.dtype)


def _arrow(values: Any) -> pa.Array:
    if isinstance(values, ak.Array):
        return ak.to_arrow(values, extensionarray=False)
    if values.ndim > 1:
        flat = pa.array(np.ascontiguousarray(values).reshape(-1))
        return pa.FixedSizeListArray.from_arrays(flat, int(np.prod(values.shape[1:])))
    return pa.array(values)


def write_shard(columns: dict[str, Any], path: Path) -> str:
    """Write one shard atomically; returns its checksum (see :func:`file_checksum`).

    ``columns``: numpy arrays (flat or ``[rows, *shape]``) or awkward lists, one row each.
    """
    table = pa.table({name: _arrow(values) for name, values in columns.items()})
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
    # Compared as JSON has them (the constants' tuples come back as lists).
    keys = ("path", "size", "mtime", "constants")
    same_source = {k: record.get("source", {}).get(k) for k in keys} == json.loads(
        json.dumps({k: source.get(k) for k in keys})
    )
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
            name: groups if name == GROUP_COLUMN else self._values(name, table.column(name))
            for name in wanted
        }
        if groups is not None and split is not None:
            mask = split_mask(groups, split, fractions or self.manifest["split"])
            out = {k: v[mask] for k, v in out.items()}
        if max_rows is not None:
            out = {k: v[:max_rows] for k, v in out.items()}
        return out

    def batches(
        self,
        columns: Sequence[str],
        split: str | None = None,
        batch_rows: int = 65536,
        fractions: Mapping[str, Any] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """The rows of ``columns`` (optionally one split) in batches of at most ``batch_rows``,
        one shard read at a time, so per-event lists never all sit in memory at once."""
        for shard in self.manifest["shards"]:
            part = Dataset(self.root, {**self.manifest, "shards": [shard]})
            rows = part.load(columns, split, None, fractions)
            n = len(rows[columns[0]])
            for start in range(0, n, batch_rows):
                yield {k: rows[k][start : start + batch_rows] for k in columns}

    def _values(self, name: str, column: pa.ChunkedArray) -> Any:
        """A column as numpy (flat, or ``[rows, *shape]`` for a tensor) or awkward (lists)."""
        dtype = self.columns[name]["dtype"] if name in self.columns else ""
        if dtype.startswith("list<"):
            return ak.from_arrow(column, highlevel=True)
        if dtype.endswith("]"):
            shape = tuple(int(n) for n in dtype[dtype.index("[") + 1 : -1].split(","))
            flat = column.combine_chunks().flatten().to_numpy()
            return flat.reshape(-1, *shape)
        return column.to_numpy()

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
