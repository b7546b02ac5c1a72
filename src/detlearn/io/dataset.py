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

import contextlib
import json
import mmap
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from detlearn.data.splits import group_hash, split_mask
from detlearn.errors import DetlearnError

__all__ = [
    "GROUP_COLUMN",
    "Dataset",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "file_checksum",
    "read_json_object",
    "read_shard_record",
    "write_shard",
]

GROUP_COLUMN = "_group"
MANIFEST = "manifest.json"


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temp file beside ``path`` to fill in the block; renamed onto ``path`` if the block
    succeeds, removed if it fails, so no reader ever sees a half-written ``path``.

    Example:
        >>> with atomic_path(tmp / "out.root") as part:  # doctest: +SKIP
        ...     write_root(part)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp creates 0600; give the file the mode an ordinary open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder and a rename."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file's object; a one-line :class:`DetlearnError` when it is not valid JSON."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DetlearnError(f"{path}: not valid JSON ({err.msg})") from None


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def file_checksum(path: Path) -> str:
    """A file's checksum as written in the manifest: ``xxh3:<16 hex digits>``.

    XXH3-64, a non-cryptographic hash made to catch corruption: ~10 GB/s here, so checking a
    shard read back from the page cache costs a few per cent of writing it (CRC-32 ran at
    3.7 GB/s). A shard recorded with another kind of checksum (``crc32:``, older detlearn)
    never matches, and is redone.
    """
    with open(path, "rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            return f"xxh3:{xxhash.xxh3_64_hexdigest(b'')}"
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as view:
            return f"xxh3:{xxhash.xxh3_64_hexdigest(view)}"


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
        """Open a dataset directory written by ``prepare``."""
        root = Path(root)
        path = root / MANIFEST
        if not path.is_file():
            raise DetlearnError(f"{root}: not a prepared dataset (no {MANIFEST})")
        return cls(root, json.loads(path.read_text()))

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
            table = pq.read_table(self.root / shard["file"], columns=read)
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
