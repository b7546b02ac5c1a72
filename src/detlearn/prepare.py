"""ROOT files -> a prepared dataset directory (parquet shards + manifest), resumable.

One work item (file, entry range) becomes one shard, written atomically. A rerun reuses every
shard that is complete and intact for the same config and source file, and redoes the rest,
so an interrupted preparation finishes where it stopped and gives the same dataset.

Example:
    >>> from detlearn.recipes import load_config                        # doctest: +SKIP
    >>> summary = prepare(load_config("run.yaml"), "dataset/")          # doctest: +SKIP
    >>> summary.rows, summary.failed                                    # doctest: +SKIP
"""

from __future__ import annotations

import functools
import importlib
import time
import warnings
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np

from detlearn import __version__
from detlearn._files import (
    atomic_write_json,
    check_out_folder,
    read_json_object,
    remove_temp_files,
)
from detlearn._progress import progress as show_progress
from detlearn.config import DataConfig, RunConfig, data_hash
from detlearn.errors import DetlearnError, DetlearnWarning
from detlearn.io.dataset import MANIFEST, column_dtype, read_shard_record, write_shard
from detlearn.io.expressions import ColumnSet
from detlearn.io.provenance import read_provenance
from detlearn.io.sources import Chunk, WorkItem, plan_work_items, resolve_sources
from detlearn.parallel import executor, prestart
from detlearn.recipes import get_recipe

__all__ = [
    "PrepareSummary",
    "expression_extractor",
    "prepare",
    "process_item",
    "resolve_extractor",
    "weight_column",
]

Extractor = Callable[[Chunk, DataConfig], dict[str, np.ndarray]]
ENTRY_ALIAS = "_entry"


@dataclass
class PrepareSummary:
    """What a ``prepare`` call did."""

    out: Path
    files: int
    shards: int
    rows: int
    seconds: float
    skipped: int
    failed: list[dict[str, str]] = field(default_factory=list)
    #: Entries read, rows the extractor and selection gave, and per column the rows dropped
    #: for a non-finite value (a row may count under several columns).
    entries: int = 0
    extracted: int = 0
    nonfinite: dict[str, int] = field(default_factory=dict)
    #: The weight column (role ``weight``, the one training uses) and its rows of weight 0 and
    #: of negative weight (None where shards of an older version did not count them).
    weight: str | None = None
    zero_weight: int | None = None
    negative_weight: int | None = None

    def dropped(self) -> str:
        """One line on what was left out: by the selection (one row per entry), as non-finite
        (per column), and from training for a weight of 0; and the negative weights kept.
        Empty when there is nothing to say."""
        parts = []
        if self.extracted < self.entries:
            parts.append(f"selection kept {self.extracted:,} of {self.entries:,} entries")
        if self.nonfinite:
            cols = ", ".join(f"{k} {v:,}" for k, v in sorted(self.nonfinite.items()))
            parts.append(f"non-finite rows dropped: {self.extracted - self.rows:,} ({cols})")
        if self.zero_weight:
            parts.append(
                f"rows of weight 0 ('{self.weight}'), left out of training: {self.zero_weight:,}"
            )
        if self.negative_weight:
            parts.append(
                f"rows of negative weight ('{self.weight}'), kept with their sign: "
                f"{self.negative_weight:,}"
            )
        return "; ".join(parts)

    @property
    def rows_per_second(self) -> float:
        """Rows written (or reused) per wall-clock second."""
        return self.rows / self.seconds if self.seconds > 0 else float("nan")


def group_column(data: DataConfig) -> str:
    """Name of the column holding the group id (the event by default)."""
    groups = [name for name, spec in data.columns.items() if spec.role == "group"]
    if len(groups) > 1:
        raise DetlearnError(f"data.columns: only one column may have role 'group' (got {groups})")
    return groups[0] if groups else "event"


