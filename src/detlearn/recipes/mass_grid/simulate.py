"""Built-in simulator of the FEDHEX mass grid: one ROOT ntuple per generated (m_Φ, m_ω) point.

The files have the layout of the Rutgers CMS two-prong NanoAOD ntuples FEDHEX reads (tree
``Events``), so the ``mass-grid`` recipe reads them with the same expressions and selection:

=================================  ===========================================================
branch                             content
=================================  ===========================================================
``CBL_RecoPhi_mass``               m_Φ,reco [GeV]; −1 when the event has no Φ candidate
``TwoProng_massPi0`` (+ count)     two-prong masses with the π⁰ hypothesis [GeV]: the element
                                   ``CBL_RecoPhi_twoprongindex`` is m_ω,reco, the others are
                                   decoys (threshold + Exp(1 GeV))
``CBL_RecoPhi_twoprongindex``      index of the candidate's two-prong; −1: no candidate
``Photon_pt`` (+ count)            photon pT [GeV], sorted descending; decoys 20 + Exp(30 GeV)
``CBL_RecoPhi_photonindex``        index of the candidate's photon; −1: no candidate
``CBL_Region``                     1 signal region, 2 another region, 0 no candidate
``GenPhi_mass``, ``GenOmega_mass`` generated masses [GeV], one element each (the label)
=================================  ===========================================================

Every generated event gets (m_Φ,reco, m_ω,reco) from :func:`~.density.sample_reco`. It passes
``(CBL_Region == 1) & (Photon_pt[CBL_RecoPhi_photonindex] > photon_pt_cut)`` with probability
:func:`~.density.acceptance` (label only); a rejected event has no candidate, lies in region 2,
or has its photon below the cut. Acceptance and reconstructed masses are independent given the
label, so the selected events follow :func:`~.density.log_density` exactly. Masses are stored
as float64 so that no stored m_ω,reco rounds below the threshold.

Example:
    >>> ev = simulate_point(np.array([2460.0, 5.125]), 1000, MassGridConfig(),
    ...                     np.random.default_rng(0))
    >>> 40 < int(ev.passed.sum()) < 120
    True
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import uproot

from detlearn._files import atomic_path
from detlearn._progress import track
from detlearn.config import validate_options
from detlearn.errors import DetlearnError
from detlearn.io.provenance import simulator_provenance, write_provenance
from detlearn.recipes.mass_grid.density import MassGridConfig, acceptance, grid_points, sample_reco

__all__ = [
    "MassGridEvents",
    "config_from_options",
    "event_counts",
    "simulate",
    "simulate_point",
    "write_events",
]

# Decoy shapes: cosmetic (never selected), so not config fields.
_DECOY_PHOTON_MIN_PT = 20.0
_DECOY_PHOTON_SCALE = 30.0
_DECOY_TWOPRONG_SCALE = 1.0
_FAILED_PHOTON_MIN_PT = 20.0


@dataclass(frozen=True)
class MassGridEvents:
    """The events of one grid point: the truth and the branches written.

    Attributes:
        label: generated (m_Φ, m_ω) [GeV].
        reco: ``(n, 2)`` reconstructed (m_Φ, m_ω) [GeV] of every event (also those rejected).
        passed: ``(n,)`` whether the event passes the recipe's selection.
        branches: tree ``Events`` as uproot writes it (NanoAOD-style records for jagged lists).
    """

    label: np.ndarray
    reco: np.ndarray
    passed: np.ndarray
    branches: dict[str, Any]


def _jagged(first: np.ndarray, extra: np.ndarray, counts: np.ndarray) -> ak.Array:
    """Lists of ``1 + extra`` elements per event: ``first`` then that event's ``extra`` ones."""
    return ak.concatenate([first[:, None], ak.unflatten(extra, counts)], axis=1)


