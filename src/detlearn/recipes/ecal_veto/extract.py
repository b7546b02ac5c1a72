"""ECal-veto rows: one row per event, its hits as variable-length lists.

Reads the original study's layout (tree ``ecalHits``): per event ``eventNumber``, ``nHits`` and
jagged ``x, y, z`` [mm] and ``E`` [MeV]; ``layer`` when the file has it, else the silicon layer
nearest to each hit's z (ldmx-det-v14). The sample's ``label`` (1 signal, 0 background) and A′
``mass`` [MeV] come from the config (``data.inputs: [{path, columns: {label, mass}}]``); files
of the built-in simulator also carry them as truth branches, which are read when the config
does not set them, with the other truth branches as observers.

An event with no hits is a row with empty lists (a valid, empty image), never dropped. Jagged
branches whose lengths disagree, in any event, are an error naming the first such event and the
branches.
"""

from __future__ import annotations

import awkward as ak
import numpy as np

from detlearn.config import DataConfig
from detlearn.errors import DetlearnError
from detlearn.io.sources import Chunk
from detlearn.recipes.ecal_veto.geometry import LAYER_Z

__all__ = ["HIT_BRANCHES", "TRUTH_BRANCHES", "extract"]

#: The per-hit branches every file must have, and the optional one.
HIT_BRANCHES = ("x", "y", "z", "E")
#: Per-event truth branches the built-in simulator writes (read when present).
TRUTH_BRANCHES = (
    "label",
    "mass",
    "recoilE",
    "recoilTheta",
    "recoilPhi",
    "pnDepth",
    "pnTopology",
)


def _nearest_layer(z: ak.Array) -> ak.Array:
    """The silicon layer index nearest to each hit's z [mm], as lists like z."""
    flat = ak.to_numpy(ak.flatten(z)).astype(np.float64)
    centres = np.asarray(LAYER_Z, dtype=np.float64)
    upper = np.searchsorted(centres, flat).clip(1, len(centres) - 1)
    nearer_lower = flat - centres[upper - 1] < centres[upper] - flat
    return ak.unflatten((upper - nearer_lower).astype(np.int32), ak.num(z))


def extract(chunk: Chunk, data: DataConfig) -> dict[str, object]:
    """One row per event of the chunk: ``event``, hit lists ``x, y, z, E, layer`` and what
    the file holds of the truth (see the module docstring)."""
    keys = set(chunk.keys())
    constant = {name for name, _ in chunk.item.source.constants}
    optional = ["layer"] if "layer" in keys else []
    truth = [b for b in TRUTH_BRANCHES if b in keys and b not in constant]
    arrays = chunk.arrays(["eventNumber", "nHits", *HIT_BRANCHES, *optional, *truth])
    n_hits = ak.to_numpy(arrays["nHits"]).astype(np.int64)
    for name in (*HIT_BRANCHES, *optional):
        lengths = ak.to_numpy(ak.num(arrays[name]))
        bad = np.flatnonzero(lengths != n_hits)
        if len(bad):
            i = int(bad[0])
            raise DetlearnError(
                f"{chunk.where}: event {int(arrays['eventNumber'][i])}: branch '{name}' has "
                f"{int(lengths[i])} hits, nHits says {int(n_hits[i])} ({len(bad)} such events)"
            )
    rows: dict[str, object] = {
        "event": ak.to_numpy(arrays["eventNumber"]).astype(np.int64),
        **{name: ak.values_astype(arrays[name], np.float32) for name in HIT_BRANCHES},
        "layer": (
            ak.values_astype(arrays["layer"], np.int32) if optional else _nearest_layer(arrays["z"])
        ),
    }
    rows |= {name: ak.to_numpy(arrays[name]) for name in truth}
    return rows