def expression_extractor(chunk: Chunk, data: DataConfig) -> dict[str, np.ndarray]:
    """Rows from branch expressions (``data.columns``) and a selection, one row per entry."""
    # Columns the input gives a constant value are set after extraction, not read.
    constant = {name for name, _ in chunk.item.source.constants}
    exprs: dict[str, str | None] = {
        n: spec.expr for n, spec in data.columns.items() if n not in constant
    }
    group = group_column(data)
    if group not in exprs:
        exprs[group] = ENTRY_ALIAS
    labels = tuple((name, data.column_label(name)) for name in exprs)
    columns = _column_set(tuple(exprs.items()), data.selection, tuple(data.require), labels)
    keys = chunk.keys()
    branches = sorted(columns.branches([*keys, ENTRY_ALIAS], where=chunk.path) - {ENTRY_ALIAS})
    records = chunk.arrays(branches)
    # Flat numeric branches go to numpy: its ufuncs are several times faster than awkward's
    # dispatch on the same data; jagged branches stay awkward.
    arrays: dict[str, Any] = {name: _numpy_if_flat(records[name]) for name in branches}
    arrays[ENTRY_ALIAS] = np.arange(chunk.item.entry_start, chunk.item.entry_stop, dtype=np.int64)
    values, _, _ = columns.evaluate(arrays, where=chunk.path)
    return values


@functools.lru_cache(maxsize=8)
def _column_set(
    exprs: tuple[tuple[str, str | None], ...],
    selection: str | None,
    require: tuple[str, ...],
    labels: tuple[tuple[str, str], ...],
) -> ColumnSet:
    # One per config, kept across the chunks a process handles: the set caches its resolved
    # and compiled expressions.
    return ColumnSet(dict(exprs), selection, require, dict(labels))


def _numpy_if_flat(array: ak.Array) -> Any:
    if array.ndim == 1 and isinstance(array.layout, ak.contents.NumpyArray):
        return array.layout.data
    return array


def resolve_extractor(name: str | None) -> Extractor:
    """The extractor for ``data.extractor``: a recipe name, 'module:function', or expressions."""
    if name is None:
        return expression_extractor
    if ":" in name:
        module, _, func = name.partition(":")
        try:
            return getattr(importlib.import_module(module), func)
        except (ImportError, AttributeError):
            raise DetlearnError(f"data.extractor: cannot import '{name}'") from None
    extract = get_recipe(name).extract
    if extract is None:
        raise DetlearnError(
            f"data.extractor: recipe '{name}' has no extractor (its config's branch expressions "
            "read its files: leave data.extractor unset)"
        )
    return extract


def _finite_rows(col: Any) -> np.ndarray | None:
    """Per row: every value of the row is finite; None for a column that is not floating."""
    if isinstance(col, ak.Array):
        flat = ak.to_numpy(ak.flatten(col, axis=None))
        if not np.issubdtype(flat.dtype, np.floating):
            return None
        return ak.to_numpy(ak.all(np.isfinite(col), axis=-1))
    if not np.issubdtype(col.dtype, np.floating):
        return None
    finite = np.isfinite(col)
    return finite.reshape(len(col), -1).all(axis=1) if col.ndim > 1 else finite


def _drop_nonfinite(
    values: dict[str, Any], data: DataConfig, where: str
) -> tuple[dict[str, Any], dict[str, int]]:
    counts: dict[str, int] = {}
    keep: np.ndarray | None = None
    for name, col in values.items():
        finite = _finite_rows(col)
        if finite is None:
            continue
        bad = int(len(finite) - np.count_nonzero(finite))
        if bad:
            if data.on_nonfinite == "error":
                raise DetlearnError(
                    f"{where}: {data.column_label(name, advice=False)} has {bad} non-finite values "
                    "(NaN/Inf); set data.on_nonfinite: drop to drop those rows"
                )
            counts[name] = bad
            keep = finite if keep is None else keep & finite
    if keep is not None:
        values = {k: v[keep] for k, v in values.items()}
    return values, counts


def weight_column(data: DataConfig) -> str | None:
    """The column of role ``weight`` training uses (the first), or None."""
    return next((name for name, spec in data.columns.items() if spec.role == "weight"), None)


