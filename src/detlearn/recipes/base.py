"""The :class:`Recipe` record: what a workflow's physics brings to the core.

A recipe is plain data: its functions are attributes, so nothing is looked up by name. Each
recipe package defines one ``RECIPE`` and :mod:`detlearn.recipes` lists them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from pydantic import BaseModel

from detlearn.config import read_yaml
from detlearn.io.sources import Chunk
from detlearn.report import Section

__all__ = ["Compare", "Evaluate", "EventCounts", "Extract", "FastSim", "Recipe", "Simulate"]


class Simulate(Protocol):
    """``simulate(out_dir, events, seed, options) -> files``: ROOT files in the real layout."""

    def __call__(
        self, out_dir: str | Path, events: int, seed: int, options: Mapping[str, Any] | None
    ) -> list[Path]: ...


class EventCounts(Protocol):
    """``event_counts(events, options) -> (written, held)``: the events ``simulate(events)``
    writes in all, and the most it holds in memory at once, with the validated ``options``."""

    def __call__(self, events: int, options: Any) -> tuple[int, int]: ...


class Evaluate(Protocol):
    """``evaluate(run_dir, out_dir, sections, seed) -> report.html``: the recipe's validation
    suite against its simulator, with the family's generic ``sections`` after its own."""

    def __call__(
        self,
        run_dir: str | Path,
        out_dir: str | Path,
        sections: Sequence[Section] = (),
        seed: int = 0,
    ) -> Path: ...


#: ``extract(chunk, data) -> columns``: the rows of one work item (a file's entry range).
Extract = Callable[[Chunk, Any], dict[str, np.ndarray]]


class FastSim(Protocol):
    """``fastsim(run_dir, out_dir, events, seed, contexts) -> files``: a trained run writes
    simulation files in the layout the simulator writes (events drawn as the simulator draws
    them, or one per row of a ``contexts`` file)."""

    def __call__(
        self,
        run_dir: str | Path,
        out_dir: str | Path,
        events: int | None = None,
        seed: int = 0,
        contexts: str | Path | None = None,
    ) -> list[Path]: ...


#: ``compare(reports, out_dir) -> report.html``: the demo's models side by side, from their
#: reports (variant name -> its report.html).
Compare = Callable[[Mapping[str, Path], Path], Path]


@dataclass(frozen=True)
class Recipe:
    """A workflow's physics.

    Attributes:
        name: the recipe's name in configs and on the command line.
        summary: one line for ``detlearn recipes``.
        simulate: the built-in simulator.
        evaluate: the validation suite against the simulator.
        config: the recipe's default run config (``recipe.yaml``).
        simulate_options: the pydantic model of the config's ``simulate`` section.
        demo_events: events ``detlearn demo`` simulates.
        event_bytes: compressed bytes one simulated event takes in the simulator's files
            (measured with the default options).
        held_event_bytes: memory [bytes] per event the simulator holds at once (the growth of
            its peak memory per event held).
        events_per_second: the simulator's rate on 2 CPU cores, files written.
        event_counts: the events written in all and held at once for ``--events``.
        extract: the extractor of ``data.extractor: <name>``; None: the config's branch
            expressions do it.
        demo_overrides: config overrides of the demo.
        variants: models the demo trains side by side (name -> config overrides), each its
            own run, report and export; empty: one model.
        compare: the report comparing the variants.
        fastsim: the trained surrogate in the chain (``detlearn fastsim``); None: the recipe's
            runs do not write simulation files.
    """

    name: str
    summary: str
    simulate: Simulate
    evaluate: Evaluate
    config: Path
    simulate_options: type[BaseModel]
    demo_events: int
    event_bytes: float
    held_event_bytes: float
    events_per_second: float
    event_counts: EventCounts
    extract: Extract | None = None
    demo_overrides: Mapping[str, Any] = field(default_factory=dict)
    variants: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    compare: Compare | None = None
    fastsim: FastSim | None = None

    def default_config(self) -> dict[str, Any]:
        """The recipe's default run config (its ``recipe.yaml``) as a dict."""
        return read_yaml(self.config) or {}
