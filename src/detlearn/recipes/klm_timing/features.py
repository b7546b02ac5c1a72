"""KLM features: one row per optical-photon hit, from ddsim (or built-in) EDM4hep files.

Per event the primary (MCParticles entry 0) gives the context of its photons:

- ``theta`` = arccos(p_z / |p|) [rad], ``p`` = |p| [GeV];
- ``z`` [mm]: where the straight track crosses the reference plane x = ``reference_x``
  (default the bar mid-plane, 1775.3 mm, where Geant4 records the muon's hit);
- ``t_hit`` [ns]: the primary's time plus the flight time to that plane, path / (β c) with
  β = |p| / sqrt(|p|² + m²) (exact kinematics; the original code used p_x for |p|).

Each photon hit (linked MCParticle with PDG -22) gives the target ``dt = t_photon - t_hit``
[ns]. Observers: ``event`` (entry number, the split group), ``n_photons`` in the event,
``edep`` [GeV] (energy of the non-photon hits, 0 when the file records none), and ``photon``
(1 for a photon row, 0 for the single placeholder row that keeps an event with no photon hit,
so photon counts N = 0 are not lost; placeholder rows have ``dt`` = 0 and weight 0).

A collection with no optical photon at all (a file simulated without optical physics, or
another collection) is an error naming the PDG codes its hits have, not a dataset of
placeholder rows.

The hit collection may be a tracker's (SimTrackerHit: one hit per photon reaching the sensor,
linked to the photon's MCParticle) or, as ddsim writes a calorimeter's sensitive detector, a
calorimeter's (SimCalorimeterHit, EPIC's ``HcalBarrelHits`` with
``HcalBarrelHitsContributions``; :mod:`detlearn.io.edm4hep` tells them apart). There every
CaloHitContribution is one deposit with its own time: a contribution whose own PDG is -22 is
one optical photon detected at that time (its ``dt`` row), the others (the muon's deposit) add
to ``edep``. The contribution's PDG decides, not its MCParticle's: ddsim links a contribution
of a particle it did not keep, such as an optical photon, to its nearest kept ancestor, the
muon, so neither the photon's vertex nor its time are known and the causality check is skipped.

Causality: no photon can reach the sensor before t_made + d n_g / c, d the distance from where
it was made (its MCParticle's vertex and time) to where it was detected (the hit's position).
In Geant4 11.4 a photon reflected at a boundary takes the group velocity of the volume across
it, c where that volume has no GROUPVEL: in a wrapped bar photons then run at ~c after their
first bounce, and a surrogate would learn arrival times earlier than physics allows. Photons
arriving more than 5 σ (``jitter``) before that bound are counted; above 0.1 % of the photons,
``prepare`` warns once for the dataset (or, with ``causality: error``, stops with
:class:`AcausalPhotonsError` naming the file).

``data.options``: ``collection`` (default ``HcalBarrelHits``), ``particles``
(``MCParticles``), ``reference_x`` (1775.3 mm), ``causality`` (``warn``, ``error`` or
``off``), ``group_index`` (n_g of the scintillator, 1.61) and ``jitter`` (the time resolution
σ in the files' hit times, 0.1 ns).
"""

from __future__ import annotations

from typing import Any

import awkward as ak
import numpy as np

from detlearn.config import DataConfig
from detlearn.errors import DetlearnError
from detlearn.io.edm4hep import detect_schema, read_hits, read_particles
from detlearn.io.sources import Chunk, Tally

__all__ = [
    "C_MM_PER_NS",
    "OPTICAL_PHOTON_PDG",
    "OPTIONS",
    "AcausalPhotonsError",
    "acausal",
    "extract",
    "primary_context",
]

C_MM_PER_NS = 299.792458
OPTICAL_PHOTON_PDG = -22
#: ``data.options`` of the extractor and their defaults (module docstring).
OPTIONS: dict[str, Any] = {
    "collection": "HcalBarrelHits",
    "particles": "MCParticles",
    "reference_x": 1775.3,
    "causality": "warn",
    "group_index": 1.61,
    "jitter": 0.1,
}
# A photon counts as too early beyond this many jitter σ before the bound; the check reports
# more than this fraction of such photons.
_JITTER_SIGMAS = 5.0
_ACAUSAL_FRACTION = 1e-3
_ACAUSAL = (
    "{files}: {fraction:.1%} of optical photons ({count:,} of {total:,}) reach the sensor "
    "before light could from where they were made (distance × n_g / c, less 5 σ of jitter): "
    "likely Geant4 giving a photon reflected at a boundary the speed of the volume across it "
    "(c where it has no GROUPVEL); give every volume touching the scintillator the bar's "
    "GROUPVEL, or time photons by their track length"
)


class AcausalPhotonsError(DetlearnError):
    """Optical photons arrive before light could reach the sensor (``causality: error``)."""