def _weight_record(values: dict[str, Any], data: DataConfig) -> dict[str, Any] | None:
    """Sum, zero and negative count of the weight column of a shard's rows."""
    name = weight_column(data)
    if name is None or name not in values:
        return None
    w = np.asarray(values[name], dtype=np.float64)
    return {
        "column": name,
        "sum": float(w.sum()),
        "zero": int(np.sum(w == 0)),
        "negative": int(np.sum(w < 0)),
    }


def process_item(
    item: WorkItem, data: DataConfig, extract: Extractor, shard: Path, chash: str
) -> dict[str, Any]:
    """Extract one work item with ``extract`` and write its shard; returns the shard record.

    Columns the config removed (``name: null`` over a recipe's column) are left out, even
    where ``extract`` gives them."""
    chunk = Chunk(item)
    group = group_column(data)
    values = {
        name: value
        for name, value in extract(chunk, data).items()
        if name not in data.removed_columns or name == group
    }
    rows = len(next(iter(values.values()))) if values else 0
    values |= {name: np.full(rows, value) for name, value in item.source.constants}
    missing = [name for name in data.columns if name not in values]
    if missing:
        raise DetlearnError(
            f"{chunk.where}: {data.column_label(missing[0])} of data.columns is neither read "
            "from the file nor set for it in data.inputs (give {path: ..., columns: {"
            + missing[0]
            + ": ...}})"
        )
    lengths = {len(v) for v in values.values()}
    if len(lengths) > 1:
        sizes = {k: len(v) for k, v in values.items()}
        raise DetlearnError(f"{chunk.where}: extracted columns differ in length: {sizes}")
    if group not in values:
        raise DetlearnError(f"{chunk.where}: extractor returned no group column '{group}'")
    extracted = len(values[group])
    values, nonfinite = _drop_nonfinite(values, data, chunk.path)
    checksum = write_shard(values, shard)
    record = {
        "file": f"shards/{shard.name}",
        "source": item.source.as_dict(),
        "entry_start": item.entry_start,
        "entry_stop": item.entry_stop,
        "rows": len(values[group]),
        "checksum": checksum,
        "config_hash": chash,
        "nonfinite_dropped": nonfinite,
        "nonfinite_rows": extracted - len(values[group]),
        "extracted_rows": extracted,
        "weight": _weight_record(values, data),
        "dtypes": {k: column_dtype(v) for k, v in values.items()},
        "tallies": {name: asdict(tally) for name, tally in chunk.tallies.items()},
    }
    atomic_write_json(shard.with_suffix(".done.json"), record)
    return record


def _schema(data: DataConfig, dtypes: dict[str, str]) -> dict[str, dict[str, Any]]:
    schema = {}
    for name, dtype in dtypes.items():
        spec = data.columns.get(name)
        role = spec.role if spec else ("group" if name == group_column(data) else "observer")
        schema[name] = {
            "role": role,
            "unit": spec.unit if spec else "",
            "dtype": dtype,
            "lower": spec.lower if spec else None,
            "upper": spec.upper if spec else None,
        }
    return schema


