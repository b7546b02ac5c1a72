"""Per-event data in the dataset store: hit lists and fixed-size tensors beside flat columns."""

from __future__ import annotations

import awkward as ak
import numpy as np

from detlearn.io.dataset import Dataset, column_dtype, write_shard


def _events(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 6, n)  # events with no hits included
    return {
        "event": np.arange(n, dtype=np.int64),
        "label": rng.integers(0, 2, n).astype(np.int32),
        "E": ak.unflatten(rng.exponential(1.0, counts.sum()).astype(np.float32), counts),
        "image": rng.random((n, 2, 3, 4)).astype(np.float32),
    }


def _dataset(tmp_path, shards: list[dict]) -> Dataset:
    records = []
    for i, columns in enumerate(shards):
        path = tmp_path / "shards" / f"s{i}.parquet"
        checksum = write_shard(columns, path)
        records.append(
            {
                "file": f"shards/{path.name}",
                "checksum": checksum,
                "rows": len(columns["event"]),
                "source": {"path": f"f{i}.root"},
            }
        )
    dtypes = {k: column_dtype(v) for k, v in shards[0].items()}
    manifest = {
        "columns": {k: {"role": "observer", "unit": "", "dtype": d} for k, d in dtypes.items()},
        "group_column": "event",
        "shards": records,
        "split": {"train": 0.5, "val": 0.25, "test": 0.25, "seed": 0},
    }
    (tmp_path / "manifest.json").write_text(__import__("json").dumps(manifest))
    return Dataset.open(tmp_path)


def test_lists_and_tensors_round_trip_row_by_row(tmp_path):
    shards = [_events(300, 0), _events(200, 1)]
    ds = _dataset(tmp_path, shards)
    assert ds.columns["E"]["dtype"] == "list<float32>"
    assert ds.columns["image"]["dtype"] == "float32[2,3,4]"
    back = ds.load(["event", "E", "image"])
    assert isinstance(back["E"], ak.Array) and back["image"].shape == (500, 2, 3, 4)
    assert ak.to_list(back["E"]) == ak.to_list(shards[0]["E"]) + ak.to_list(shards[1]["E"])
    np.testing.assert_array_equal(back["image"][300:], shards[1]["image"])
    assert int(ak.sum(ak.num(back["E"]) == 0)) > 0  # empty events kept


def test_a_split_keeps_each_events_hits_with_its_row(tmp_path):
    ds = _dataset(tmp_path, [_events(400, 2)])
    whole = ds.load(["event", "E"])
    by_event = {int(e): ak.to_list(h) for e, h in zip(whole["event"], whole["E"], strict=True)}
    parts = [ds.load(["event", "E"], split=s) for s in ("train", "val", "test")]
    assert sum(len(p["event"]) for p in parts) == 400
    for part in parts:
        for e, hits in zip(part["event"], part["E"], strict=True):
            assert ak.to_list(hits) == by_event[int(e)]


def test_batches_cover_the_split_without_loading_it_whole(tmp_path):
    ds = _dataset(tmp_path, [_events(300, 3), _events(250, 4)])
    whole = ds.load(["event", "image"], split="train")
    batches = list(ds.batches(["event", "image"], split="train", batch_rows=64))
    assert max(len(b["event"]) for b in batches) <= 64
    np.testing.assert_array_equal(np.concatenate([b["event"] for b in batches]), whole["event"])
    np.testing.assert_array_equal(np.concatenate([b["image"] for b in batches]), whole["image"])
