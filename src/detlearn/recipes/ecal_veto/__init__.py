"""ecal-veto recipe: LDMX ECal hits of A′ signal and photonuclear background, for a CNN veto.

Layers:

- :mod:`.geometry`: the ldmx-det-v14 ECal as the simulator sees it (34 silicon layers, their
  depths in X₀ and layer weights, the hexagonal cells of the 7-module flower);
- :mod:`.simulate`: the sample simulator (:class:`EcalSimConfig`, :func:`simulate`), writing one
  ROOT file per sample in the original study's layout (tree ``ecalHits``: ``eventNumber``,
  ``nHits``, ``x, y, z`` [mm], ``E`` [MeV], with truth branches);
- :mod:`._kernels`: its compiled per-event loop (deposits summed per cell, readout, trigger).

Images of the hits for the CNN come from the core's :mod:`detlearn.data.images`.

Example:
    >>> files = simulate("sim", 200_000, seed=0)     # doctest: +SKIP
"""

from __future__ import annotations

from detlearn.recipes.ecal_veto.simulate import (
    BLOCK_EVENTS,
    DEFAULT_MASSES,
    ELECTRON_MASS,
    TOPOLOGIES,
    EcalEvents,
    EcalSimConfig,
    config_from_options,
    sample_file_name,
    simulate,
    simulate_block,
    simulate_sample,
    write_events,
)

__all__ = [
    "BLOCK_EVENTS",
    "DEFAULT_MASSES",
    "ELECTRON_MASS",
    "TOPOLOGIES",
    "EcalEvents",
    "EcalSimConfig",
    "config_from_options",
    "sample_file_name",
    "simulate",
    "simulate_block",
    "simulate_sample",
    "write_events",
]
