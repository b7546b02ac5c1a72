"""Built-in simulator of the ePIC KLM scintillator bar: a muon or pion gun and its optical photons.

It reproduces the ddsim set-up of the original study (``simons27/epic_klm@one_segment`` bar, the
``work_eic`` gun) at numpy speed and writes the same EDM4hep layout, so the ``klm-timing`` recipe
reads its files exactly as it reads Geant4's. Units: mm, ns, GeV (MeV only where named).

The model, event by event (all of it vectorized; see :class:`KLMSimConfig` for every number):

1. **Gun**: vertex (``gun_x``, 0, z) with z ~ U(``gun_z_min``, ``gun_z_max``), φ = 0,
   θ ~ U(θmin, θmax) with θmin = π/2 − atan2(z_max − z, d), θmax = π/2 + atan2(z − z_min, d),
   d = ``theta_window_depth`` (the original job maker's window: over the first d mm in x the
   track stays inside [z_min, z_max]), |p| ~ U(``p_min``, ``p_max``). The default z range, the
   original's, reaches 767 mm, past the bar's end at 750: some of those tracks miss the bar and
   their events have E_dep = 0 and no photons (they are kept, as ddsim keeps them).
2. **Track in the bar**: the straight line clipped to the bar (x in [front, front + T],
   z in [far end, sensor plane]); chord length S (= T/sinθ unless the track leaves through an
   end face). ``z_hit`` and ``t_hit`` are where and when it crosses the plane x = ``reference_x``.
3. **Energy deposit**: Bethe mean dE/dx(βγ) (with the Sternheimer density effect) times S,
   fluctuated with a Moyal distribution of scale ξ = ½ K (Z/A) ρ S / β², located so that its mean
   is the Bethe mean.
4. **Photon candidates**: N ~ Poisson(yield × E_dep), each emitted at a point uniform along the
   chord (so at time t_hit + (x_e − x_ref) / (sinθ βc)), isotropically: half head for the sensor
   (axial distance D = z_sensor − z_e), half for the far end, where they reflect with probability R
   (D = z_e − 2 z_far + z_sensor). With |cos α| = μ to the bar axis the path is ℓ = D/μ.
5. **Thinning** (what shapes the time distribution): a candidate is detected with probability
   exp(−ℓ/λ) × A(ℓ, μ) (× R if reflected), where A is the light kept by the side walls
   (``direct`` mode, below; A = 1 in ``wls`` mode), and if it arrives inside the readout gate.
   (Candidates are drawn at a per-track upper bound of that probability and thinned by the ratio:
   the same Poisson process of detected photons from a third fewer draws.)
6. **Time**: t = t_hit + (emission offset) + Exp(τ) [+ Exp(τ_r)] + ℓ·n_g/c + N(0, σ).

``direct`` mode (the epic_klm Geant4 bar, physics.md §1.4 A). Side walls: a photon whose transverse
direction satisfies |k_x|, |k_y| < k_c = sqrt(1 − 1/n²) is totally internally reflected forever;
at |cos α| = μ that is the fraction g(μ) = 1 − (4/π) arccos(min(1, k_c / sqrt(1 − μ²))) of the
azimuths (exact for the rectangular cross-section). The other photons reach the mirror wrapping and
lose a factor r per bounce, with the azimuth-averaged bounce count ℓ sinα (2/π)(1/T + 1/W).
``wall_tir: false`` sends every photon to the mirror, as the original's Geant4 ``dielectric_metal``
surfaces do; only then does the light collection fall roughly like 1/distance, as in the
work_eic eps(z) fit. Detected candidates are those the photosensor sees: its coverage of the end
face times its photon-detection efficiency scale the candidate yield (photons arrive spread over
the face after many reflections). The defaults (a 3×3 mm² SiPM at 50% PDE on the 30×10 mm² face)
give ≈ 95 detected photons for a perpendicular 1 GeV muon in the middle of the bar and ≈ 165 at
the sensor end; steep tracks, with chords up to the bar length, give up to tens of thousands.

``wls`` mode (Belle II KLM, basf2 ``ScintillatorSimulator``, physics.md §1.4 B): 22 photoelectrons
per MeV per direction, a helix in the fiber with cos α ~ U(cos 26.7°, 1), fiber light speed
170 mm/ns, attenuation 3000 mm, far-end mirror 0.95, Exp(3 ns) + Exp(10 ns) emission.

:mod:`detlearn.recipes.klm_timing.density` computes the exact density of Δt = t − t_hit implied by
exactly these steps; :func:`sample_delays` draws independent Δt at given contexts.

Example:
    >>> cfg = KLMSimConfig()
    >>> ev = simulate_events(100, cfg, np.random.default_rng(1))
    >>> int(ev.n_photons.sum()) == len(ev.photon_time)
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import awkward as ak
import numpy as np
import uproot
from pydantic import BaseModel, ConfigDict, Field, model_validator

from detlearn._blocks import map_threads, seeded_blocks
from detlearn._files import atomic_path
from detlearn._progress import track
from detlearn.config import validate_options
from detlearn.errors import DetlearnError
from detlearn.io.provenance import simulator_provenance, write_provenance

__all__ = [
    "C_MM_PER_NS",
    "PARTICLES",
    "KLMEvents",
    "KLMSimConfig",
    "Optics",
    "chord",
    "gun_contexts",
    "mean_dedx",
    "optics",
    "primary_kinematics",
    "sample_delays",
    "simulate",
    "simulate_at",
    "simulate_events",
    "write_edm4hep",
]

C_MM_PER_NS = 299.792458
#: Gun particles: name -> (PDG code, mass [GeV]).
PARTICLES: dict[str, tuple[int, float]] = {"mu-": (13, 0.1056584), "pi-": (-211, 0.13957)}
OPTICAL_PHOTON_PDG = -22

_K_BETHE = 0.307075  # MeV cm^2 / mol
_ELECTRON_MASS_MEV = 0.51099895
# Sternheimer density-effect parameters of polystyrene (PDG atomic and nuclear properties).
_STERNHEIMER = {"cbar": 3.2999, "x0": 0.1647, "x1": 2.5031, "a": 0.16454, "k": 3.2224}
# Mean minus mode of the Moyal distribution, in units of its scale: Euler's gamma + ln 2.
_MOYAL_MEAN_OFFSET = 0.5772156649015329 + math.log(2.0)
# Events per independently seeded block: the unit of threading; fixed, so results depend only on
# the seed, never on the number of threads.
_BLOCK_EVENTS = 256
_COMPRESSION = {
    "zstd": uproot.ZSTD(1),
    "zlib": uproot.ZLIB(1),
    "lz4": uproot.LZ4(1),
    "none": None,
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KLMSimConfig(_Strict):
    """Every number of the KLM bar simulator (defaults: the epic_klm ``one_segment`` bar).

    Example:
        >>> KLMSimConfig(mode="wls").mode
        'wls'
    """

    # Output
    events_per_file: int = Field(2000, gt=0, description="events per ROOT file")
    collection: str = Field("HcalBarrelHits", description="name of the hit collection written")
    legacy_names: bool = Field(
        False, description="write pre-EDM4hep-0.99 names: _C_MCParticle relation and EDep"
    )
    compression: Literal["zstd", "zlib", "lz4", "none"] = Field(
        "zstd", description="ROOT basket compression (level 1)"
    )
    threads: int = Field(2, gt=0, description="threads generating photons (results do not depend)")
    # Geometry
    bar_front_x: float = Field(1770.3, description="x of the bar's front face [mm]")
    bar_thickness: float = Field(10.0, gt=0, description="bar thickness T along x [mm]")
    bar_width: float = Field(30.0, gt=0, description="bar width W along y [mm]")
    bar_length: float = Field(1500.0, gt=0, description="bar length along z [mm]")
    sensor_z: float = Field(
        750.0,
        description="z of the photosensor plane = the bar's +z end face [mm] (the original's "
        "efficiency fit used 770, the end of its sensor volume; the bar itself ends at 750)",
    )
    reference_x: float | None = Field(
        None, description="plane x where z_hit and t_hit are taken [mm]; null: the bar mid-plane"
    )
    # Gun
    particle: Literal["mu-", "pi-"] = Field(
        "mu-", description="gun particle (a pion only ionizes: no hadronic interactions)"
    )
    gun_x: float = Field(1769.3, description="gun vertex x [mm]")
    gun_z_min: float = Field(-732.0, description="lowest gun vertex z [mm]")
    gun_z_max: float = Field(767.0, description="highest gun vertex z [mm]")
    theta_window_depth: float = Field(
        10.0, gt=0, description="x depth [mm] over which the θ window keeps z in the gun range"
    )
    p_min: float = Field(0.1, gt=0, description="lowest momentum |p| [GeV]")
    p_max: float = Field(10.0, gt=0, description="highest momentum |p| [GeV]")
    # Energy deposit (polystyrene)
    density: float = Field(1.032, gt=0, description="scintillator density [g/cm^3]")
    z_over_a: float = Field(0.53768, gt=0, description="scintillator <Z/A> [mol/g]")
    mean_excitation: float = Field(68.7, gt=0, description="mean excitation energy I [eV]")
    # Light, shared
    mode: Literal["direct", "wls"] = Field(
        "direct", description="readout: 'direct' (SiPM on the bar end) or 'wls' (fiber, Belle II)"
    )
    jitter: float = Field(
        0.1, ge=0.05, description="photosensor time resolution σ [ns] (≥ 0.05: density grid)"
    )
    gate: float = Field(
        100.0, gt=0, description="readout window: photons with Δt > gate are lost [ns]"
    )
    photon_energy: float = Field(2.76e-9, gt=0, description="optical-photon energy written [GeV]")
    # Light, direct mode
    light_yield: float = Field(10_000.0, gt=0, description="scintillation photons per MeV")
    decay_time: float = Field(2.8, gt=0, description="scintillation decay time τ [ns]")
    rise_time: float = Field(0.0, ge=0, description="scintillation rise time τ_r [ns]; 0: none")
    refractive_index: float = Field(1.59, gt=1, description="phase index n (TIR at side walls)")
    wall_tir: bool = Field(
        True, description="side walls trap by TIR; false: every wall hit is a mirror bounce"
    )
    group_index: float = Field(1.61, gt=1, description="group index n_g (photon speed c/n_g)")
    absorption_length: float = Field(4000.0, gt=0, description="bulk absorption length λ [mm]")
    wall_reflectivity: float = Field(
        0.9, gt=0, le=1, description="mirror-wrap reflectivity per bounce (non-TIR photons)"
    )
    far_end_reflectivity: float = Field(0.9, ge=0, le=1, description="far (-z) end mirror")
    sensor_coverage: float = Field(
        0.03, gt=0, le=1, description="photosensor area / end-face area (3x3 mm² on 30x10 mm²)"
    )
    photodetection_efficiency: float = Field(0.5, gt=0, le=1, description="photosensor PDE")
    # Light, wls mode
    wls_pe_per_mev: float = Field(22.0, gt=0, description="photoelectrons per MeV per direction")
    wls_fiber_speed: float = Field(170.0, gt=0, description="light speed in the fiber [mm/ns]")
    wls_helix_angle: float = Field(
        0.466003, gt=0, lt=math.pi / 2, description="largest fiber helix angle [rad] (26.7°)"
    )
    wls_scint_decay: float = Field(3.0, gt=0, description="scintillator decay time [ns]")
    wls_fiber_decay: float = Field(10.0, gt=0, description="WLS fiber decay time [ns]")
    wls_attenuation_length: float = Field(3000.0, gt=0, description="fiber attenuation [mm]")
    wls_mirror_reflectivity: float = Field(0.95, ge=0, le=1, description="far-end fiber mirror")

    @model_validator(mode="after")
    def _consistent(self) -> KLMSimConfig:
        if self.p_max <= self.p_min:
            raise ValueError("p_max must exceed p_min")
        if self.gun_z_max <= self.gun_z_min:
            raise ValueError("gun_z_max must exceed gun_z_min")
        if self.rise_time >= self.decay_time:
            raise ValueError("rise_time must be shorter than decay_time")
        if self.wls_scint_decay == self.wls_fiber_decay:
            raise ValueError("wls_scint_decay and wls_fiber_decay must differ")
        return self

    @property
    def x_ref(self) -> float:
        """The reference plane x [mm] (default: the bar mid-plane)."""
        if self.reference_x is None:
            return self.bar_front_x + 0.5 * self.bar_thickness
        return self.reference_x

    @property
    def z_far(self) -> float:
        """z of the bar's far (−z) end face [mm]."""
        return self.sensor_z - self.bar_length

    @property
    def mass(self) -> float:
        """Gun particle mass [GeV]."""
        return PARTICLES[self.particle][1]


