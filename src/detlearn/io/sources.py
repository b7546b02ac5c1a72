"""ROOT inputs: resolve file specs, open trees with clear errors, cut them into work items.

A work item is one (file, tree, entry range); it becomes one dataset shard. Reading is done
with uproot in entry ranges and only for the branches asked for.

Example:
    >>> sources = resolve_sources(["sim/*.root"], tree=None)        # doctest: +SKIP
    >>> items = plan_work_items(sources, step_size=100_000)         # doctest: +SKIP
    >>> Chunk(items[0]).arrays(["MCParticles.PDG"])                 # doctest: +SKIP
"""

from __future__ import annotations

import difflib
import functools
import glob
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import awkward as ak
import uproot

from detlearn.config import InputSpec
from detlearn.errors import DetlearnError

__all__ = [
    "Chunk",
    "Source",
    "Tally",
    "WorkItem",
    "closest",
    "expand_inputs",
    "open_tree",
    "plan_work_items",
    "resolve_sources",
]


@dataclass(frozen=True)
class Source:
    """One input file and the tree read from it."""

    path: str
    tree: str
    entries: int
    size: int
    mtime: float
    #: Columns of constant value on every row of this file (``data.inputs[].columns``).
    constants: tuple[tuple[str, float], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return asdict(self)


@dataclass(frozen=True)
class WorkItem:
    """An entry range [entry_start, entry_stop) of one source."""

    source: Source
    entry_start: int
    entry_stop: int

    @property
    def key(self) -> str:
        """A file-system-safe, deterministic name for this item's shard."""
        stem = Path(self.source.path).name.split(".")[0]
        digest = _path_digest(self.source.path)
        return f"{stem}-{digest}-{self.entry_start:012d}-{self.entry_stop:012d}"

    @property
    def where(self) -> str:
        """Human-readable location for error messages."""
        return f"{self.source.path}:{self.source.tree}[{self.entry_start}:{self.entry_stop}]"


def _path_digest(path: str) -> str:
    return hashlib.sha1(str(Path(path).resolve()).encode()).hexdigest()[:8]


def closest(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """The ``n`` candidates spelled most like ``name`` (for 'did you mean' hints)."""
    candidates = list(candidates)
    found = difflib.get_close_matches(name, candidates, n=n, cutoff=0.4)
    if len(found) < n:
        lowered = name.lower()
        found += [c for c in candidates if lowered in c.lower() and c not in found][
            : n - len(found)
        ]
    return found


def expand_inputs(specs: Sequence[str]) -> list[tuple[str, str | None]]:
    """Expand file specs into (path, tree-or-None) pairs, in a stable order.

    A spec is a file, a glob, a directory (all ``*.root`` below it) or ``path.root:tree``.
    A spec that matches nothing is an error naming it.
    """
    out: list[tuple[str, str | None]] = []
    for spec in specs:
        path_part, tree = spec, None
        if ".root:" in spec:
            path_part, tree = spec.rsplit(":", 1)
        p = Path(path_part)
        if p.is_dir():
            matches = sorted(str(f) for f in p.rglob("*") if f.suffix.lower() == ".root")
            if not matches:
                raise DetlearnError(f"{p}: directory contains no .root files")
        elif any(ch in path_part for ch in "*?["):
            matches = sorted(glob.glob(path_part, recursive=True))
            if not matches:
                raise DetlearnError(f"{path_part}: no file matches this pattern")
        else:
            if not p.exists():
                raise DetlearnError(f"{p}: file not found")
            matches = [str(p)]
        out.extend((m, tree) for m in matches)
    seen: set[str] = set()
    return [(m, t) for m, t in out if not (m in seen or seen.add(m))]


def _open_file(path: str) -> uproot.ReadOnlyDirectory:
    if not Path(path).is_file():
        raise DetlearnError(f"{path}: file not found")
    with open(path, "rb") as fh:
        header = fh.read(20)
    if header[:4] != b"root":
        raise DetlearnError(f"{path}: not a ROOT file (it starts with {header[:4]!r}, not b'root')")
    # The header records where the file ends (fEND); a shorter file was cut off in writing.
    version = int.from_bytes(header[4:8], "big")
    end = int.from_bytes(header[12:20] if version >= 1_000_000 else header[12:16], "big")
    size = Path(path).stat().st_size
    if len(header) < 20 or end > size:
        raise DetlearnError(
            f"{path}: cannot read ROOT file, truncated or corrupt ({size} bytes on disk, "
            f"the header says {end})"
        )
    try:
        # Memory-mapped: baskets are read in place, without the copies and the event-loop thread
        # of uproot's default (fsspec) source for local files; about 5% less time (measured).
        return uproot.open(path, handler=uproot.source.file.MemmapSource)
    except Exception as err:
        raise DetlearnError(
            f"{path}: cannot read ROOT file, truncated or corrupt ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:120] if str(err) else 'no detail'})"
        ) from None


TREE_CLASSES = ("TTree", "ROOT::RNTuple")


def _trees(directory: uproot.ReadOnlyDirectory) -> list[str]:
    """Names of the TTrees (and RNTuples, which uproot reads the same way) in a file."""
    names = directory.classnames(recursive=True, cycle=False)
    return sorted({name for name, cls in names.items() if cls in TREE_CLASSES})


def open_tree(path: str, tree: str | None) -> uproot.TTree:
    """Open ``tree`` in ``path`` (inferred when the file holds exactly one tree or RNTuple).

    The last few trees opened stay open, keyed by path, size and modification time: the chunks
    of one file then share the tree's metadata instead of reading it again for every chunk.
    """
    try:
        stat = Path(path).stat()
    except OSError:
        raise DetlearnError(f"{path}: file not found") from None
    return _open_tree(path, tree, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _open_tree(path: str, tree: str | None, size: int, mtime_ns: int) -> uproot.TTree:
    directory = _open_file(path)
    trees = _trees(directory)
    if tree is None:
        if len(trees) == 1:
            tree = trees[0]
        elif not trees:
            raise DetlearnError(f"{path}: file contains no TTree")
        else:
            raise DetlearnError(
                f"{path}: several trees ({', '.join(trees)}); name one with 'file.root:tree' "
                "or data.tree"
            )
    if tree not in trees:
        present = ", ".join(trees) if trees else "none"
        raise DetlearnError(f"{path}: no tree '{tree}' (trees in this file: {present})")
    try:
        return directory[tree]
    except Exception as err:
        raise DetlearnError(
            f"{path}: tree '{tree}' cannot be read, truncated or corrupt ({type(err).__name__})"
        ) from None


def _describe(path: str, tree: str | None) -> Source:
    t = open_tree(path, tree)
    if t.num_entries == 0:
        raise DetlearnError(f"{path}: tree '{t.name}' is empty (0 entries)")
    stat = Path(path).stat()
    return Source(
        str(Path(path).resolve()), t.name, int(t.num_entries), stat.st_size, stat.st_mtime
    )


def resolve_sources(
    specs: Sequence[str | InputSpec], tree: str | None, on_error: str = "stop"
) -> tuple[list[Source], list[dict[str, str]]]:
    """Open every input and return its sources, plus ``{path, reason}`` for failed files.

    A spec is a string (see :func:`expand_inputs`) or an :class:`~detlearn.config.InputSpec`
    whose constant columns its sources carry. A file reached twice (two spellings, a
    symbolic link, two globs) is read once; twice with different constant columns is an error.
    With ``on_error="stop"`` the first bad file raises; with ``"skip"`` it is listed as failed.
    """
    if not specs:
        raise DetlearnError("data.inputs: no input files given")
    sources: list[Source] = []
    failed: list[dict[str, str]] = []
    constants_of: dict[str, tuple[tuple[str, float], ...]] = {}
    for spec in specs:
        text = spec if isinstance(spec, str) else spec.path
        constants = () if isinstance(spec, str) else tuple(sorted(spec.columns.items()))
        for path, spec_tree in expand_inputs([text]):
            real = str(Path(path).resolve())
            if real in constants_of:
                if constants_of[real] != constants:
                    raise DetlearnError(
                        f"{path}: listed twice in data.inputs with different columns "
                        f"({dict(constants_of[real])} and {dict(constants)})"
                    )
                continue
            constants_of[real] = constants
            try:
                sources.append(replace(_describe(path, spec_tree or tree), constants=constants))
            except DetlearnError as err:
                if on_error != "skip":
                    raise
                failed.append({"path": path, "reason": str(err)})
    return sources, failed


def plan_work_items(sources: Sequence[Source], step_size: int) -> list[WorkItem]:
    """Cut every source into entry ranges of at most ``step_size`` entries."""
    return [
        WorkItem(src, start, min(start + step_size, src.entries))
        for src in sources
        for start in range(0, src.entries, step_size)
    ]


@dataclass(frozen=True)
class Tally:
    """A condition an extractor counted in one work item, for ``prepare`` to report once for the
    whole dataset: ``count`` of ``total`` (rows, hits, ...) meet it. Where the summed fraction
    passes ``threshold``, prepare warns once with ``message`` formatted with ``fraction``,
    ``count``, ``total`` and ``files`` (the files whose own fraction passes it)."""

    count: int
    total: int
    threshold: float
    message: str


class Chunk:
    """A work item opened for reading: only the branches asked for, only its entry range.

    An extractor may leave :class:`Tally` records in ``tallies`` (name -> tally); prepare keeps
    them with the shard.
    """

    def __init__(self, item: WorkItem) -> None:
        self.item = item
        self._tree: uproot.TTree | None = None
        self.tallies: dict[str, Tally] = {}

    @property
    def tree(self) -> uproot.TTree:
        """The open uproot tree (opened on first use)."""
        if self._tree is None:
            self._tree = open_tree(self.item.source.path, self.item.source.tree)
            # The open file is shared with earlier chunks; its array cache must not keep their
            # arrays alive (a fresh file per chunk used to drop them).
            self._tree.file.array_cache.clear()
        return self._tree

    @property
    def where(self) -> str:
        """Location for error messages: ``file:tree[start:stop]``."""
        return self.item.where

    @property
    def path(self) -> str:
        """Path of the source file."""
        return self.item.source.path

    def keys(self) -> list[str]:
        """All branch names of the tree (leaf names, e.g. ``MCParticles.PDG``)."""
        if isinstance(self.tree, uproot.TTree):
            return list(self.tree.keys(recursive=True, full_paths=False))
        return list(self.tree.keys())

    def check_branches(self, branches: Iterable[str]) -> None:
        """Raise a clear error for the first branch that is not in the tree."""
        keys = set(self.keys())
        for name in branches:
            if name not in keys:
                hint = closest(name, keys)
                near = f"; closest: {', '.join(hint)}" if hint else ""
                raise DetlearnError(
                    f"{self.path}: no branch '{name}' in tree '{self.tree.name}'{near}"
                )

    def arrays(self, branches: Sequence[str]) -> ak.Array:
        """Read ``branches`` over this chunk's entry range as one awkward record array."""
        self.check_branches(branches)
        try:
            return self.tree.arrays(
                list(branches),
                entry_start=self.item.entry_start,
                entry_stop=self.item.entry_stop,
                library="ak",
            )
        except DetlearnError:
            raise
        except Exception as err:
            raise DetlearnError(
                f"{self.path}: cannot read branches {', '.join(branches)} in entries "
                f"[{self.item.entry_start}, {self.item.entry_stop}): "
                f"{type(err).__name__} (truncated or corrupt file?)"
            ) from None
