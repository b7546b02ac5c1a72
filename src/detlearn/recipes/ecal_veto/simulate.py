"""Built-in simulator of the LDMX ECal veto samples: A′ signal and photonuclear background hits.

It writes what the original CNN study read (``AndGasp/LDMX``, seeds_code.md §2.1): one ROOT file
per sample, ``signal_m{mass}MeV.root`` per A′ mass and ``background.root``, tree ``ecalHits``,
one entry per event that passes the trigger. Units: mm, MeV, rad, X₀ (physics.md §2 for every
number; [S n] its sources, [A] assumptions, tunable in :class:`EcalSimConfig`).

=================  =======  ==========================================================
branch             type     content
=================  =======  ==========================================================
``eventNumber``    int32    generated event number in the sample, from 1 (gaps: events
                            that failed the trigger)
``nHits``          int32    readout hits of the event (the counter of the lists below)
``x, y, z``        float32  per hit: cell centre and silicon layer plane [mm]
``E``              float32  per hit: reconstructed energy E_rec = (1 + L/E_MIP) E_Si [MeV]
``layer``          int32    per hit: silicon layer, 0 (front) … 33 (truth/geometry)
``label``          int32    1 signal, 0 background
``mass``           float32  A′ mass [MeV]; 0 for background
``recoilE``        float32  recoil electron (total) energy [MeV]
``recoilTheta``    float32  recoil electron angle to the beam [rad]
``recoilPhi``      float32  recoil electron azimuth [rad] (its straight trajectory from
                            the target at the origin: x = z tanθ cosφ, y = z tanθ sinφ)
``pnDepth``        float32  depth of the photonuclear vertex behind the ECal front [X₀];
                            −1 for signal
``pnTopology``     int32    0 signal; background: 1 ordinary PN, 2 a hard neutral hadron
                            that escapes, 3 one that interacts deep in the ECal
=================  =======  ==========================================================

The model, event by event (vectorized over events; the deposits in the numba kernel
:func:`~._kernels.deposit_events`):

1. **Signal** (dark bremsstrahlung e Z → e Z A′ in the 0.1 X₀ tungsten target, A′ invisible):
   x = E_A′/E₀ from the Weizsäcker–Williams cross-section [S21, physics.md §2.3]: the angular
   bracket in w = E₀²xθ²/U(x, 0), integrated over the allowed angles, over U(x, 0), times the
   screening factor exp(−t_min/d), d = 5.1·10³ MeV². Integrated over all angles this is
   physics.md's x(1 − x + x²/3) / (m²(1 − x) + m_e²x²); the angles allowed are θ_A′ ≤ 1 rad
   and p_T,A′ ≤ p_e, the transverse momentum the recoil electron can balance [A] (without it a
   heavy A′ would take x → 1 with a p_T no soft electron can carry). The A′ angle follows from
   the exact inverse CDF of the bracket; the recoil electron takes E_e = (1 − x)E₀ and
   p_T = −p_T,A′ + q_T, q_T a Gaussian nuclear recoil of ``recoil_qt`` per component [A] (an
   electron softer than its p_T leaves sideways and misses the ECal). Above ~50 MeV the recoil
   p_T grows with m_A′; below, q_T sets it. Only the recoil shower is seen.
2. **Background**: a hard bremsstrahlung photon (spectrum ∝ (4/3 − 4/3 y + y²)/y above
   ``brem_min_energy``), the recoil electron with the same nuclear q_T, the photon along
   (−p_e,x, −p_e,y, E₀ − p_e,z) [S17]. It interacts photonuclearly at a depth ~ Exp(9/7 X₀)
   behind the ECal front (the photon's survival against pair production). There, with
   probability ``hard_hadron_fraction``, a forward neutral hadron (n, K_L) takes more than
   ``hard_hadron_min_energy`` [A, physics.md §2.4]; it escapes or, after Exp(λ_I/X₀ = 28.4 X₀),
   interacts deep in the stack and makes its own products (a lone deep hadronic deposit). The
   energy left (all of it in ordinary events) makes the vertex products: a visible fraction
   Beta(2, 5), Poisson(2.5) charged hadrons (55 % p, 35 % π±, 5 % K±, 5 % d/α, kinetic
   energies Exp(150 MeV) for baryons, Exp(250 MeV) for mesons) and Poisson(0.6) π⁰ (energy
   m_π⁰ + Exp(250 MeV), two photons sharing it uniformly), all scaled down together when they
   exceed the visible energy, the rest lost to neutrons and binding; directions
   cosθ = 0.5 + 0.5·∛U(−1, 1). Events without any product (a few per cent) and escaping hard
   hadrons show only the recoil shower, and about a fifth of all triggered background events
   add less than 30 MeV to it: the background a simple veto cannot remove.
3. **EM showers** (recoil e±, π⁰ photons after a conversion length Exp(9/7 X₀)): energy packets
   of about ``packet_energy`` along the Longo profile (Gamma(a, b) in X₀ along the axis,
   t_max = ln(E/E_c) + C, E_c = 7.97 MeV, C = −0.5 for e, +0.5 for γ, b = 0.5; t_max jittered
   by 10 % and a by 20 % per shower [A]); transverse: a core of radius R_C = r68/2 (80 %) and a
   tail of 4 R_C (20 %), each ∝ 2rR²/(r² + R²)², with r68 the ldmx-sw 68 % containment radius
   at that depth [S17] (this mixture keeps 68 % within r68).
4. **Charged tracks**: straight lines from the vertex; in every silicon layer crossed a Moyal
   (Landau-like) deposit, most probable 0.130 MeV, width 0.012 MeV [A], times z²·(ionization
   relative to a MIP at βγ, Bethe) and the path factor 1/cosθ; the kinetic energy follows
   the Bethe CSDA range in tungsten (the X₀ between layers as tungsten), so protons end in a
   Bragg rise; hadrons stop at a nuclear interaction, probability 1 − exp(−path/λ_I) per gap.
5. **Readout**: deposits summed per (layer, cell) (:mod:`.geometry`); the shower part of a cell
   smeared by a Gamma of relative variance s²·1 GeV/E_rec (s = ``sampling_term``, so the
   stochastic term of the sum is s/√E [A]); noise N(0, ``noise`` MIP) [S17, D]; hits above
   ``threshold`` MIP of silicon energy [S17, D] are read out; empty cells fire on noise alone
   at the Gaussian tail rate.
6. **Trigger**: Σ E_rec of the first ``trigger_layers`` layers < ``trigger_energy`` [S18];
   events that fail are not written.

Example:
    >>> ev = simulate_sample(100.0, 50, seed=0, cfg=EcalSimConfig(threads=1))
    >>> len(ev), bool(np.all(ev.trigger_energy() < 1500.0)), int(ev.label[0])
    (50, True, 1)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import awkward as ak
import numpy as np
import uproot
from pydantic import BaseModel, ConfigDict, Field, model_validator

from detlearn._blocks import map_threads
from detlearn._files import atomic_path
from detlearn._progress import track
from detlearn._threads import usable_cpus
from detlearn.config import validate_options
from detlearn.errors import DetlearnError
from detlearn.io.provenance import simulator_provenance, write_provenance
from detlearn.recipes.ecal_veto import geometry as geo
from detlearn.recipes.ecal_veto._kernels import deposit_events

__all__ = [
    "BLOCK_EVENTS",
    "DEFAULT_MASSES",
    "ELECTRON_MASS",
    "TOPOLOGIES",
    "EcalEvents",
    "EcalSimConfig",
    "config_from_options",
    "event_counts",
    "sample_file_name",
    "simulate",
    "simulate_block",
    "simulate_sample",
    "write_events",
]

#: The A′ masses of the LDMX samples the original study used [MeV] [S18].
DEFAULT_MASSES = (1.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1000.0)
#: ``pnTopology`` codes.
TOPOLOGIES = {"signal": 0, "pn": 1, "hard_hadron_escapes": 2, "hard_hadron_deep": 3}
#: Generated events per independently seeded block: the unit of threading, fixed so that a
#: sample depends only on the seed.
BLOCK_EVENTS = 2048

#: Electron mass [MeV].
ELECTRON_MASS = 0.51099895
_PROTON_MASS = 938.272
_PI0_MASS = 134.977
# Charged PN species: (mass [MeV], charge); the d/α class is half deuterons, half alphas [A].
_SPECIES = np.array(
    [[938.272, 1.0], [139.570, 1.0], [493.677, 1.0], [1875.613, 1.0], [3727.379, 2.0]]
)
# Screening scale d = 0.164 GeV² A^(-2/3) for tungsten [S21 form], in MeV².
_SCREENING_D = 5.1e3
_PAIR_LENGTH = 9.0 / 7.0  # mean photon path before conversion [X0]
_HADRON_LENGTH = geo.W_LAMBDA_I / geo.W_X0  # nuclear interaction length of W in X0 [D]
_MAX_AV_ANGLE = 1.0  # rad: the A′ small-angle formula is cut off here
_MIP_XI = 0.012  # MeV: Landau width of a MIP in 0.5 mm Si [A]
_LONGO_B = 0.5  # 1/X0 [S*]
_CODECS = {"lz4": uproot.LZ4(1), "zstd": uproot.ZSTD(1), "zlib": uproot.ZLIB(1), "none": None}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EcalSimConfig(_Strict):
    """Every number of the ECal veto simulator (defaults: LDMX at 4 GeV, physics.md §2).

    Example:
        >>> EcalSimConfig(masses=[10.0, 100.0]).masses
        [10.0, 100.0]
    """

    # Samples and output
    masses: list[float] = Field(
        default_factory=lambda: list(DEFAULT_MASSES),
        description="A′ masses [MeV], one signal file each (empty: background only)",
    )
    background_events: int | None = Field(
        None, ge=0, description="events in background.root; null: the same as each signal file"
    )
    compression: Literal["lz4", "zstd", "zlib", "none"] = Field(
        "lz4", description="ROOT basket compression (level 1)"
    )
    threads: int = Field(
        default_factory=usable_cpus,
        gt=0,
        description="threads generating blocks (default: the usable CPUs; results do not depend)",
    )
    # Beam and trigger
    beam_energy: float = Field(4000.0, gt=0, description="beam electron energy E₀ [MeV]")
    trigger_energy: float = Field(
        1500.0, gt=0, description="trigger: Σ E_rec of the first trigger_layers below this [MeV]"
    )
    trigger_layers: int = Field(
        20, ge=1, le=geo.N_LAYERS, description="silicon layers summed by the trigger"
    )
    # Readout
    noise: float = Field(0.03, ge=0, description="readout noise σ [MIP of silicon energy]")
    threshold: float = Field(0.16, gt=0, description="readout threshold [MIP of silicon energy]")
    sampling_term: float = Field(
        0.18, ge=0, description="stochastic term s of σ/E = s/√(E/GeV) of the shower energy"
    )
    packet_energy: float = Field(
        2.0, gt=0, description="energy of a shower packet [MeV] (smaller: slower, finer)"
    )
    # Signal
    recoil_qt: float = Field(
        40.0, ge=0, description="Gaussian σ of the nuclear recoil momentum per component [MeV]"
    )
    # Background
    brem_min_energy: float = Field(
        2500.0, gt=0, description="lowest energy of the hard-brem photon [MeV]"
    )
    pn_visible_alpha: float = Field(2.0, gt=0, description="Beta α of the PN visible fraction")
    pn_visible_beta: float = Field(5.0, gt=0, description="Beta β of the PN visible fraction")
    pn_charged_mean: float = Field(2.5, ge=0, description="mean charged hadrons per PN vertex")
    pn_pi0_mean: float = Field(0.6, ge=0, description="mean π⁰ per PN vertex")
    pn_species: tuple[float, float, float, float] = Field(
        (0.55, 0.35, 0.05, 0.05), description="fractions of p, π±, K±, d/α among charged hadrons"
    )
    baryon_temperature: float = Field(
        150.0, gt=0, description="mean kinetic energy of PN protons, d and α [MeV]"
    )
    meson_temperature: float = Field(
        250.0, gt=0, description="mean kinetic energy of PN π± and K±, and of π⁰ above m_π⁰ [MeV]"
    )
    hard_hadron_fraction: float = Field(
        0.07, ge=0, le=1, description="fraction of PN events with one hard forward neutral hadron"
    )
    hard_hadron_min_energy: float = Field(
        2000.0, ge=0, description="lowest energy of that hadron [MeV]"
    )

    @model_validator(mode="after")
    def _consistent(self) -> EcalSimConfig:
        for mass in self.masses:
            if not 0 < mass < self.beam_energy:
                raise ValueError(f"masses must lie in (0, beam_energy) (got {mass})")
        if len(set(self.masses)) != len(self.masses):
            raise ValueError(f"masses must be distinct (got {self.masses})")
        if self.brem_min_energy >= self.beam_energy - ELECTRON_MASS:
            raise ValueError("brem_min_energy must be below beam_energy - m_e")
        if min(self.pn_species) < 0 or abs(sum(self.pn_species) - 1) > 1e-6:
            raise ValueError(f"pn_species must be 4 fractions summing to 1 (got {self.pn_species})")
        return self


def config_from_options(options: Mapping[str, Any] | None) -> EcalSimConfig:
    """Validate the recipe's ``simulate`` options; a bad key names itself and the nearest one.

    Example:
        >>> config_from_options({"treshold": 0.2})
        Traceback (most recent call last):
        ...
        detlearn.errors.DetlearnError: ecal-veto simulate: unknown option 'treshold'; did you mean 'threshold'?
    """  # noqa: E501
    return validate_options(EcalSimConfig, options, "ecal-veto simulate")


@dataclass(frozen=True)
class EcalEvents:
    """Triggered events: per-event truth (length n) and flat per-hit arrays (sorted by event,
    then layer and cell). See the module docstring for the meaning of each field."""

    event_number: np.ndarray
    label: np.ndarray
    mass: np.ndarray
    recoil_energy: np.ndarray
    recoil_theta: np.ndarray
    recoil_phi: np.ndarray
    pn_depth: np.ndarray
    topology: np.ndarray
    n_hits: np.ndarray
    layer: np.ndarray
    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    energy: np.ndarray

    def __len__(self) -> int:
        return len(self.event_number)

    def trigger_energy(self, layers: int = 20) -> np.ndarray:
        """Σ E of the hits in the first ``layers`` layers, per event [MeV]."""
        event = np.repeat(np.arange(len(self)), self.n_hits)
        front = self.layer < layers
        return np.bincount(event[front], weights=self.energy[front], minlength=len(self))

    def head(self, n: int) -> EcalEvents:
        """The first ``n`` events."""
        hits = int(self.n_hits[:n].sum())
        per_hit = {"layer", "x", "y", "z", "energy"}
        return EcalEvents(
            **{
                f.name: getattr(self, f.name)[: hits if f.name in per_hit else n]
                for f in fields(self)
            }
        )

    @staticmethod
    def concatenate(parts: list[EcalEvents]) -> EcalEvents:
        """The events of ``parts``, one after the other."""
        return EcalEvents(
            **{
                f.name: np.concatenate([getattr(p, f.name) for p in parts])
                for f in fields(EcalEvents)
            }
        )


def _angle_terms(x: np.ndarray, mass: float, beam: float) -> tuple:
    """U₀ = U(x, θ = 0) [MeV²], the bracket's coefficients c1, c2, and the smallest s = 1/(1 + w)
    allowed: θ_A′ ≤ 1 rad and p_T,A′ ≤ p_e (the recoil electron can balance it) [A]."""
    u0 = mass**2 * (1 - x) / x + ELECTRON_MASS**2 * x
    c1 = 1 - x + x**2 / 2
    c2 = x * (1 - x) * mass**2 / u0
    w_angle = beam**2 * x * _MAX_AV_ANGLE**2 / u0
    w_kinematic = beam**2 * (1 - x) ** 2 / (x * u0)
    return u0, c1, c2, 1 / (1 + np.minimum(w_angle, w_kinematic))


def _angle_bracket(s: np.ndarray, c1: np.ndarray, c2: np.ndarray) -> np.ndarray:
    """∫ of the A′ angular density in w = u/U₀ = E₀²xθ²/U₀ from w = 1/s − 1 down to 0
    (increasing as s falls; at s → 0 it is 1 − x + x²/3 for m ≫ m_e)."""
    return c1 * (1 - s) - c2 * (1 / 6 - s**2 / 2 + s**3 / 3)


@functools.lru_cache(maxsize=32)
def _signal_x_table(mass: float, beam: float) -> tuple[np.ndarray, np.ndarray]:
    """Inverse-CDF table of x = E_A′/E₀: (CDF, y = −ln(1 − x)) on a grid fine near x → 1.

    dσ/dx ∝ (angular bracket integrated over the allowed angles) / U₀ · exp(−t_min/d); over
    all angles this is physics.md's x(1 − x + x²/3) / (m²(1 − x) + m_e²x²).
    """
    x_lo = mass / beam
    x_hi = 1 - max(ELECTRON_MASS / beam, 1e-4)
    y = np.linspace(-math.log1p(-x_lo), -math.log1p(-x_hi), 8192)
    x = -np.expm1(-y)
    u0, c1, c2, s_min = _angle_terms(x, mass, beam)
    t_min = (u0 / (2 * beam * (1 - x))) ** 2
    density = _angle_bracket(s_min, c1, c2) / u0 * np.exp(-t_min / _SCREENING_D) * (1 - x)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (density[1:] + density[:-1]) * np.diff(y))])
    return cdf / cdf[-1], y


def _signal_kinematics(n: int, mass: float, cfg: EcalSimConfig, rng: np.random.Generator) -> tuple:
    """Recoil electron energy [MeV] and momentum components [MeV] of ``n`` A′ events."""
    beam = cfg.beam_energy
    cdf, grid = _signal_x_table(float(mass), beam)
    x = -np.expm1(-np.interp(rng.random(n), cdf, grid))
    u0, c1, c2, s_min = _angle_terms(x, mass, beam)
    # Invert the bracket's CDF in s = 1/(1 + w) on [s_min, 1] by bisection (it is monotone).
    target = rng.random(n) * _angle_bracket(s_min, c1, c2)
    lo, hi = s_min, np.ones(n)
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        above = _angle_bracket(mid, c1, c2) > target
        lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
    w = 1 / (0.5 * (lo + hi)) - 1
    theta_a = np.sqrt(w * u0 / (beam**2 * x))
    pt_a = np.sqrt(np.maximum((x * beam) ** 2 - mass**2, 0)) * np.sin(theta_a)
    phi = 2 * np.pi * rng.random(n)
    qx, qy = rng.normal(0.0, cfg.recoil_qt, (2, n)) if cfg.recoil_qt > 0 else np.zeros((2, n))
    energy = (1 - x) * beam
    return energy, -pt_a * np.cos(phi) + qx, -pt_a * np.sin(phi) + qy


@functools.lru_cache(maxsize=8)
def _brem_table(y_min: float, y_max: float) -> tuple[np.ndarray, np.ndarray]:
    """Inverse-CDF table of the brem fraction y: ∫(4/3 − 4/3 y + y²)/y dy is analytic."""
    y = np.geomspace(y_min, y_max, 4096)
    cdf = 4 / 3 * np.log(y / y_min) - 4 / 3 * (y - y_min) + (y**2 - y_min**2) / 2
    return cdf / cdf[-1], y


def _recoil_angles(energy: np.ndarray, px: np.ndarray, py: np.ndarray) -> tuple:
    """θ, φ [rad] and p_z [MeV] of electrons of ``energy`` and transverse (px, py) [MeV];
    a p_T beyond the momentum (the approximations' edge) sends the electron sideways."""
    p = np.sqrt(np.maximum(energy**2 - ELECTRON_MASS**2, 0))
    sin_theta = np.minimum(np.hypot(px, py) / np.maximum(p, 1e-9), 1.0)
    theta = np.arcsin(sin_theta)
    return theta, np.arctan2(py, px), p * np.cos(theta)


@dataclass
class _Particles:
    """Showers or tracks of a block, in any event order (sorted before the kernel)."""

    columns: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def add(self, **values: np.ndarray) -> None:
        for name, value in values.items():
            self.columns.setdefault(name, []).append(np.asarray(value, dtype=np.float64))

    def packed(self, n_events: int, names: tuple[str, ...]) -> tuple:
        """(offsets, *columns) sorted by event, as the kernel reads them."""
        event = np.concatenate(self.columns["event"]).astype(np.int64)
        order = np.argsort(event, kind="stable")
        offsets = np.zeros(n_events + 1, dtype=np.int64)
        np.cumsum(np.bincount(event, minlength=n_events), out=offsets[1:])
        return (
            offsets,
            *(np.ascontiguousarray(np.concatenate(self.columns[k])[order]) for k in names),
        )


_SHOWER_COLUMNS = tuple("energy x y z depth tx ty cos start c".split())
_TRACK_COLUMNS = tuple("kinetic x y z depth tx ty cos mass charge hadronic".split())


def _directions(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PN product directions: cosθ = 0.5 + 0.5 ∛U(−1, 1), φ uniform; slopes dx/dz, dy/dz."""
    cos = 0.5 + 0.5 * np.cbrt(rng.uniform(-1.0, 1.0, n))
    phi = 2 * np.pi * rng.random(n)
    tan = np.sqrt(np.maximum(1 - cos**2, 0)) / np.maximum(cos, 1e-6)
    return cos, tan * np.cos(phi), tan * np.sin(phi)


def _pn_products(
    event: np.ndarray,
    depth: np.ndarray,
    vertex: tuple[np.ndarray, np.ndarray, np.ndarray],
    available: np.ndarray,
    cfg: EcalSimConfig,
    rng: np.random.Generator,
    showers: _Particles,
    tracks: _Particles,
) -> None:
    """The hadrons and π⁰ photons of photonuclear vertices (one row each) at ``depth`` [X0]."""
    visible = rng.beta(cfg.pn_visible_alpha, cfg.pn_visible_beta, len(event)) * available
    n_charged = rng.poisson(cfg.pn_charged_mean, len(event))
    n_pi0 = rng.poisson(cfg.pn_pi0_mean, len(event))
    ch_vertex = np.repeat(np.arange(len(event)), n_charged)
    pi_vertex = np.repeat(np.arange(len(event)), n_pi0)
    # Species rows of _SPECIES: p, π±, K±, then d or α (half each).
    species = np.searchsorted(np.cumsum(cfg.pn_species[:3]), rng.random(len(ch_vertex)), "right")
    species += (species == 3) & (rng.random(len(ch_vertex)) < 0.5)
    baryon = (species == 0) | (species >= 3)
    temperature = np.where(baryon, cfg.baryon_temperature, cfg.meson_temperature)
    kinetic = rng.exponential(1.0, len(ch_vertex)) * temperature
    pi_energy = _PI0_MASS + rng.exponential(cfg.meson_temperature, len(pi_vertex))
    spent = np.bincount(ch_vertex, kinetic, len(event)) + np.bincount(
        pi_vertex, pi_energy, len(event)
    )
    scale = np.minimum(1.0, visible / np.where(spent > 0, spent, 1.0))
    kinetic *= scale[ch_vertex]
    pi_energy *= scale[pi_vertex]

    cos, tx, ty = _directions(len(ch_vertex), rng)
    mass, charge = _SPECIES[species].T
    tracks.add(
        event=event[ch_vertex], kinetic=kinetic, x=vertex[0][ch_vertex], y=vertex[1][ch_vertex],
        z=vertex[2][ch_vertex], depth=depth[ch_vertex], tx=tx, ty=ty, cos=cos, mass=mass,
        charge=charge, hadronic=np.ones(len(ch_vertex)),
    )  # fmt: skip
    cos, tx, ty = _directions(len(pi_vertex), rng)
    share = rng.random(len(pi_vertex))
    for part in (share, 1 - share):
        showers.add(
            event=event[pi_vertex], energy=part * pi_energy, x=vertex[0][pi_vertex],
            y=vertex[1][pi_vertex], z=vertex[2][pi_vertex], depth=depth[pi_vertex], tx=tx,
            ty=ty, cos=cos, start=rng.exponential(_PAIR_LENGTH, len(pi_vertex)),
            c=np.full(len(pi_vertex), 0.5),
        )  # fmt: skip


@functools.lru_cache(maxsize=1)
def _tables() -> tuple:
    """r68 along the shower axis; proton CSDA range in W; Si ionization relative to a MIP."""
    r68_step = 0.05
    r68 = np.interp(np.arange(0.0, 45.0, r68_step), geo.X0_IN_FRONT, geo.R68)
    kinetic = np.geomspace(1.0, 1e5, 2000)
    dedx = _bethe(kinetic, _PROTON_MASS, z_over_a=74 / 183.84, density=19.3, excitation=727e-6)
    steps = 0.5 * (1 / dedx[1:] + 1 / dedx[:-1]) * np.diff(kinetic)
    range_mm = np.concatenate([[kinetic[0] / dedx[0]], kinetic[0] / dedx[0] + np.cumsum(steps)])
    bg = np.geomspace(0.02, 1e4, 2000)
    si = _bethe_bg(bg, z_over_a=0.49848, density=2.329, excitation=173e-6)
    ionization = np.where(bg < bg[np.argmin(si)], si / si.min(), 1.0)
    return r68_step, r68, kinetic, range_mm, bg, ionization


def _bethe_bg(bg: np.ndarray, z_over_a: float, density: float, excitation: float) -> np.ndarray:
    """Mean dE/dx [MeV/mm] of a heavy unit charge at βγ (Bethe, no density effect) [S*]."""
    beta2 = bg**2 / (1 + bg**2)
    w_max = 2 * ELECTRON_MASS * bg**2
    log_term = 0.5 * np.log(2 * ELECTRON_MASS * bg**2 * w_max / excitation**2)
    return 0.0307075 * z_over_a * density / beta2 * np.maximum(log_term - beta2, 1e-3)


def _bethe(
    kinetic: np.ndarray, mass: float, z_over_a: float, density: float, excitation: float
) -> np.ndarray:
    bg = np.sqrt(kinetic**2 + 2 * kinetic * mass) / mass
    return _bethe_bg(bg, z_over_a, density, excitation)


def _noise_rate(cfg: EcalSimConfig) -> float:
    """Expected cells per event above threshold on noise alone (the Gaussian tail)."""
    if cfg.noise == 0:
        return 0.0
    tail = 0.5 * math.erfc(cfg.threshold / (cfg.noise * math.sqrt(2)))
    cells = geo.cell_grid().n_cells
    return float(tail * (cells[0] * math.ceil(geo.N_LAYERS / 2) + cells[1] * (geo.N_LAYERS // 2)))


def simulate_block(
    mass: float | None, n: int, cfg: EcalSimConfig, rng: np.random.Generator, first: int = 1
) -> EcalEvents:
    """Generate ``n`` events (signal at A′ ``mass`` [MeV], or background for None) and keep
    those that pass the trigger; ``first`` is the first one's ``eventNumber``."""
    beam = cfg.beam_energy
    events = np.arange(n)
    showers, tracks = _Particles(), _Particles()
    pn_depth = np.full(n, -1.0)
    topology = np.zeros(n, dtype=np.int32)
    if mass is not None:
        energy, px, py = _signal_kinematics(n, mass, cfg, rng)
        theta, phi, pz = _recoil_angles(energy, px, py)
    else:
        cdf, grid = _brem_table(cfg.brem_min_energy / beam, 1 - ELECTRON_MASS / beam)
        photon = np.interp(rng.random(n), cdf, grid) * beam
        energy = beam - photon
        px, py = rng.normal(0.0, cfg.recoil_qt, (2, n)) if cfg.recoil_qt > 0 else np.zeros((2, n))
        theta, phi, pz = _recoil_angles(energy, px, py)
        along = np.maximum(beam - pz, 1e-9)
        photon_tx, photon_ty = -px / along, -py / along
        pn_depth = rng.exponential(_PAIR_LENGTH, n)
        z = geo.depth_to_z(pn_depth)
        vertex = (photon_tx * z, photon_ty * z, z)
        hard = rng.random(n) < cfg.hard_hadron_fraction
        low = np.minimum(cfg.hard_hadron_min_energy, photon)
        hadron = np.where(hard, low + (photon - low) * rng.random(n), 0.0)
        _pn_products(events, pn_depth, vertex, photon - hadron, cfg, rng, showers, tracks)
        deep = pn_depth + rng.exponential(_HADRON_LENGTH, n)
        interacts = hard & (deep < geo.X0_IN_FRONT[-1])
        topology[:] = np.where(
            hard,
            np.where(interacts, TOPOLOGIES["hard_hadron_deep"], TOPOLOGIES["hard_hadron_escapes"]),
            TOPOLOGIES["pn"],
        )
        z_deep = geo.depth_to_z(deep[interacts])
        deep_vertex = (photon_tx[interacts] * z_deep, photon_ty[interacts] * z_deep, z_deep)
        _pn_products(
            events[interacts], deep[interacts], deep_vertex, hadron[interacts], cfg, rng, showers,
            tracks,
        )  # fmt: skip
    tan = np.tan(np.minimum(theta, 1.5))
    showers.add(
        event=events, energy=energy - ELECTRON_MASS, x=np.zeros(n), y=np.zeros(n), z=np.zeros(n),
        depth=np.zeros(n), tx=tan * np.cos(phi), ty=tan * np.sin(phi), cos=np.cos(theta),
        start=np.zeros(n), c=np.full(n, -0.5),
    )  # fmt: skip
    if not tracks.columns:
        tracks.add(**{k: np.zeros(0) for k in ("event", *_TRACK_COLUMNS)})
    return _read_out(
        showers.packed(n, _SHOWER_COLUMNS),
        tracks.packed(n, _TRACK_COLUMNS),
        cfg,
        rng,
        truth={
            "event_number": (first + events).astype(np.int32),
            "label": np.full(n, int(mass is not None), dtype=np.int32),
            "mass": np.full(n, mass or 0.0, dtype=np.float32),
            "recoil_energy": energy.astype(np.float32),
            "recoil_theta": theta.astype(np.float32),
            "recoil_phi": phi.astype(np.float32),
            "pn_depth": pn_depth.astype(np.float32),
            "topology": topology,
        },
    )


def _read_out(
    showers: tuple, tracks: tuple, cfg: EcalSimConfig, rng: np.random.Generator, truth: dict
) -> EcalEvents:
    """Run the deposit kernel and keep the events that pass the trigger."""
    n = len(truth["label"])
    grid = geo.cell_grid()
    noise_hits = rng.poisson(_noise_rate(cfg), n)
    packets = np.maximum(1, np.floor(showers[1] / cfg.packet_energy + 0.5)).sum()
    capacity = int(packets + geo.N_LAYERS * len(tracks[1]) + noise_hits.sum())
    out = (
        np.empty(capacity, np.int64),
        np.empty(capacity, np.int32),
        np.empty(capacity, np.int32),
        np.empty(capacity, np.float64),
        np.zeros(n),
    )
    geometry = (
        geo.LAYER_Z, geo.DEPTH_EDGES, geo.X0_IN_FRONT, geo.SAMPLING_FACTOR, grid.index, grid.q0,
        grid.r0, grid.n_cells.astype(np.int64), geo.CELL_RADIUS, geo.LAYER_SHIFT, geo.W_X0,
        geo.W_LAMBDA_I,
    )  # fmt: skip
    mip = geo.MIP_SI_MEV
    params = (
        cfg.packet_energy, geo.W_CRITICAL_ENERGY, _LONGO_B, cfg.sampling_term**2 * 1000.0,
        cfg.noise * mip, cfg.threshold * mip, mip, _MIP_XI, _PROTON_MASS, cfg.trigger_layers,
    )  # fmt: skip
    hits = deposit_events(rng, showers, tracks, noise_hits, geometry, _tables(), params, out)
    event, layer, cell, e_rec = (a[:hits] for a in out[:4])
    passed = out[4] < cfg.trigger_energy
    keep = passed[event]
    event, layer, cell = event[keep], layer[keep], cell[keep]
    parity = layer % 2
    return EcalEvents(
        **{k: v[passed] for k, v in truth.items()},
        n_hits=np.bincount(event, minlength=n)[passed].astype(np.int32),
        layer=layer,
        x=grid.x[parity, cell].astype(np.float32),
        y=grid.y[parity, cell].astype(np.float32),
        z=geo.LAYER_Z[layer].astype(np.float32),
        energy=e_rec[keep].astype(np.float32),
    )


def simulate_sample(mass: float | None, events: int, seed: int, cfg: EcalSimConfig) -> EcalEvents:
    """``events`` triggered events of one sample: A′ ``mass`` [MeV], or background for None.

    Blocks of :data:`BLOCK_EVENTS` generated events are seeded from
    ``SeedSequence(seed, spawn_key=(kind, mass in keV, block))`` (kind 1 signal, 0
    background) and run on ``cfg.threads`` threads until enough pass the trigger; the first
    ``events`` are kept. A sample therefore depends only on the seed and its own mass, not on the
    thread count or on which other samples are made.

    Raises:
        DetlearnError: the trigger keeps too few events to reach ``events`` (under 1 %).
    """
    key = (0, 0) if mass is None else (1, round(mass * 1000))

    def block(i: int) -> EcalEvents:
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(*key, i)))
        return simulate_block(mass, BLOCK_EVENTS, cfg, rng, first=1 + i * BLOCK_EVENTS)

    parts: list[EcalEvents] = []
    kept = 0
    limit = 100 * events + 10 * BLOCK_EVENTS
    while kept < events:
        done = len(parts)
        if done * BLOCK_EVENTS >= limit:
            raise DetlearnError(
                f"ecal-veto simulate: the trigger kept {kept} of {done * BLOCK_EVENTS} "
                f"generated events of sample {_sample_name(mass)}; too few for {events}"
            )
        rate = max(kept / (done * BLOCK_EVENTS), 0.05) if done else 0.5
        wanted = math.ceil((events - kept) / (rate * BLOCK_EVENTS))
        wave = max(1, min(wanted, 4 * cfg.threads)) if done else max(1, min(wanted, cfg.threads))
        parts += map_threads(block, range(done, done + wave), cfg.threads)
        kept = sum(len(p) for p in parts)
    return EcalEvents.concatenate(parts).head(events)