@dataclass(frozen=True)
class Optics:
    """The photon model of one config, as both the sampler and the exact density use it.

    A candidate picks the far-end branch with probability ½, |cos α| = μ ~ U(``mu_min``, 1],
    is kept with probability ``branch weight × exp(−ℓ/λ) × A(ℓ, μ)`` and is delayed by
    ``a ℓ`` + Exp(``tau1``) + Exp(``tau2``) + N(0, ``sigma``).

    Attributes:
        yield_per_mev: photon candidates per MeV deposited.
        a: photon time per mm of path [ns/mm].
        mu_min: smallest |cos α| of a transported photon.
        inv_lambda: 1 / absorption (attenuation) length [1/mm].
        mu_tir: μ above which every azimuth is totally internally reflected (A = 1 there).
        k_c: the TIR limit on |k_x|, |k_y| (0: no TIR).
        wall_rate: mirror loss per mm of transverse path, −ln r (2/π)(1/T + 1/W) [1/mm];
            0 when the walls lose nothing.
        reflect: weight of the far-end branch (its mirror reflectivity).
        tau1, tau2: emission-delay time constants [ns] (tau2 = 0: single exponential).
        sigma: time jitter [ns]. gate: readout window on Δt [ns].
        z_sensor, z_far: sensor plane and far end face [mm].
    """

    yield_per_mev: float
    a: float
    mu_min: float
    inv_lambda: float
    mu_tir: float
    k_c: float
    wall_rate: float
    reflect: float
    tau1: float
    tau2: float
    sigma: float
    gate: float
    z_sensor: float
    z_far: float

    def wall_factor(self, ell: np.ndarray, mu: np.ndarray) -> np.ndarray:
        """A(ℓ, μ): the fraction of photons at path ℓ [mm] and |cos α| = μ the side walls keep.

        Only meaningful for μ < ``mu_tir`` (above it every azimuth is trapped and A = 1).
        """
        st = np.sqrt(1 - mu * mu)
        exp_loss = np.exp(-self.wall_rate * ell * st)
        if self.k_c == 0:
            return exp_loss
        g = 1 - (4 / np.pi) * np.arccos(np.minimum(1, self.k_c / st))
        g = np.maximum(g, 0)
        return g + (1 - g) * exp_loss