def primary_context(
    vertex: np.ndarray, momentum: np.ndarray, mass: np.ndarray, time: np.ndarray, reference_x: float
) -> dict[str, np.ndarray]:
    """Context of each event's primary at the plane x = ``reference_x`` [mm].

    Args:
        vertex: (N, 3) production vertex [mm]. momentum: (N, 3) [GeV]. mass: (N,) [GeV].
        time: (N,) production time [ns].

    Returns:
        ``z`` [mm], ``theta`` [rad], ``p`` [GeV] and ``t_hit`` [ns] per event.

    Example:
        >>> c = primary_context(np.array([[1769.3, 0, 0]]), np.array([[1.0, 0, 0]]),
        ...                     np.array([0.1056584]), np.zeros(1), 1775.3)
        >>> round(float(c["t_hit"][0]), 5)   # 6 mm at beta = 0.99446
        0.02013
    """
    p = np.sqrt((momentum**2).sum(axis=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        theta = np.arccos(momentum[:, 2] / p)
        # Straight line to the plane: parameter s with vertex_x + s * p_x = reference_x.
        s = (reference_x - vertex[:, 0]) / momentum[:, 0]
        z = vertex[:, 2] + s * momentum[:, 2]
        beta = p / np.sqrt(p**2 + mass**2)
        t_hit = time + s * p / (beta * C_MM_PER_NS)
    return {"z": z, "theta": theta, "p": p, "t_hit": t_hit}


# A chunk of this many events without one photon is not the ~0.7 % of muons that give none:
# the file holds no optical photons. (So does the first chunk of a file; a short last chunk
# without photons is left to the file's other chunks.)
_MIN_EVENTS_WITHOUT_PHOTONS = 10


def _no_photons(pdg: ak.Array, which: str, collection: str, where: str) -> str:
    """The error for a chunk whose hits include no optical photon: what the hits are (``pdg``
    per event, ``which`` PDG it is)."""
    codes, count = np.unique(ak.to_numpy(ak.flatten(pdg)), return_counts=True)
    order = np.argsort(-count)[:5]
    found = ", ".join(f"PDG {codes[i]}: {count[i]:,} hits" for i in order) or "no hits at all"
    more = f" and {len(codes) - 5} more PDG codes" if len(codes) > 5 else ""
    return (
        f"{where}: collection '{collection}' holds no optical-photon hit ({which} PDG "
        f"{OPTICAL_PHOTON_PDG}) in {len(pdg):,} events; found {found}{more} (optical physics "
        "off in the simulation, or the wrong collection in data.options.collection?)"
    )


def acausal(photons: ak.Array, group_index: float, jitter: float) -> np.ndarray:
    """Per photon hit (flattened): it reaches the sensor more than 5 ``jitter`` σ [ns] before
    t_made + d n_g / c, d [mm] from its MCParticle's vertex to the hit's position.

    Args:
        photons: hits with ``time``, ``position_{x,y,z}`` and their photon's ``particle_time``
            and ``particle_vertex_{x,y,z}`` (as :func:`~detlearn.io.edm4hep.read_hits` gives).

    Example:
        >>> hits = ak.Array([[{"time": t, "position_x": 0.0, "position_y": 0.0,
        ...     "position_z": 750.0, "particle_time": 1.0, "particle_vertex_x": 0.0,
        ...     "particle_vertex_y": 0.0, "particle_vertex_z": 0.0} for t in (2.0, 5.1)]])
        >>> acausal(hits, 1.61, 0.1).tolist()   # 750 mm at c/1.61 take 4.03 ns
        [True, False]
    """

    def flat(name: str) -> np.ndarray:
        return ak.to_numpy(ak.flatten(photons[name])).astype(np.float64)

    offset = np.stack([flat(f"position_{c}") - flat(f"particle_vertex_{c}") for c in "xyz"])
    distance = np.sqrt((offset**2).sum(axis=0))
    earliest = flat("particle_time") + distance * group_index / C_MM_PER_NS
    return flat("time") < earliest - _JITTER_SIGMAS * jitter


def _options(data: DataConfig) -> dict[str, Any]:
    """``data.options`` over :data:`OPTIONS`, checked."""
    opts = {**OPTIONS, **data.options}
    unknown = set(opts) - set(OPTIONS)
    if unknown:
        raise DetlearnError(f"data.options: unknown key '{sorted(unknown)[0]}' for klm-timing")
    if opts["causality"] not in ("warn", "error", "off"):
        raise DetlearnError(
            f"data.options.causality: '{opts['causality']}' is not one of warn, error, off"
        )
    return opts


def _check_causality(photons: ak.Array, opts: dict[str, Any], chunk: Chunk) -> None:
    """Count the photons that arrive too early: an error (``causality: error``) or a tally
    prepare reports once for the dataset."""
    early = acausal(photons, float(opts["group_index"]), float(opts["jitter"]))
    count, total = int(early.sum()), len(early)
    if opts["causality"] == "error" and count > _ACAUSAL_FRACTION * total:
        raise AcausalPhotonsError(
            _ACAUSAL.format(files=chunk.path, fraction=count / total, count=count, total=total)
        )
    chunk.tallies["acausal_photons"] = Tally(
        count,
        total,
        _ACAUSAL_FRACTION,
        _ACAUSAL + " (data.options.causality: error stops prepare here, off skips the check)",
    )


def _check_placeholder_weight(events: int, data: DataConfig, where: str) -> None:
    """Placeholder rows (``dt`` = 0 for ``events`` events without a photon) must reach the
    dataset with their weight 0: a config that drops the ``photon`` weight would have the flow
    train on them as photons at dt = 0."""
    spec = data.columns.get("photon")
    if events and (spec is None or spec.role != "weight"):
        raise DetlearnError(
            f"{where}: {events} event(s) without a photon hit keep a placeholder row (dt = 0), "
            "which only data.columns.photon with role 'weight' keeps out of the flow's "
            "training; restore 'photon: {role: weight}'"
        )


def extract(chunk: Chunk, data: DataConfig) -> dict[str, np.ndarray]:
    """Photon rows of one work item (see the module docstring for the columns)."""
    opts = _options(data)
    start, stop = chunk.item.entry_start, chunk.item.entry_stop
    fields = ("PDG", "mass", "time", "vertex.x", "vertex.y", "vertex.z")
    fields += ("momentum.x", "momentum.y", "momentum.z")
    particles = read_particles(
        chunk.tree, start, stop, fields, particles=opts["particles"], where=chunk.path
    )
    if ak.any(ak.num(particles["PDG"]) == 0):
        raise DetlearnError(
            f"{chunk.path}: an event has no MCParticles (no primary to condition on)"
        )
    primary = particles[:, 0]

    def col(name: str) -> np.ndarray:
        return ak.to_numpy(primary[name]).astype(np.float64)

    vertex = np.stack([col("vertex_x"), col("vertex_y"), col("vertex_z")], axis=1)
    momentum = np.stack([col("momentum_x"), col("momentum_y"), col("momentum_z")], axis=1)
    ctx = primary_context(vertex, momentum, col("mass"), col("time"), float(opts["reference_x"]))

    # A calorimeter's contributions carry their own PDG (module docstring).
    calorimeter = detect_schema(
        chunk.keys(), opts["collection"], opts["particles"], chunk.path
    ).calorimeter
    check = opts["causality"] != "off" and not calorimeter
    hits, _ = read_hits(
        chunk.tree,
        opts["collection"],
        start,
        stop,
        hit_fields=("time", "eDep")
        + (("PDG",) if calorimeter else ())
        + (("position.x", "position.y", "position.z") if check else ()),
        particle_fields=("PDG",) + (("time", "vertex.x", "vertex.y", "vertex.z") if check else ()),
        particles=opts["particles"],
        where=chunk.path,
    )
    pdg = hits["PDG"] if calorimeter else hits["particle_PDG"]
    is_photon = pdg == OPTICAL_PHOTON_PDG
    photon_times = hits["time"][is_photon]
    n_photons = ak.to_numpy(ak.num(photon_times)).astype(np.int64)
    if not n_photons.any() and (start == 0 or len(n_photons) >= _MIN_EVENTS_WITHOUT_PHOTONS):
        which = "contribution" if calorimeter else "linked MCParticle"
        raise DetlearnError(_no_photons(pdg, which, opts["collection"], chunk.where))
    if check:
        _check_causality(hits[is_photon], opts, chunk)
    edep = ak.to_numpy(ak.sum(hits["eDep"][~is_photon], axis=1)).astype(np.float64)

    # One row per photon, plus one placeholder row for an event without photons.
    _check_placeholder_weight(int(np.sum(n_photons == 0)), data, chunk.where)
    rows_per_event = np.maximum(n_photons, 1)
    event_of_row = np.repeat(np.arange(len(n_photons)), rows_per_event)
    dt = np.zeros(len(event_of_row))
    photon = np.zeros(len(event_of_row), dtype=np.int8)
    has = n_photons[event_of_row] > 0
    dt[has] = (
        ak.to_numpy(ak.flatten(photon_times)).astype(np.float64) - ctx["t_hit"][event_of_row[has]]
    )
    photon[has] = 1
    return {
        "z": ctx["z"][event_of_row],
        "theta": ctx["theta"][event_of_row],
        "p": ctx["p"][event_of_row],
        "dt": dt,
        "event": (start + event_of_row).astype(np.int64),
        "n_photons": n_photons[event_of_row],
        "edep": edep[event_of_row],
        "photon": photon,
    }
