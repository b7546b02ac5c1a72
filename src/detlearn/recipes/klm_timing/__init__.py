"""klm-timing: photon arrival times in the ePIC KLM scintillator bar (DESIGN.md, "KLM timing").

- :mod:`.simulate`: the built-in bar simulator, writing ddsim's EDM4hep layout;
- :mod:`.density`: the simulator's exact photon-delay density (what makes KL measurable);
- :mod:`.features`: photon rows (context z, θ, |p|; target Δt) from ddsim or built-in files;
- :mod:`.evaluate`: the validation report against the simulator;
- :mod:`.fastsim`: a trained surrogate writing the simulator's files (``detlearn fastsim``).
"""

from __future__ import annotations

from pathlib import Path

from detlearn.recipes.base import Recipe
from detlearn.recipes.klm_timing.evaluate import evaluate
from detlearn.recipes.klm_timing.fastsim import fastsim
from detlearn.recipes.klm_timing.features import extract
from detlearn.recipes.klm_timing.simulate import KLMSimConfig, event_counts, simulate

__all__ = ["RECIPE", "evaluate", "extract", "fastsim", "simulate"]

RECIPE = Recipe(
    name="klm-timing",
    summary="EIC KLM bar: photon arrival-time surrogate p(dt | z, theta, |p|)",
    simulate=simulate,
    evaluate=evaluate,
    extract=extract,
    config=Path(__file__).with_name("recipe.yaml"),
    simulate_options=KLMSimConfig,
    # ~3.4 M photon rows. The count model learns from one row per event, so it is the events
    # that set its accuracy.
    demo_events=12_000,
    # Measured with the default options (zstd, 2,000 events a file) on 2 cores: 20,000 events
    # wrote 226.6 MB in 10 files in 4.0 s (11.3 kB an event: ~280 photon hits); a single file
    # of 20,000 events raised the peak memory by 2.13 GB, of 2,000 by 0.21 GB.
    event_bytes=11_300,
    held_event_bytes=107_000,
    events_per_second=5_000,
    event_counts=event_counts,
    # A fixed epoch budget, so the cosine schedule anneals fully (patience as long as the
    # budget: early stopping cut one demo at epoch 8, mid-schedule), over a 1.5 M-photon subset
    # of the training split (the count model sees every event).
    demo_overrides={"training": {"max_epochs": 20, "patience": 20, "max_rows": 1_500_000}},
    fastsim=fastsim,
)