def optics(cfg: KLMSimConfig) -> Optics:
    """The photon model of ``cfg`` (see :class:`Optics`)."""
    common = {"sigma": cfg.jitter, "gate": cfg.gate, "z_sensor": cfg.sensor_z, "z_far": cfg.z_far}
    if cfg.mode == "wls":
        return Optics(
            yield_per_mev=2 * cfg.wls_pe_per_mev,
            a=1 / cfg.wls_fiber_speed,
            mu_min=math.cos(cfg.wls_helix_angle),
            inv_lambda=1 / cfg.wls_attenuation_length,
            mu_tir=0.0,
            k_c=1.0,
            wall_rate=0.0,
            reflect=cfg.wls_mirror_reflectivity,
            tau1=max(cfg.wls_fiber_decay, cfg.wls_scint_decay),
            tau2=min(cfg.wls_fiber_decay, cfg.wls_scint_decay),
            **common,
        )
    k_c = math.sqrt(1 - 1 / cfg.refractive_index**2) if cfg.wall_tir else 0.0
    rate = -math.log(cfg.wall_reflectivity) * (2 / math.pi)
    rate *= 1 / cfg.bar_thickness + 1 / cfg.bar_width
    return Optics(
        yield_per_mev=cfg.light_yield * cfg.sensor_coverage * cfg.photodetection_efficiency,
        a=cfg.group_index / C_MM_PER_NS,
        mu_min=0.0,
        inv_lambda=1 / cfg.absorption_length,
        # Every azimuth is trapped once sinα = sqrt(1 − μ²) <= k_c, i.e. μ >= sqrt(1 − k_c²).
        mu_tir=math.sqrt(1 - k_c**2) if rate > 0 else 0.0,
        k_c=k_c,
        wall_rate=rate,
        reflect=cfg.far_end_reflectivity,
        tau1=cfg.decay_time,
        tau2=cfg.rise_time,
        **common,
    )