def prepare(
    cfg: RunConfig,
    out: str | Path,
    force: bool = False,
    progress: bool = True,
) -> PrepareSummary:
    """Prepare a dataset from ``cfg.data`` into directory ``out``.

    Work items run on ``cfg.executor``; complete shards from an earlier run are reused unless
    ``force``. With ``data.on_error: stop`` (default) the first bad input raises a
    :class:`DetlearnError` and no manifest is written; with ``skip`` bad files are listed under
    ``failed`` in the manifest and the rest completes. Conditions the extractor counted
    (:class:`~detlearn.io.sources.Tally`, e.g. klm-timing's photons arriving too early) are
    summed over the dataset and, past their threshold, each warned once (a
    :class:`DetlearnWarning`) after the manifest is written.
    """
    out = Path(out)
    check_out_folder(out, "dataset folder", _not_a_dataset)
    data = cfg.data
    t0 = time.perf_counter()
    chash = data_hash(data)
    extract = resolve_extractor(data.extractor)
    prestart(cfg.executor, preload=[__name__])
    sources, failed = resolve_sources(data.inputs, data.tree, data.on_error)
    items = plan_work_items(sources, data.step_size)
    shard_dir = out / "shards"
    made = [p for p in (out, shard_dir) if not p.exists()]
    shard_dir.mkdir(parents=True, exist_ok=True)
    remove_temp_files(shard_dir)  # left by a killed run

    records: dict[str, dict[str, Any]] = {}
    todo: list[WorkItem] = []
    for item in items:
        shard = shard_dir / f"{item.key}.parquet"
        record = None if force else read_shard_record(shard, chash, item.source.as_dict())
        if record is None:
            todo.append(item)
        else:
            records[item.key] = record
    skipped = len(records)
    # Longest first: the short last chunk of each file then fills gaps at the end instead of a
    # long chunk starting last and leaving the other workers idle.
    todo.sort(key=lambda item: item.entry_stop - item.entry_start, reverse=True)

    bad_sources: set[str] = set()
    try:
        with (
            show_progress(len(items), "preparing", progress, skipped) as advance,
            executor(cfg.executor, preload=[__name__]) as pool,
        ):
            futures: dict[Future, WorkItem] = {
                pool.submit(
                    process_item, item, data, extract, shard_dir / f"{item.key}.parquet", chash
                ): item
                for item in todo
            }
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    item = futures[fut]
                    err = fut.exception()
                    if err is None:
                        records[item.key] = fut.result()
                    elif data.on_error == "skip":
                        if item.source.path not in bad_sources:
                            bad_sources.add(item.source.path)
                            failed.append({"path": item.source.path, "reason": _reason(err)})
                    else:
                        for other in pending:
                            other.cancel()
                        if isinstance(err, DetlearnError):
                            raise err
                        raise DetlearnError(f"{item.where}: {_reason(err)}") from err
                    advance()
    except BaseException:
        # A failed preparation leaves no empty folder behind that looks like a dataset.
        _remove_empty(made)
        raise
    # A worker killed while writing a shard (a dask worker, whose work another one redid)
    # leaves its temp file; every worker is done now.
    remove_temp_files(shard_dir)

    shards = [
        records[i.key] for i in items if i.key in records and i.source.path not in bad_sources
    ]
    rows = sum(s["rows"] for s in shards)
    if rows == 0:
        _remove_empty(made)
        if not shards and failed:
            reasons = "; ".join(f"{f['path']}: {f['reason']}" for f in failed[:3])
            more = f" and {len(failed) - 3} more" if len(failed) > 3 else ""
            raise DetlearnError(f"every input file failed ({len(failed)}): {reasons}{more}")
        entries = sum(s["entry_stop"] - s["entry_start"] for s in shards)
        raise DetlearnError(
            f"{out}: no rows left to write ({entries} entries read, 0 rows after selection "
            "and non-finite filtering); check data.selection"
        )
    weights = _weight_totals(shards, data)
    if weights is not None and not weights["sum"] > 0:
        raise DetlearnError(
            f"{out}: the weight column '{weights['column']}' sums to {weights['sum']:g} over "
            f"{rows:,} rows ({weights['negative']:,} negative, {weights['zero']:,} zero); a "
            "weighted loss Σ w·ℓ / Σ w needs a positive total: check its expression"
        )
    dtypes: dict[str, str] = {}
    for s in shards:
        dtypes.update(s["dtypes"])
    manifest = {
        "detlearn_version": __version__,
        "recipe": cfg.recipe,
        "config_hash": chash,
        "data": data.model_dump(mode="json"),
        "split": cfg.split.model_dump(mode="json"),
        "columns": _schema(data, dtypes),
        "group_column": group_column(data),
        "shards": shards,
        "failed": failed,
        "rows": rows,
        # Which program wrote each input (None: not detlearn, e.g. ddsim), for evaluate.
        "provenance": {path: read_provenance(path) for path in _sources(shards)},
    }
    atomic_write_json(out / MANIFEST, manifest)
    for message in _tally_warnings(shards):
        warnings.warn(message, DetlearnWarning, stacklevel=2)
    nonfinite: dict[str, int] = {}
    for s in shards:
        for name, count in s.get("nonfinite_dropped", {}).items():
            nonfinite[name] = nonfinite.get(name, 0) + count
    return PrepareSummary(
        out=out,
        files=len(_sources(shards)),
        shards=len(shards),
        rows=rows,
        seconds=time.perf_counter() - t0,
        skipped=skipped,
        failed=failed,
        entries=sum(s["entry_stop"] - s["entry_start"] for s in shards),
        extracted=sum(s.get("extracted_rows", s["rows"]) for s in shards),
        nonfinite=nonfinite,
        weight=weight_column(data),
        zero_weight=weights["zero"] if weights else None,
        negative_weight=weights["negative"] if weights else None,
    )


