"""hcal-energy recipe: CMS HCAL HB/HE channel energy regression (FACILE), a DNN vs MAHI-lite.

Layers:

- :mod:`.simulate`: the channel simulator (:class:`HcalSimConfig`, :func:`generate_channels`),
  its pulse shape, time slew and QIE digitization, and ROOT ntuples in FACILE's layout
  (tree ``Events``: ``PU, depth, pt, ieta, iphi, gain, raw[8], ped[8], inNoiseADC[8],
  inNoisePhoto[8], genE, energy, eraw``);
- :mod:`.baselines`: the reconstructions to beat, :func:`mahi_lite` (``energy``) and
  :func:`m0` (``eraw``), on the exact batched solver :func:`batched_nnls` and the
  jitter-averaged pulse templates :func:`template_fractions`.

- :mod:`.evaluate`: FACILE's response and resolution per (PU, pT) bin, DNN vs both.

The data path is config-only (``recipe.yaml``: the 36 model inputs as branch expressions, target
``genE``, FACILE's selection ``genE > 0.1``).

Example:
    >>> files = simulate("sim", 1_000_000, seed=0)     # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from detlearn.recipes.base import Recipe
from detlearn.recipes.hcal_energy.baselines import (
    ACTIVE_BX,
    MahiResult,
    batched_nnls,
    m0,
    mahi_lite,
    template_fractions,
)
from detlearn.recipes.hcal_energy.config import (
    SAMPLES,
    SOI,
    TS_NS,
    HcalSimConfig,
    config_from_options,
)
from detlearn.recipes.hcal_energy.evaluate import evaluate
from detlearn.recipes.hcal_energy.pulse import (
    pulse_density,
    pulse_fractions,
    pulse_shape,
    pulse_survival,
    time_slew,
)
from detlearn.recipes.hcal_energy.simulate import (
    BRANCHES,
    ETA_EDGES,
    MAX_DEPTH,
    HcalChannels,
    event_counts,
    generate_channels,
    qie_quantize,
    simulate,
    tower_eta,
    write_channels,
)

__all__ = [
    "ACTIVE_BX",
    "BRANCHES",
    "ETA_EDGES",
    "MAX_DEPTH",
    "RECIPE",
    "SAMPLES",
    "SOI",
    "TS_NS",
    "HcalChannels",
    "HcalSimConfig",
    "MahiResult",
    "batched_nnls",
    "config_from_options",
    "evaluate",
    "generate_channels",
    "m0",
    "mahi_lite",
    "pulse_density",
    "pulse_fractions",
    "pulse_shape",
    "pulse_survival",
    "qie_quantize",
    "simulate",
    "template_fractions",
    "time_slew",
    "tower_eta",
    "write_channels",
]

RECIPE = Recipe(
    name="hcal-energy",
    summary="CMS HCAL channel energy regression (FACILE): DNN vs MAHI-lite",
    simulate=simulate,
    evaluate=evaluate,
    config=Path(__file__).with_name("recipe.yaml"),
    simulate_options=HcalSimConfig,
    demo_events=1_000_000,
    # Measured with the default options (lz4, 200,000 channels a file): 2,000,000 channels wrote
    # 216.0 MB in 10 files (108 bytes a channel); a single file of 2,000,000 channels raised the
    # peak memory by 382 MB, of 200,000 by 59 MB. The rate: benchmarks/RESULTS.md
    # (hcal_simulate, lz4, 2 cores: 1.22 M channels/s).
    event_bytes=108,
    held_event_bytes=180,
    events_per_second=1_220_000,
    event_counts=event_counts,
)