def chord(
    z_hit: np.ndarray, cot_theta: np.ndarray, cfg: KLMSimConfig
) -> tuple[np.ndarray, np.ndarray]:
    """The x-interval [x_a, x_b] [mm] of the track inside the bar, relative to ``cfg.x_ref``.

    The track (φ = 0) is z(x) = z_hit + (x − x_ref) cotθ from the gun on; it is clipped to the
    bar's thickness and to z in [far end, sensor plane]. Where it misses the bar, x_b <= x_a.
    """
    lo = np.full(np.shape(z_hit), max(cfg.bar_front_x, cfg.gun_x) - cfg.x_ref)
    hi = np.full(np.shape(z_hit), cfg.bar_front_x + cfg.bar_thickness - cfg.x_ref)
    with np.errstate(divide="ignore", invalid="ignore"):
        x1 = (cfg.z_far - z_hit) / cot_theta
        x2 = (cfg.sensor_z - z_hit) / cot_theta
    flat = cot_theta == 0
    inside = (z_hit >= cfg.z_far) & (z_hit <= cfg.sensor_z)
    x_lo = np.where(flat, np.where(inside, -np.inf, np.inf), np.minimum(x1, x2))
    x_hi = np.where(flat, np.where(inside, np.inf, -np.inf), np.maximum(x1, x2))
    return np.maximum(lo, x_lo), np.minimum(hi, x_hi)


def _beta_gamma(p: np.ndarray, mass: float) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(p, dtype=np.float64)
    return p / np.sqrt(p * p + mass * mass), p / mass


def mean_dedx(p: np.ndarray, cfg: KLMSimConfig) -> np.ndarray:
    """Mean energy loss [MeV/mm] of the gun particle at momentum ``p`` [GeV] (Bethe, PDG eq. 34.5).

    Includes the maximum energy transfer W_max and the Sternheimer density effect of polystyrene.
    A minimum-ionizing muon loses about 0.20 MeV/mm in the default material.

    Example:
        >>> round(float(mean_dedx(np.array([0.35]), KLMSimConfig())[0]), 3)
        0.2
    """
    beta, bg = _beta_gamma(p, cfg.mass)
    gamma = np.sqrt(1 + bg * bg)
    me = _ELECTRON_MASS_MEV
    ratio = me / (cfg.mass * 1000)
    w_max = 2 * me * bg**2 / (1 + 2 * gamma * ratio + ratio**2)
    ionization = cfg.mean_excitation * 1e-6
    x = np.log10(bg)
    s = _STERNHEIMER
    delta = 2 * np.log(10) * x - s["cbar"]
    delta = np.where(x < s["x1"], delta + s["a"] * np.clip(s["x1"] - x, 0, None) ** s["k"], delta)
    delta = np.where(x < s["x0"], 0.0, delta)
    log_term = 0.5 * np.log(2 * me * bg**2 * w_max / ionization**2)
    per_cm = _K_BETHE * cfg.z_over_a * cfg.density / beta**2 * (log_term - beta**2 - delta / 2)
    return per_cm / 10


@dataclass
class KLMEvents:
    """Simulated events: per-event arrays (length n_events) and flat per-photon arrays.

    Per event: ``vertex_x/y/z`` [mm], ``px/py/pz`` and ``p`` [GeV], ``theta`` [rad], ``z_hit`` [mm]
    and ``t_hit`` [ns] at the reference plane, ``e_dep`` [GeV], ``n_photons`` (detected).
    Per detected photon (sorted by event): ``photon_event`` (event index), ``photon_time``
    (absolute arrival time at the sensor [ns]), ``photon_emit_time`` (creation time [ns]),
    ``photon_x``, ``photon_z`` (emission point [mm]; y = 0), ``photon_path`` (path length ℓ [mm]),
    ``photon_cos`` (cos α of the emitted direction to +z: > 0 heads for the sensor, < 0 for the
    far-end mirror). Per-photon arrays are float32 (``photon_event`` int32).
    """

    vertex_x: np.ndarray
    vertex_y: np.ndarray
    vertex_z: np.ndarray
    px: np.ndarray
    py: np.ndarray
    pz: np.ndarray
    p: np.ndarray
    theta: np.ndarray
    z_hit: np.ndarray
    t_hit: np.ndarray
    e_dep: np.ndarray
    n_photons: np.ndarray
    photon_event: np.ndarray
    photon_time: np.ndarray
    photon_emit_time: np.ndarray
    photon_x: np.ndarray
    photon_z: np.ndarray
    photon_path: np.ndarray
    photon_cos: np.ndarray

    def __len__(self) -> int:
        return len(self.p)

    @property
    def dt(self) -> np.ndarray:
        """Δt = t_photon − t_hit of each photon [ns] (the flow's target)."""
        return self.photon_time - self.t_hit[self.photon_event]