def _weight_totals(shards: list[dict[str, Any]], data: DataConfig) -> dict[str, Any] | None:
    """The weight column's sum, zero and negative counts over all shards; None without a
    weight column or where a shard did not count them."""
    records = [s.get("weight") for s in shards]
    name = weight_column(data)
    if name is None or not records or any(r is None or r["column"] != name for r in records):
        return None
    totals = {key: sum(r[key] for r in records) for key in ("sum", "zero", "negative")}
    return {"column": name, **totals}


def _tally_warnings(shards: list[dict[str, Any]]) -> list[str]:
    """One message per extractor tally (:class:`~detlearn.io.sources.Tally`) whose fraction,
    summed over the shards, passes its threshold; ``files`` names the files that pass it."""
    sums: dict[str, dict[str, Any]] = {}
    for s in shards:
        for name, tally in s.get("tallies", {}).items():
            total = sums.setdefault(name, {**tally, "count": 0, "total": 0, "files": {}})
            total["count"] += tally["count"]
            total["total"] += tally["total"]
            per_file = total["files"].setdefault(s["source"]["path"], [0, 0])
            per_file[0] += tally["count"]
            per_file[1] += tally["total"]
    messages = []
    for tally in sums.values():
        if not tally["total"] or tally["count"] <= tally["threshold"] * tally["total"]:
            continue
        files = [f for f, (c, t) in tally["files"].items() if c > tally["threshold"] * t]
        others = len(files) - 1
        more = f" and {others} more file{'s' if others > 1 else ''}" if others else ""
        messages.append(
            tally["message"].format(
                fraction=tally["count"] / tally["total"],
                count=tally["count"],
                total=tally["total"],
                files=f"{files[0]}{more}",
            )
        )
    return messages


def _not_a_dataset(out: Path) -> str | None:
    """Why the folder ``out``, which holds files, is no dataset folder prepare may write
    ``manifest.json`` and ``shards/`` into (and remove stale temp files from); None if it is."""
    shards, manifest = out / "shards", out / MANIFEST
    if shards.is_symlink():
        return "its shards/ is a symbolic link; a dataset's shards/ must be its own"
    if manifest.is_file():
        try:
            record = read_json_object(manifest)
        except DetlearnError:
            record = {}
        if not {"shards", "config_hash"} <= set(record):
            return f"its {MANIFEST} is not a detlearn dataset's manifest"
    elif not shards.is_dir():
        return f"holds files but is no detlearn dataset (no {MANIFEST}, no shards/)"
    return None


def _remove_empty(made: list[Path]) -> None:
    """Remove the folders this preparation created (innermost first) that are still empty."""
    for folder in reversed(made):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def _sources(shards: list[dict[str, Any]]) -> list[str]:
    """The shards' source files, each once, in order."""
    return list(dict.fromkeys(s["source"]["path"] for s in shards))


def _reason(err: BaseException) -> str:
    if isinstance(err, BrokenProcessPool):
        # The fork server imports __main__: a script's unguarded top level runs there too.
        return (
            "a worker process died (killed, out of memory, or a Python script that calls "
            'prepare() with local workers outside an `if __name__ == "__main__":` block)'
        )
    text = str(err).splitlines()[0] if str(err) else ""
    return text if isinstance(err, DetlearnError) else f"{type(err).__name__}: {text}"
