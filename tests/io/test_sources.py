"""Opening inputs: every bad-input case gives one line naming the file (and tree/branch)."""

from __future__ import annotations

import numpy as np
import pytest
import uproot
from conftest import write_flat, write_tree

from detlearn.errors import DetlearnError
from detlearn.io.sources import Chunk, expand_inputs, plan_work_items, resolve_sources


def test_missing_file(tmp_path):
    with pytest.raises(DetlearnError, match=f"{tmp_path / 'nope.root'}: file not found"):
        resolve_sources([str(tmp_path / "nope.root")], None)


def test_glob_matching_nothing(tmp_path):
    with pytest.raises(DetlearnError, match="no file matches this pattern"):
        resolve_sources([str(tmp_path / "*.root")], None)


def test_file_that_is_not_root(tmp_path):
    bad = tmp_path / "notes.root"
    bad.write_text("hello, I am text")
    with pytest.raises(DetlearnError, match=r"notes.root: not a ROOT file"):
        resolve_sources([str(bad)], None)


def test_truncated_root_file(tmp_path):
    good = write_flat(tmp_path / "good.root", n=5000)
    cut = tmp_path / "cut.root"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(
        DetlearnError, match=r"cut.root: cannot read ROOT file, truncated or corrupt"
    ):
        resolve_sources([str(cut)], None)


def test_missing_tree_lists_trees_present(tmp_path):
    path = write_flat(tmp_path / "f.root")
    with pytest.raises(
        DetlearnError, match=r"f.root: no tree 'events' \(trees in this file: Events\)"
    ):
        resolve_sources([str(path)], "events")


def test_tree_inferred_when_single_and_spec_syntax(tmp_path):
    path = write_flat(tmp_path / "f.root")
    (src,), failed = resolve_sources([str(path)], None)
    assert src.tree == "Events" and src.entries == 1000 and not failed
    (src,), _ = resolve_sources([f"{path}:Events"], "ignored-when-spec-names-one")
    assert src.tree == "Events"


def test_several_trees_need_a_name(tmp_path):
    path = tmp_path / "two.root"
    write_tree(path, "a", {"x": np.arange(3.0)})
    with uproot.update(path) as f:
        f["b"] = {"x": np.arange(3.0)}  # an RNTuple counts as a tree too
    with pytest.raises(DetlearnError, match=r"several trees \(a, b\)"):
        resolve_sources([str(path)], None)


def test_empty_tree(tmp_path):
    path = tmp_path / "empty.root"
    write_tree(path, "Events", {"x": np.zeros(0)})
    with pytest.raises(DetlearnError, match=r"empty.root: tree 'Events' is empty \(0 entries\)"):
        resolve_sources([str(path)], None)


def test_skip_lists_bad_file_and_keeps_good_one(tmp_path):
    good = write_flat(tmp_path / "good.root")
    bad = tmp_path / "bad.root"
    bad.write_bytes(b"\x00" * 100)
    sources, failed = resolve_sources([str(good), str(bad)], None, on_error="skip")
    assert [s.path for s in sources] == [str(good)]
    assert failed[0]["path"] == str(bad) and "not a ROOT file" in failed[0]["reason"]


def test_directory_expands_to_root_files_in_order(tmp_path):
    for name in ("b.root", "a.root", "c.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [p for p, _ in expand_inputs([str(tmp_path)])] == [
        str(tmp_path / "a.root"),
        str(tmp_path / "b.root"),
    ]


def test_work_items_cover_every_entry_once(tmp_path):
    sources, _ = resolve_sources([str(write_flat(tmp_path / "f.root", n=1001))], None)
    items = plan_work_items(sources, step_size=250)
    assert [(i.entry_start, i.entry_stop) for i in items] == [
        (0, 250),
        (250, 500),
        (500, 750),
        (750, 1000),
        (1000, 1001),
    ]
    assert len({i.key for i in items}) == len(items)


def test_missing_branch_lists_closest_names(tmp_path):
    sources, _ = resolve_sources([str(write_flat(tmp_path / "f.root"))], None)
    chunk = Chunk(plan_work_items(sources, 100)[0])
    with pytest.raises(
        DetlearnError, match=r"f.root: no branch 'pxx' in tree 'Events'; closest: px"
    ):
        chunk.arrays(["pxx"])
    assert len(chunk.arrays(["px", "hitE"])) == 100


def test_a_rewritten_file_is_read_anew(tmp_path):
    # Open trees are kept for the next chunk; a file written again must not be read from them.
    path = write_flat(tmp_path / "f.root", n=300, seed=1)
    first = Chunk(plan_work_items(resolve_sources([str(path)], None)[0], 1000)[0])
    px_before = first.arrays(["px"])["px"].to_numpy()
    write_flat(path, n=500, seed=2)
    sources, _ = resolve_sources([str(path)], None)
    assert sources[0].entries == 500
    px_after = Chunk(plan_work_items(sources, 1000)[0]).arrays(["px"])["px"].to_numpy()
    assert len(px_after) == 500
    assert not np.array_equal(px_after[:300], px_before)


def test_chunks_of_one_file_share_the_open_tree(tmp_path):
    sources, _ = resolve_sources([str(write_flat(tmp_path / "f.root", n=1000))], None)
    first, second = (Chunk(item) for item in plan_work_items(sources, 500))
    assert first.tree is second.tree
    assert len(first.arrays(["px"])) == len(second.arrays(["px"])) == 500