@dataclass(frozen=True)
class _Tracks:
    """Per-track quantities the photon generator needs (float64, one row per track)."""

    z_hit: np.ndarray
    cot: np.ndarray
    x_a: np.ndarray  # chord start, relative to x_ref [mm]
    dx: np.ndarray  # chord extent along x [mm] (0 when the track misses the bar)
    length: np.ndarray  # chord length dx / sinθ [mm]
    time_per_x: np.ndarray  # muon time per mm along x: 1 / (sinθ βc) [ns/mm]

    def __getitem__(self, rows: slice | np.ndarray) -> _Tracks:
        return _Tracks(*(getattr(self, f.name)[rows] for f in fields(self)))


def _tracks(z_hit: np.ndarray, theta: np.ndarray, p: np.ndarray, cfg: KLMSimConfig) -> _Tracks:
    theta = np.asarray(theta, dtype=np.float64)
    sin, cot = np.sin(theta), np.cos(theta) / np.sin(theta)
    x_a, x_b = chord(z_hit, cot, cfg)
    dx = np.maximum(x_b - x_a, 0.0)
    beta, _ = _beta_gamma(p, cfg.mass)
    return _Tracks(
        np.asarray(z_hit, dtype=np.float64),
        cot,
        np.where(dx > 0, x_a, 0.0),
        dx,
        dx / sin,
        1 / (sin * beta * C_MM_PER_NS),
    )


@dataclass(frozen=True)
class _Branches:
    """Axial distances to the sensor per track (rows) and branch (columns: direct, far end).

    Along the chord (u in [0, 1]) D(u) = base + slope u; ``d_min`` is its minimum and
    ``majorant`` = branch weight × exp(−d_min/λ) bounds the detection probability from above.
    """

    base: np.ndarray
    slope: np.ndarray
    d_min: np.ndarray
    majorant: np.ndarray


def _branches(tracks: _Tracks, opt: Optics) -> _Branches:
    z0 = tracks.z_hit + tracks.x_a * tracks.cot
    dz = tracks.dx * tracks.cot
    base = np.stack([opt.z_sensor - z0, z0 - 2 * opt.z_far + opt.z_sensor], axis=1)
    slope = np.stack([-dz, dz], axis=1)
    d_min = np.maximum(np.minimum(base, base + slope), 0)
    majorant = np.array([1.0, opt.reflect]) * np.exp(-d_min * opt.inv_lambda)
    return _Branches(base, slope, d_min, majorant)


