"""Latency curves: every runtime timed at every batch size, per-row times that scale."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest

from detlearn.evaluation.latency import cpu_steal_s, latency_curves, latency_per_row


def test_curves_time_every_runtime_at_every_batch_and_see_a_per_call_cost():
    x = np.ones((64, 3), np.float32)  # fewer rows than the batches: rows are repeated
    seen: dict[str, set[int]] = {"sleep": set(), "sum": set()}

    def sleepy(b: np.ndarray) -> None:  # 2 ms per call whatever the batch: cost/row ∝ 1/b
        seen["sleep"].add(len(b))
        time.sleep(0.002)

    def summing(b: np.ndarray) -> np.ndarray:
        seen["sum"].add(len(b))
        return b.sum(1)

    curves = latency_curves(
        {"sleep": sleepy, "sum": summing}, x, [128, 1024], trials=2, rounds=2, min_trial_s=0.005
    )
    assert seen == {"sleep": {128, 1024}, "sum": {128, 1024}}
    assert [r["batch"] for r in curves["sleep"]] == [128, 1024]
    small, large = (r["ns_per_row"] for r in curves["sleep"])
    assert small > 2e6 / 128 and large > 2e6 / 1024  # at least the sleep
    assert 4 < small / large < 12  # per-call cost spread over 8x the rows
    for r in curves["sum"]:
        assert r["ns_per_row_p16"] <= r["ns_per_row"] <= r["ns_per_row_p84"]
    assert [r["batch"] for r in latency_per_row(summing, x, [16], trials=1)] == [16]
    for rows in curves.values():
        for r in rows:
            assert math.isnan(r["steal"]) or 0.0 <= r["steal"] <= 1.0


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="no /proc/stat (not Linux)")
def test_cpu_steal_is_a_non_decreasing_number_of_seconds():
    first = cpu_steal_s()
    assert first is not None and first >= 0.0
    time.sleep(0.05)
    assert cpu_steal_s() >= first


def test_batches_larger_than_the_inputs_repeat_whole_rows_of_any_shape():
    images = np.arange(3 * 2 * 4 * 4, dtype=np.float32).reshape(3, 2, 4, 4)
    got: list[np.ndarray] = []

    def keep(b: np.ndarray) -> None:
        got.append(b.copy())

    latency_curves({"keep": keep}, images, [7], trials=1, warmup=0, min_trial_s=0.0)
    assert got[0].shape == (7, 2, 4, 4)
    np.testing.assert_array_equal(got[0][3:6], images)  # rows, not a tiled last axis