def simulate_point(
    label: np.ndarray, events: int, cfg: MassGridConfig, rng: np.random.Generator
) -> MassGridEvents:
    """Generate ``events`` events at one label (m_Φ, m_ω) [GeV] (vectorized, no event loop)."""
    label = np.asarray(label, dtype=np.float64)
    n = events
    reco = sample_reco(np.broadcast_to(label, (n, 2)), cfg, rng)
    passed = rng.random(n) < acceptance(label[None, :], cfg)[0]
    r = rng.random(n)
    no_cand = ~passed & (r < cfg.no_candidate_fraction)
    region_fail = ~passed & ~no_cand & (r < cfg.no_candidate_fraction + cfg.region_fail_fraction)
    pt_fail = ~passed & ~no_cand & ~region_fail

    cut = cfg.photon_pt_cut
    above = np.maximum(cut + rng.exponential(label[0] / 4, n), np.nextafter(cut, np.inf))
    below = _FAILED_PHOTON_MIN_PT + (cut - _FAILED_PHOTON_MIN_PT) * rng.random(n)
    pt_sel = np.where(pt_fail, below, above)
    n_photons = rng.poisson(cfg.extra_photons, n)
    decoy_pt = _DECOY_PHOTON_MIN_PT + rng.exponential(_DECOY_PHOTON_SCALE, n_photons.sum())
    photons = ak.sort(_jagged(pt_sel, decoy_pt, n_photons), axis=1, ascending=False)
    # After the descending sort the candidate's photon sits behind every harder decoy.
    photon_index = ak.to_numpy(ak.sum(ak.unflatten(decoy_pt, n_photons) > pt_sel, axis=1))

    n_twoprongs = 1 + rng.poisson(cfg.extra_twoprongs, n)
    twoprong_index = np.floor(rng.random(n) * n_twoprongs).astype(np.int64)
    decoy_mass = cfg.omega_threshold + rng.exponential(_DECOY_TWOPRONG_SCALE, n_twoprongs.sum())
    decoys = ak.unflatten(decoy_mass, n_twoprongs)
    twoprongs = ak.where(ak.local_index(decoys) == twoprong_index, reco[:, 1], decoys)

    one_each = np.ones(n, dtype=np.int64)  # counts, not a scalar: ROOT needs variable-length lists
    region = np.where(no_cand, 0, np.where(region_fail, 2, 1)).astype(np.int32)
    branches = {
        "CBL_RecoPhi_mass": np.where(no_cand, -1.0, reco[:, 0]),
        "CBL_RecoPhi_photonindex": np.where(no_cand, -1, photon_index).astype(np.int32),
        "CBL_RecoPhi_twoprongindex": np.where(no_cand, -1, twoprong_index).astype(np.int32),
        "CBL_Region": region,
        "Photon": ak.zip({"pt": photons}),
        "TwoProng": ak.zip({"massPi0": twoprongs}),
        "GenPhi": ak.zip({"mass": ak.unflatten(np.full(n, label[0]), one_each)}),
        "GenOmega": ak.zip({"mass": ak.unflatten(np.full(n, label[1]), one_each)}),
    }
    return MassGridEvents(label=label, reco=reco, passed=passed, branches=branches)


def write_events(
    batch: MassGridEvents, path: str | Path, provenance: Mapping[str, Any] | None = None
) -> Path:
    """Write ``batch`` as tree ``Events`` to ``path`` atomically (temporary file + rename),
    with the ``provenance`` record (:mod:`detlearn.io.provenance`) when given."""
    path = Path(path)
    types = {name: ak.type(ak.Array(value)).content for name, value in batch.branches.items()}
    with atomic_path(path) as tmp, uproot.recreate(tmp) as f:
        f.mktree("Events", types)
        f["Events"].extend(batch.branches)
        if provenance is not None:
            write_provenance(f, provenance)
    return path


def config_from_options(options: Mapping[str, Any] | None) -> MassGridConfig:
    """Validate the recipe's ``simulate`` options; a bad key names itself and the nearest one.

    Example:
        >>> config_from_options({"phi_tial_fraction": 0.1})
        Traceback (most recent call last):
        ...
        detlearn.errors.DetlearnError: mass-grid simulate: unknown option 'phi_tial_fraction'; did you mean 'phi_tail_fraction'?
    """  # noqa: E501
    return validate_options(MassGridConfig, options, "mass-grid simulate")


def event_counts(events: int, cfg: MassGridConfig) -> tuple[int, int]:
    """The events :func:`simulate` writes in all (``events`` per grid point, every generated
    event: the rejected ones too) and holds in memory at once (one point's).

    Example:
        >>> event_counts(10_000, MassGridConfig(phi_points=10, omega_points=10))
        (1000000, 10000)
    """
    return events * len(grid_points(cfg)), events


def simulate(
    out_dir: str | Path, events: int, seed: int, options: Mapping[str, Any] | None = None
) -> list[Path]:
    """The recipe entry point: ``events`` generated events per grid point, one file per point.

    Args:
        out_dir: folder for the files ``grid_{i:03d}.root`` (created), i indexing
            :func:`~.density.grid_points`.
        events: generated events per grid point (FEDHEX: 10 000; about 8 % pass at high m_Φ).
        seed: master seed; point i is simulated from ``SeedSequence(seed).spawn(K)[i]``.
        options: :class:`~.density.MassGridConfig` fields (the recipe's ``simulate`` section).

    Returns:
        The files written, in grid order.

    Raises:
        DetlearnError: an unknown option (naming the nearest valid one), an invalid value, or a
            non-positive ``events``.

    Example:
        >>> simulate("sim", 10_000, seed=1)   # doctest: +SKIP
        [PosixPath('sim/grid_000.root'), ..., PosixPath('sim/grid_099.root')]
    """
    cfg = config_from_options(options)
    if events <= 0:
        raise DetlearnError(f"mass-grid simulate: events per grid point must be > 0 (got {events})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = grid_points(cfg)
    seeds = np.random.SeedSequence(seed).spawn(len(labels))

    def one(i: int) -> Path:
        batch = simulate_point(labels[i], events, cfg, np.random.default_rng(seeds[i]))
        record = simulator_provenance("mass-grid", cfg, seed, i)
        return write_events(batch, out_dir / f"grid_{i:03d}.root", record)

    return [one(i) for i in track(range(len(labels)), "simulating the mass grid")]