def _candidates(
    tracks: _Tracks, counts: np.ndarray, opt: Optics, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Draw ``counts[i, b]`` candidates on track i in branch b; return the detected ones.

    Candidates of (i, b) are proposed at the rate ½ yield × majorant[i, b] and kept with
    probability (detection probability) / majorant: exact thinning of the full Poisson process,
    with a third fewer candidates drawn than thinning from 1. Returns, sorted by track: ``event``
    (track index), ``dt`` (arrival − t_hit [ns]), ``emit`` (creation − t_hit [ns]), ``x``
    (emission x relative to x_ref [mm]), ``z``, ``path`` [mm], ``cos`` (signed μ). float32
    throughout: photon quantities need no more, and it halves the memory traffic.
    """
    f4 = np.float32
    br = _branches(tracks, opt)
    n = int(counts.sum())
    k = np.repeat(np.arange(counts.size, dtype=np.int32), counts.ravel())
    u = rng.random(n, dtype=f4)
    mu = rng.random(n, dtype=f4)
    mu *= f4(opt.mu_min - 1)
    mu += f4(1)  # μ ~ U(mu_min, 1]
    path = br.slope.astype(f4).ravel()[k]
    path *= u
    path += br.base.astype(f4).ravel()[k]
    path /= mu
    keep = br.d_min.astype(f4).ravel()[k]
    keep -= path
    keep *= f4(opt.inv_lambda)
    np.exp(keep, out=keep)
    kept = rng.random(n, dtype=f4)
    if opt.wall_rate > 0:
        # The wall factor A <= 1, only below mu_tir, is computed for absorption survivors only.
        lossy = np.flatnonzero((kept < keep) & (mu < f4(opt.mu_tir)))
        keep[lossy] *= opt.wall_factor(path[lossy], mu[lossy])
    alive = np.flatnonzero(kept < keep)
    k, u, path, mu = k[alive], u[alive], path[alive], mu[alive]
    event = k >> 1
    m = len(alive)
    x = tracks.dx.astype(f4)[event]
    x *= u
    x += tracks.x_a.astype(f4)[event]
    z = tracks.cot.astype(f4)[event] * x
    z += tracks.z_hit.astype(f4)[event]
    emit = tracks.time_per_x.astype(f4)[event] * x
    emit += f4(opt.tau1) * rng.standard_exponential(m, dtype=f4)
    if opt.tau2 > 0:
        emit += f4(opt.tau2) * rng.standard_exponential(m, dtype=f4)
    dt = rng.standard_normal(m, dtype=f4)
    dt *= f4(opt.sigma)
    dt += emit
    dt += f4(opt.a) * path
    mu[(k & 1) == 1] *= -1
    out = {"event": event, "dt": dt, "emit": emit, "x": x, "z": z, "path": path, "cos": mu}
    gated = np.flatnonzero(dt <= f4(opt.gate))
    if len(gated) < m:
        out = {key: a[gated] for key, a in out.items()}
    return out


def _energy(
    tracks: _Tracks, p: np.ndarray, cfg: KLMSimConfig, rng: np.random.Generator
) -> np.ndarray:
    """E_dep [MeV] per track: Moyal(scale ξ) around the Bethe mean over the chord."""
    beta, _ = _beta_gamma(p, cfg.mass)
    mean = mean_dedx(p, cfg) * tracks.length
    xi = 0.5 * _K_BETHE * cfg.z_over_a * cfg.density * (tracks.length / 10) / beta**2
    # Moyal variate: −ln(Z²) with Z standard normal.
    moyal = -np.log(rng.standard_normal(len(p)) ** 2)
    return np.where(tracks.length > 0, mean + xi * (moyal - _MOYAL_MEAN_OFFSET), 0.0)


def _gun(n: int, cfg: KLMSimConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    z = rng.uniform(cfg.gun_z_min, cfg.gun_z_max, n)
    d = cfg.theta_window_depth
    theta_min = np.pi / 2 - np.arctan2(cfg.gun_z_max - z, d)
    theta_max = np.pi / 2 + np.arctan2(z - cfg.gun_z_min, d)
    theta = rng.uniform(theta_min, theta_max)
    p = rng.uniform(cfg.p_min, cfg.p_max, n)
    return {"z": z, "theta": theta, "p": p}


def _concatenated(
    n: int,
    block: int,
    work: Callable[[slice, np.random.Generator], dict[str, np.ndarray]],
    rng: np.random.Generator,
    threads: int,
) -> dict[str, np.ndarray]:
    """``work(rows, child_rng)`` over the seeded blocks of ``n`` rows; the arrays it returns
    (of any length: photons of a block of events), concatenated over blocks."""
    parts = map_threads(lambda b: work(*b), seeded_blocks(n, block, rng), threads)
    keys = list(parts[0])
    joined = map_threads(lambda key: np.concatenate([part[key] for part in parts]), keys, threads)
    return dict(zip(keys, joined, strict=True))


def simulate_events(
    n_events: int, cfg: KLMSimConfig, rng: np.random.Generator, threads: int | None = None
) -> KLMEvents:
    """Simulate ``n_events`` gun events with their detected photons (see the module docstring).

    Photons are generated in fixed blocks of events, each with its own child generator spawned
    from ``rng``, on ``threads`` threads (default ``cfg.threads``); the result depends only on
    ``rng``'s state, not on the thread count.

    Example:
        >>> ev = simulate_events(10, KLMSimConfig(), np.random.default_rng(0))
        >>> len(ev), ev.photon_time.dtype
        (10, dtype('float32'))
    """
    return simulate_at(*gun_contexts(n_events, cfg, rng), cfg, rng, threads)


def gun_contexts(
    n_events: int, cfg: KLMSimConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The contexts of ``n_events`` gun events as the simulator draws them: z_hit [mm] where
    the track crosses the reference plane, θ [rad] and |p| [GeV] (float64 [n_events] each).

    Example:
        >>> z, theta, p = gun_contexts(4, KLMSimConfig(), np.random.default_rng(0))
        >>> z.shape, bool(((p >= 0.1) & (p <= 10)).all())
        ((4,), True)
    """
    gun = _gun(n_events, cfg, rng)
    cot = np.cos(gun["theta"]) / np.sin(gun["theta"])
    return gun["z"] + (cfg.x_ref - cfg.gun_x) * cot, gun["theta"], gun["p"]


def primary_kinematics(
    z_hit: np.ndarray, theta: np.ndarray, p: np.ndarray, cfg: KLMSimConfig
) -> dict[str, np.ndarray]:
    """The primary of each event with these contexts (z_hit [mm], θ [rad], |p| [GeV]): its
    vertex at x = ``gun_x`` on the straight line through (x_ref, z_hit) [mm], momentum [GeV]
    and ``t_hit`` [ns] when it crosses the reference plane, as :class:`KLMEvents` fields."""
    z_hit, theta, p = _broadcast_float(z_hit, theta, p)
    n = len(z_hit)
    beta, _ = _beta_gamma(p, cfg.mass)
    return {
        "vertex_x": np.full(n, cfg.gun_x),
        "vertex_y": np.zeros(n),
        "vertex_z": z_hit - (cfg.x_ref - cfg.gun_x) * np.cos(theta) / np.sin(theta),
        "px": p * np.sin(theta),
        "py": np.zeros(n),
        "pz": p * np.cos(theta),
        "p": p,
        "theta": theta,
        "z_hit": z_hit,
        "t_hit": (cfg.x_ref - cfg.gun_x) / (np.sin(theta) * beta * C_MM_PER_NS),
    }


def simulate_at(
    z_hit: np.ndarray,
    theta: np.ndarray,
    p: np.ndarray,
    cfg: KLMSimConfig,
    rng: np.random.Generator,
    threads: int | None = None,
) -> KLMEvents:
    """Simulate one event per given context: z_hit [mm] at the reference plane, θ [rad], |p| [GeV].

    The gun vertex is placed at x = ``gun_x`` on the straight line through (x_ref, z_hit), so
    whole events can be drawn at fixed contexts (e.g. to compare photon counts and first-photon
    resolution with a surrogate). :func:`simulate_events` is this with contexts from the gun.

    Example:
        >>> ev = simulate_at(np.zeros(3), np.full(3, np.pi / 2), np.ones(3), KLMSimConfig(),
        ...                  np.random.default_rng(0))
        >>> ev.z_hit.tolist()
        [0.0, 0.0, 0.0]
    """
    primary = primary_kinematics(z_hit, theta, p, cfg)
    z_hit, theta, p, t_hit = primary["z_hit"], primary["theta"], primary["p"], primary["t_hit"]
    n_events = len(z_hit)
    opt = optics(cfg)
    tracks = _tracks(z_hit, theta, p, cfg)
    e_dep = _energy(tracks, p, cfg, rng)
    rate = 0.5 * opt.yield_per_mev * e_dep[:, None] * _branches(tracks, opt).majorant
    counts = rng.poisson(rate)

    t_hit32, x_ref32 = t_hit.astype(np.float32), np.float32(cfg.x_ref)

    def work(rows: slice, child: np.random.Generator) -> dict[str, np.ndarray]:
        out = _candidates(tracks[rows], counts[rows], opt, child)
        local = out["event"]
        t0 = t_hit32[rows][local]
        out["time"] = out.pop("dt") + t0
        out["emit"] += t0
        out["x"] += x_ref32
        out["event"] = local + np.int32(rows.start)
        out["n"] = np.bincount(local, minlength=rows.stop - rows.start)
        return out

    ph = _concatenated(n_events, _BLOCK_EVENTS, work, rng, threads or cfg.threads)
    return KLMEvents(
        **primary,
        e_dep=e_dep * 1e-3,
        n_photons=ph["n"].astype(np.int64),
        photon_event=ph["event"],
        photon_time=ph["time"],
        photon_emit_time=ph["emit"],
        photon_x=ph["x"],
        photon_z=ph["z"],
        photon_path=ph["path"],
        photon_cos=ph["cos"],
    )


def sample_delays(
    z: np.ndarray,
    theta: np.ndarray,
    p: np.ndarray,
    cfg: KLMSimConfig,
    rng: np.random.Generator,
    threads: int | None = None,
) -> np.ndarray:
    """One detected photon's Δt = t − t_hit [ns] per context row (z_hit [mm], θ [rad], |p| [GeV]).

    Each row draws candidates (branch chosen in proportion to its majorant) until at least one is
    detected and returns one of its detected candidates picked uniformly: an exact draw from the
    conditional density. Rows whose track misses the bar get NaN. Rows are processed in fixed
    blocks with spawned generators on ``threads`` threads (default ``cfg.threads``).

    Example:
        >>> dt = sample_delays(np.zeros(5), np.full(5, np.pi / 2), np.ones(5), KLMSimConfig(),
        ...                    np.random.default_rng(0))
        >>> bool((dt > 3).all())   # 750 mm of bar at n_g = 1.61: at least 4 ns of flight
        True
    """
    z, theta, p = _broadcast_float(z, theta, p)
    opt = optics(cfg)
    tracks = _tracks(z, theta, p, cfg)
    far_share = _branches(tracks, opt).majorant
    far_share = far_share[:, 1] / far_share.sum(axis=1)

    def work(rows: slice, child: np.random.Generator) -> dict[str, np.ndarray]:
        out = np.full(rows.stop - rows.start, np.nan, dtype=np.float32)
        todo = np.flatnonzero(tracks.dx[rows] > 0)
        per_row = 4
        for _ in range(10_000):
            if len(todo) == 0:
                return {"dt": out}
            far = child.binomial(per_row, far_share[rows][todo])
            counts = np.stack([per_row - far, far], axis=1)
            got = _candidates(tracks[rows][todo], counts, opt, child)
            hits = np.bincount(got["event"], minlength=len(todo))
            done = np.flatnonzero(hits)
            first = (np.cumsum(hits) - hits)[done]
            pick = first + (child.random(len(done)) * hits[done]).astype(np.intp)
            out[todo[done]] = got["dt"][pick]
            acceptance = max(len(got["dt"]) / (per_row * len(todo)), 1e-3)
            # Enough candidates that most remaining rows finish next round, without overdrawing.
            per_row = int(min(max(2, math.ceil(2 / acceptance)), 1000))
            todo = np.delete(todo, done)
        raise DetlearnError("sample_delays: photon detection probability too small to sample")

    return _concatenated(len(z), 1 << 16, work, rng, threads or cfg.threads)["dt"]


def _broadcast_float(*arrays: np.ndarray | float) -> list[np.ndarray]:
    """The arrays broadcast together, flattened, as float64."""
    return [a.ravel() for a in np.broadcast_arrays(*(np.asarray(x, np.float64) for x in arrays))]


def write_edm4hep(
    events: KLMEvents,
    path: str | Path,
    cfg: KLMSimConfig,
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``events`` as ddsim writes EDM4hep: tree ``events`` with MCParticles and hits,
    and the ``provenance`` record (:mod:`detlearn.io.provenance`) when given.

    Branches (C = ``cfg.collection``): ``MCParticles.{PDG, generatorStatus, mass, time,
    vertex.x/y/z, momentum.x/y/z}`` (the primary at index 0, generatorStatus 1, then one optical
    photon, PDG −22, status 0, per hit); ``C.{cellID, eDep, time, position.x/y/z, momentum.x/y/z,
    pathLength}``: first the primary's own hit (its energy deposit ``e_dep`` [GeV], at ``t_hit``
    where it crosses the reference plane, its chord through the bar as path length), then one
    hit per detected photon at the sensor plane; relation ``_C_particle.{index, collectionID}``
    from each hit to its MCParticle (0: the primary). ``cfg.legacy_names``
    writes ``_C_MCParticle`` and ``EDep`` instead. uproot adds counter branches
    ``nMCParticles``, ``nC`` and ``n_C_particle``. Not simulated, hence written as constants: the
    photon's azimuth about the bar axis (momentum y = 0), its arrival point on the sensor face
    (x, y = emission x, 0), the cell ID (0). The file is written to a temporary name in the same
    folder and renamed into place.
    """
    path = Path(path)
    n = len(events)
    pdg, mass = PARTICLES[cfg.particle]
    counts = events.n_photons
    event = events.photon_event
    # MCParticles per event: the primary, then its photons (photons are sorted by event).
    n_mc = counts + 1
    total = int(n_mc.sum())
    primary_at = np.cumsum(n_mc) - n_mc
    photon_at = np.arange(len(event)) + event + 1
    is_photon = np.ones(total, dtype=bool)
    is_photon[primary_at] = False

    def merged(primary: np.ndarray, photon: np.ndarray, dtype: str) -> ak.Array:
        flat = np.empty(total, dtype=dtype)
        flat[primary_at] = primary
        flat[photon_at] = photon
        return ak.unflatten(flat, n_mc)

    e_gamma = cfg.photon_energy
    sin_alpha = np.sqrt(np.maximum(1 - events.photon_cos.astype(np.float64) ** 2, 0))
    particles = {
        "PDG": merged(np.full(n, pdg), np.full(len(event), OPTICAL_PHOTON_PDG), "int32"),
        "generatorStatus": merged(np.ones(n), np.zeros(len(event)), "int32"),
        "mass": merged(np.full(n, mass), np.zeros(len(event)), "float64"),
        "time": merged(np.zeros(n), events.photon_emit_time, "float32"),
        "vertex.x": merged(events.vertex_x, events.photon_x, "float64"),
        "vertex.y": merged(events.vertex_y, np.zeros(len(event)), "float64"),
        "vertex.z": merged(events.vertex_z, events.photon_z, "float64"),
        "momentum.x": merged(events.px, e_gamma * sin_alpha, "float64"),
        "momentum.y": merged(events.py, np.zeros(len(event)), "float64"),
        "momentum.z": merged(events.pz, e_gamma * events.photon_cos, "float64"),
    }
    # Hits per event: the primary's own (its energy deposit, where and when it crosses the
    # reference plane, linked to MCParticle 0), then one per detected photon at the sensor.
    # The hits share the MCParticles' layout: the primary first, then its photons.
    sin_theta = np.abs(np.sin(events.theta))
    hits = {
        "cellID": merged(np.zeros(n), np.zeros(len(event)), "uint64"),
        "EDep" if cfg.legacy_names else "eDep": merged(
            events.e_dep, np.full(len(event), e_gamma), "float32"
        ),
        "time": merged(events.t_hit, events.photon_time, "float32"),
        "position.x": merged(np.full(n, cfg.x_ref), events.photon_x, "float64"),
        "position.y": merged(events.vertex_y, np.zeros(len(event)), "float64"),
        "position.z": merged(events.z_hit, np.full(len(event), cfg.sensor_z), "float64"),
        "momentum.x": merged(events.px, e_gamma * sin_alpha, "float32"),
        "momentum.y": merged(events.py, np.zeros(len(event)), "float32"),
        # At the sensor every photon travels towards +z.
        "momentum.z": merged(events.pz, e_gamma * np.abs(events.photon_cos), "float32"),
        # The primary's chord through the bar's thickness (along x).
        "pathLength": merged(
            cfg.bar_thickness / np.maximum(sin_theta, 1e-9), events.photon_path, "float32"
        ),
    }
    relation = {
        "index": merged(np.zeros(n), photon_at - primary_at[event], "int32"),
        # podio's collection ID of MCParticles in this file (the reader does not check it).
        "collectionID": merged(np.ones(n), np.ones(len(event)), "uint32"),
    }
    rel_name = f"_{cfg.collection}_{'MCParticle' if cfg.legacy_names else 'particle'}"
    columns = {
        "MCParticles": ak.zip(particles),
        cfg.collection: ak.zip(hits),
        rel_name: ak.zip(relation),
    }
    with (
        atomic_path(path) as tmp,
        uproot.recreate(tmp, compression=_COMPRESSION[cfg.compression]) as f,
    ):
        f.mktree(
            "events",
            {k: ak.type(v).content for k, v in columns.items()},
            field_name=lambda outer, inner: f"{outer}.{inner}",
        )
        f["events"].extend(columns)
        if provenance is not None:
            write_provenance(f, provenance)
    return path


def simulate(
    out_dir: str | Path, events: int, seed: int, options: Mapping[str, Any] | None = None
) -> list[Path]:
    """The recipe entry point: write ``events`` events as ``klm_{i:04d}.edm4hep.root`` files.

    Args:
        out_dir: folder for the files (created).
        events: number of events in total, split into files of ``events_per_file``.
        seed: master seed; file i is simulated from ``SeedSequence(seed).spawn(n_files)[i]``.
        options: :class:`KLMSimConfig` fields (the recipe's ``simulate`` section).

    Returns:
        The files written, in order. A rich progress bar is shown when there are several.

    Raises:
        DetlearnError: an unknown option or an invalid value, naming the key.

    Example:
        >>> simulate("sim", 4000, seed=1, options={"mode": "wls"})   # doctest: +SKIP
        [PosixPath('sim/klm_0000.edm4hep.root'), PosixPath('sim/klm_0001.edm4hep.root')]
    """
    cfg = validate_options(KLMSimConfig, options, "klm-timing simulate")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sizes = [min(cfg.events_per_file, events - s) for s in range(0, events, cfg.events_per_file)]
    seeds = np.random.SeedSequence(seed).spawn(len(sizes))

    def one(i: int) -> Path:
        batch = simulate_events(sizes[i], cfg, np.random.default_rng(seeds[i]))
        path = out_dir / f"klm_{i:04d}.edm4hep.root"
        return write_edm4hep(batch, path, cfg, simulator_provenance("klm-timing", cfg, seed, i))

    return [one(i) for i in track(range(len(sizes)), "simulating KLM events")]