def _sample_name(mass: float | None) -> str:
    return "background" if mass is None else f"signal_m{mass:g}MeV"


def sample_file_name(mass: float | None) -> str:
    """The file of a sample: ``signal_m{mass:g}MeV.root``, or ``background.root`` for None.

    Example:
        >>> sample_file_name(100.0), sample_file_name(0.5), sample_file_name(None)
        ('signal_m100MeV.root', 'signal_m0.5MeV.root', 'background.root')
    """
    return f"{_sample_name(mass)}.root"


def write_events(
    events: EcalEvents,
    path: str | Path,
    compression: str = "lz4",
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``events`` as tree ``ecalHits`` (the module docstring lists the branches) to
    ``path`` atomically (a temporary file in the same folder, then a rename), with the
    ``provenance`` record (:mod:`detlearn.io.provenance`) when given."""
    path = Path(path)
    hits = ak.unflatten(
        ak.zip(
            {
                "x": events.x,
                "y": events.y,
                "z": events.z,
                "E": events.energy,
                "layer": events.layer.astype(np.int32),
            }
        ),
        events.n_hits,
    )
    columns = {
        "eventNumber": events.event_number.astype(np.int32),
        "hits": hits,
        "label": events.label.astype(np.int32),
        "mass": events.mass.astype(np.float32),
        "recoilE": events.recoil_energy.astype(np.float32),
        "recoilTheta": events.recoil_theta.astype(np.float32),
        "recoilPhi": events.recoil_phi.astype(np.float32),
        "pnDepth": events.pn_depth.astype(np.float32),
        "pnTopology": events.topology.astype(np.int32),
    }
    types = {
        name: ak.type(ak.Array(v) if name != "hits" else v).content for name, v in columns.items()
    }
    with atomic_path(path) as tmp, uproot.recreate(tmp, compression=_CODECS[compression]) as f:
        f.mktree(
            "ecalHits",
            types,
            counter_name=lambda counted: "nHits",
            field_name=lambda outer, inner: inner,
        )
        f["ecalHits"].extend(columns)
        if provenance is not None:
            write_provenance(f, provenance)
    return path


def _samples(events: int, cfg: EcalSimConfig) -> list[tuple[float | None, int]]:
    """(A′ mass or None for the background, triggered events) of each sample to make."""
    n_background = events if cfg.background_events is None else cfg.background_events
    samples: list[tuple[float | None, int]] = [(m, events) for m in cfg.masses]
    return [*samples, (None, n_background)] if n_background else samples


def event_counts(events: int, cfg: EcalSimConfig) -> tuple[int, int]:
    """The triggered events :func:`simulate` writes in all (``events`` per signal mass, and
    ``background_events``, or ``events`` when unset, in the background) and holds in memory
    at once (one sample's).

    Example:
        >>> event_counts(4000, EcalSimConfig(masses=[1.0, 10.0]))
        (12000, 4000)
        >>> event_counts(4000, EcalSimConfig(masses=[1.0, 10.0], background_events=60_000))
        (68000, 60000)
    """
    sizes = [n for _, n in _samples(events, cfg)]
    return sum(sizes), max(sizes, default=0)


def simulate(
    out_dir: str | Path, events: int, seed: int, options: Mapping[str, Any] | None = None
) -> list[Path]:
    """The recipe entry point: one file of ``events`` triggered events per sample.

    Args:
        out_dir: folder for ``signal_m{mass}MeV.root`` per A′ mass and ``background.root``
            (created).
        events: triggered events in each signal file (and in ``background.root`` unless
            ``background_events`` says otherwise).
        seed: master seed (see :func:`simulate_sample`).
        options: :class:`EcalSimConfig` fields (the recipe's ``simulate`` section).

    Returns:
        The files written: signal files in the order of ``masses``, then the background.

    Raises:
        DetlearnError: an unknown option (naming the nearest valid one), an invalid value, a
            non-positive ``events``, no sample to make, or a trigger that keeps too few events.

    Example:
        >>> simulate("sim", 200_000, seed=1)   # doctest: +SKIP
        [PosixPath('sim/signal_m1MeV.root'), ..., PosixPath('sim/background.root')]
    """
    cfg = config_from_options(options)
    if isinstance(events, bool) or not isinstance(events, (int, np.integer)) or events <= 0:
        raise DetlearnError(f"ecal-veto simulate: events per sample must be > 0 (got {events!r})")
    samples = _samples(events, cfg)
    if not samples:
        raise DetlearnError("ecal-veto simulate: no sample to make (masses empty, background 0)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    def one(sample: tuple[float | None, int]) -> Path:
        mass, n = sample
        batch = simulate_sample(mass, n, seed, cfg)
        record = simulator_provenance("ecal-veto", cfg, seed, samples.index(sample))
        return write_events(batch, out_dir / sample_file_name(mass), cfg.compression, record)

    return [one(s) for s in track(samples, "simulating ECal samples")]
