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
3. **Energy deposit** (:func:`mean_energy_deposit` gives its mean): Landau–Vavilov straggling
   (PDG Review §34.2.9; Vavilov 1957) from the collisions themselves. Energy transfers ε to atomic
   electrons come at the rate ξ/ε² (1 − β²ε/W_max) per unit ε (PDG §34.2.7), with
   ξ = ½ K (Z/A) ρ S / β² and W_max the kinematic limit; those above ξ/8 are drawn one by one,
   the many softer ones summed as a Gaussian of their exact mean and variance, and the mean of
   all is the Bethe mean dE/dx(βγ) S (Sternheimer density effect included). Its mode is then the
   PDG most probable loss Δp = ξ[ln(2mc²β²γ²/I) + ln(ξ/I) + 0.200 − β² − δ] (eq. 34.12), with
   Landau's width. A transfer ε frees a δ ray at the kinematic angle cos θ_δ = (ε/p_δ)(p_max/W_max)
   (PDG §34.2.7) with a uniform azimuth, from a point uniform along the chord; it runs straight
   to the bar face it points at (the front, the back, or a side face W/2 away) and deposits what
   it loses over that distance s, ε − E(R(ε) − s), R the electron practical range (Katz & Penfold
   1952, Rev. Mod. Phys. 24, 28; in g/cm² nearly the same in any light material). Deltas above
   ~2 MeV cross 10 mm of plastic, so the mean deposit of a 10 mm chord sits near the restricted
   (T_cut ≈ 2 MeV) loss, not the Bethe mean.
4. **Photon candidates**: N ~ Poisson(yield × E_dep), each emitted at a point uniform along the
   chord (so at time t_hit + (x_e − x_ref) / (sinθ βc)), isotropically: half head for the sensor
   (axial distance D = z_sensor − z_e), half for the far end, where they reflect with probability
   R_far(μ) (D = z_e − 2 z_far + z_sensor). With |cos α| = μ to the bar axis the path is ℓ = D/μ.
   R_far = R for a mirror on the face; with ``far_end_air_gap`` the face is polished with an air
   gap before the mirror: beyond the critical angle (μ < sqrt(1 − 1/n²)) total internal
   reflection, inside it Fresnel reflection F plus transmission to the mirror and back,
   F + R (1 − F)²/(1 − R F) per polarization, averaged over s and p.
5. **Thinning** (what shapes the time distribution): a candidate is detected with probability
   exp(−ℓ/λ) × A(ℓ, μ) (× R_far(μ) if reflected), where A is the light kept by the side walls
   (``direct`` mode, below; A = 1 in ``wls`` mode), and if it arrives inside the readout gate.
   (Candidates are drawn at a per-track upper bound of that probability and thinned by the ratio:
   the same Poisson process of detected photons from a third fewer draws.)
6. **Time**: t = t_hit + (emission offset) + Exp(τ) [+ Exp(τ_r)] + ℓ·n_g/c + N(0, σ).

``direct`` mode (the epic_klm Geant4 bar, physics.md §1.4 A). Side walls: with azimuth φ about the
bar axis a photon's transverse direction is k = sinα (cos φ, sin φ); on the thickness walls
(normal x) it is totally internally reflected when |k_x| < k_c = sqrt(1 − 1/n²), on the width
walls when |k_y| < k_c, and on a wall where it is not it reaches the mirror wrapping and loses a
factor r per bounce: r^(ℓ |k_x| / T) and r^(ℓ |k_y| / W) over a path ℓ. The simulator draws φ;
the density uses the exact average over φ, :meth:`Optics.wall_factor` (the average of r^n, not r
to the average n). ``wall_tir: false`` sends every photon to the mirror, as the original's Geant4
``dielectric_metal`` surfaces do; only then does the light collection fall roughly like
1/distance, as in the work_eic eps(z) fit. Detected candidates are those the photosensor sees: its
coverage of the end face times its photon-detection efficiency scale the candidate yield (photons
arrive spread over the face after many reflections). The defaults (a 3×3 mm² SiPM at 50% PDE on
the 30×10 mm² face) give ≈ 85 detected photons for a perpendicular 1 GeV muon in the middle of the
bar and ≈ 150 at the sensor end; steep tracks, with chords up to the bar length, give up to tens
of thousands. ``tests/recipes/test_klm_simulate.py`` compares the energy deposit, the photon
counts, the light and Δt without TIR and with a far-end air gap with Geant4 11.4 in this set-up
(μ⁻ at 1 GeV, θ = 1.4 rad): the E_dep mode, median and 10/90 % quantiles within 3 % (its sd
5 % low), the mean photon count 3 % low, the light within 1 % and Δt within 0.05 ns.

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
from detlearn._threads import usable_cpus
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
    "event_counts",
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
# Collisions transferring more than this fraction of ξ are drawn one by one, the rest summed as a
# Gaussian: the E_dep quantiles do not move (< 0.1 %) between 1/4 and 1/64.
_HARD_FRACTION = 1 / 8
# Electron practical range (Katz & Penfold 1952) tabulated for its inverse: kinetic energy [MeV].
_RANGE_ENERGY = np.geomspace(1e-4, 1e5, 2001)
# Gauss-Legendre nodes of the azimuth average of the wall loss (Optics.wall_factor), on the
# pieces where one wall loses and where both do: their error is below 1e-10 of A.
_AZIMUTH_ONE = np.polynomial.legendre.leggauss(6)
_AZIMUTH_BOTH = np.polynomial.legendre.leggauss(12)
# Gauss-Legendre nodes of the mean energy carried out by δ rays (mean_energy_deposit): in
# ln ε, along the chord and in azimuth; the mean deposit is good to 0.2 % (against 64, 32, 32).
_ESCAPE_NODES = (16, 8, 8)
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
    threads: int = Field(
        default_factory=usable_cpus,
        gt=0,
        description="threads generating photons (default: the usable CPUs; results do not depend)",
    )
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
    far_end_air_gap: bool = Field(
        False,
        description="an air gap between the polished far face and its mirror: total internal "
        "reflection beyond the critical angle, Fresnel and the mirror inside it",
    )
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
    is kept with probability ``exp(−ℓ/λ) × A(ℓ, μ)`` (× R_far(μ) on the far-end branch) and is
    delayed by ``a ℓ`` + Exp(``tau1``) + Exp(``tau2``) + N(0, ``sigma``).

    Attributes:
        yield_per_mev: photon candidates per MeV deposited.
        a: photon time per mm of path [ns/mm].
        mu_min: smallest |cos α| of a transported photon.
        inv_lambda: 1 / absorption (attenuation) length [1/mm].
        mu_tir: μ above which every azimuth is totally internally reflected (A = 1 there).
        k_c: the TIR limit on |k_x|, |k_y| (0: no TIR).
        loss_x, loss_y: mirror loss −ln r per mm of path across the thickness (x) and the width
            (y) [1/mm]: −ln r / T and −ln r / W; 0 when the walls lose nothing.
        reflect: the far-end mirror's reflectivity R.
        gap_index: 0 for a mirror on the far face; with an air gap before it, the bar's phase
            index n (TIR and Fresnel reflection at the face).
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
    loss_x: float
    loss_y: float
    reflect: float
    gap_index: float
    tau1: float
    tau2: float
    sigma: float
    gate: float
    z_sensor: float
    z_far: float

    @property
    def lossy_walls(self) -> bool:
        """Whether the side walls lose light (some photons reach a mirror with r < 1)."""
        return self.loss_x > 0

    def wall_survival(self, ell: np.ndarray, mu: np.ndarray, phi: np.ndarray) -> np.ndarray:
        """The fraction the side walls keep of a photon at path ℓ [mm], |cos α| = μ and azimuth φ
        [rad] about the bar axis: r per bounce on each wall where it is not totally reflected,
        r^(ℓ |k_x| / T) r^(ℓ |k_y| / W) with k = sinα (cos φ, sin φ).
        """
        st = np.sqrt(1 - mu * mu)
        kx, ky = np.abs(st * np.cos(phi)), np.abs(st * np.sin(phi))
        loss = np.where(kx > self.k_c, kx * self.loss_x, 0)
        loss += np.where(ky > self.k_c, ky * self.loss_y, 0)
        return np.exp(-ell * loss)

    def wall_factor(self, ell: np.ndarray, mu: np.ndarray) -> np.ndarray:
        """A(ℓ, μ): :meth:`wall_survival` averaged over the azimuth, exactly (Gauss-Legendre).

        On the quarter φ in [0, π/2] (the rest by symmetry) the thickness walls lose where
        φ < e = arccos(min(1, k_c / sinα)) and the width walls where φ > π/2 − e: the average
        splits into smooth pieces at those edges, each integrated by Gauss-Legendre quadrature
        (in float32: the result is good to ~1e-7).

        Example:
            >>> opt = optics(KLMSimConfig(wall_tir=False))
            >>> a = opt.wall_factor(np.array([1000.0]), np.array([0.8]))
            >>> phi = np.linspace(0, np.pi / 2, 100_001)
            >>> b = opt.wall_survival(1000.0, 0.8, phi).mean()
            >>> bool(abs(a[0] / b - 1) < 1e-4)
            True
        """
        f4 = np.float32  # several times faster than float64 here, and precise enough
        st = np.sqrt(1 - np.asarray(mu, np.float64) ** 2)
        ratio = np.where(st > self.k_c, self.k_c / np.maximum(st, 1e-300), 1.0)
        edge = np.arccos(ratio)
        # [0, one]: only the thickness walls lose; [π/2 − one, π/2]: only the width walls
        # (as ψ = π/2 − φ in [0, one]); between them none (e < π/4) or both (e > π/4).
        one = np.minimum(edge, np.pi / 2 - edge).astype(f4)
        both = np.maximum(2 * edge - np.pi / 2, 0).astype(f4)
        path = (ell * st).astype(f4)
        total = np.broadcast_to(np.maximum(np.pi / 2 - 2 * edge, 0), path.shape).astype(f4)
        if self.k_c > 0:
            for x, w in zip(*_AZIMUTH_ONE, strict=True):
                c = path * np.cos(one * f4((x + 1) / 2))
                total += (
                    f4(w / 2) * one * (np.exp(-c * f4(self.loss_x)) + np.exp(-c * f4(self.loss_y)))
                )
        if np.any(both > 0):
            start = (np.pi / 2 - edge).astype(f4)
            for x, w in zip(*_AZIMUTH_BOTH, strict=True):
                phi = start + both * f4((x + 1) / 2)
                loss = f4(self.loss_x) * np.cos(phi) + f4(self.loss_y) * np.sin(phi)
                total += f4(w / 2) * both * np.exp(-path * loss)
        return total * f4(2 / np.pi)

    @property
    def far_weight(self) -> float:
        """The largest far-end reflectivity over μ: the far branch's proposal weight."""
        return 1.0 if self.gap_index else self.reflect

    def far_reflectivity(self, mu: np.ndarray) -> np.ndarray:
        """R_far(μ): the probability that the far end reflects a photon at |cos α| = μ.

        R with the mirror on the face. With an air gap: 1 beyond the critical angle
        (μ < sqrt(1 − 1/n²)); inside it, per polarization, Fresnel reflection F at the face plus
        transmission to the mirror (R) and back, with every further round trip in the gap:
        F + R (1 − F)² / (1 − R F) = 1 − (1 − F)(1 − R) / (1 − R F), averaged over s and p.

        Example:
            >>> opt = optics(KLMSimConfig(far_end_air_gap=True))
            >>> opt.far_reflectivity(np.array([0.5, 1.0])).round(3).tolist()  # TIR; normal
            [1.0, 0.901]
        """
        mu = np.asarray(mu)
        if not self.gap_index:
            return np.full(mu.shape, self.reflect, dtype=mu.dtype)
        n, r = self.gap_index, self.reflect
        cos_t = np.sqrt(np.maximum(1 - n * n * (1 - mu * mu), 0))  # 0: beyond the critical angle
        out = np.zeros(mu.shape, dtype=np.result_type(mu, np.float32))
        # Amplitude ratios (n1 cos_i − n2 cos_t) / (n1 cos_i + n2 cos_t), s and p, n1 = n, n2 = 1.
        for a, b in ((n * mu, cos_t), (mu, n * cos_t)):
            ratio = np.divide(a - b, a + b, out=np.ones_like(out), where=cos_t > 0)
            fresnel = ratio * ratio
            out += 0.5 - 0.5 * (1 - fresnel) * (1 - r) / np.maximum(1 - r * fresnel, 1e-12)
        return out


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
            loss_x=0.0,
            loss_y=0.0,
            reflect=cfg.wls_mirror_reflectivity,
            gap_index=0.0,
            tau1=max(cfg.wls_fiber_decay, cfg.wls_scint_decay),
            tau2=min(cfg.wls_fiber_decay, cfg.wls_scint_decay),
            **common,
        )
    k_c = math.sqrt(1 - 1 / cfg.refractive_index**2) if cfg.wall_tir else 0.0
    loss = -math.log(cfg.wall_reflectivity)
    return Optics(
        yield_per_mev=cfg.light_yield * cfg.sensor_coverage * cfg.photodetection_efficiency,
        a=cfg.group_index / C_MM_PER_NS,
        mu_min=0.0,
        inv_lambda=1 / cfg.absorption_length,
        # Every azimuth is trapped once sinα = sqrt(1 − μ²) <= k_c, i.e. μ >= sqrt(1 − k_c²).
        mu_tir=math.sqrt(1 - k_c**2) if loss > 0 else 0.0,
        k_c=k_c,
        loss_x=loss / cfg.bar_thickness,
        loss_y=loss / cfg.bar_width,
        reflect=cfg.far_end_reflectivity,
        gap_index=cfg.refractive_index if cfg.far_end_air_gap else 0.0,
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


def _w_max(bg: np.ndarray, mass: float) -> np.ndarray:
    """The largest energy [MeV] one collision can give an electron (PDG eq. 34.4), at βγ ``bg``
    of a particle of ``mass`` [GeV]."""
    ratio = _ELECTRON_MASS_MEV / (mass * 1000)
    gamma = np.sqrt(1 + bg * bg)
    return 2 * _ELECTRON_MASS_MEV * bg**2 / (1 + 2 * gamma * ratio + ratio**2)


def mean_dedx(p: np.ndarray, cfg: KLMSimConfig) -> np.ndarray:
    """Mean energy loss [MeV/mm] of the gun particle at momentum ``p`` [GeV] (Bethe, PDG eq. 34.5).

    Includes the maximum energy transfer W_max and the Sternheimer density effect of polystyrene.
    A minimum-ionizing muon loses about 0.20 MeV/mm in the default material.

    Example:
        >>> round(float(mean_dedx(np.array([0.35]), KLMSimConfig())[0]), 3)
        0.2
    """
    beta, bg = _beta_gamma(p, cfg.mass)
    me = _ELECTRON_MASS_MEV
    w_max = _w_max(bg, cfg.mass)
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
    majorant = np.array([1.0, opt.far_weight]) * np.exp(-d_min * opt.inv_lambda)
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
    # The wall and far-end factors (<= 1) are computed for absorption survivors only.
    if opt.lossy_walls:
        lossy = np.flatnonzero((kept < keep) & (mu < f4(opt.mu_tir)))
        phi = rng.random(len(lossy), dtype=f4) * f4(np.pi / 2)  # the azimuth, by symmetry
        keep[lossy] *= opt.wall_survival(path[lossy], mu[lossy], phi)
    if opt.gap_index:
        far = np.flatnonzero((kept < keep) & ((k & 1) == 1))
        keep[far] *= opt.far_reflectivity(mu[far])
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


@dataclass(frozen=True)
class _Collisions:
    """Per track, its collisions with atomic electrons (module docstring, step 3), in MeV.

    Transfers ε in [``eps1``, ``w_max``] come as a Poisson process of ``rate`` with density
    ∝ 1/ε², each kept with probability 1 − β²ε/W_max; the softer ones sum to a Gaussian of
    ``soft_mean`` and ``soft_var`` [MeV²], so that the mean of everything is the Bethe mean.
    """

    xi: np.ndarray
    w_max: np.ndarray
    beta2: np.ndarray
    eps1: np.ndarray
    rate: np.ndarray
    soft_mean: np.ndarray
    soft_var: np.ndarray


def _collisions(tracks: _Tracks, p: np.ndarray, cfg: KLMSimConfig) -> _Collisions:
    beta, bg = _beta_gamma(p, cfg.mass)
    beta2 = beta**2
    xi = 0.5 * _K_BETHE * cfg.z_over_a * cfg.density * (tracks.length / 10) / beta2
    w_max = _w_max(bg, cfg.mass)
    # Where ξ/8 exceeds W_max (thick layers, slow particles) all collisions are soft: Bohr's
    # Gaussian straggling, the Vavilov limit; a track missing the bar (ξ = 0) has none.
    eps1 = np.where(xi > 0, np.minimum(_HARD_FRACTION * xi, w_max), w_max)
    # ∫ ε ξ/ε² (1 − β²ε/W) dε and ∫ ε² ξ/ε² (1 − β²ε/W) dε over the hard and the soft range.
    hard_mean = xi * (np.log(w_max / eps1) - beta2 * (1 - eps1 / w_max))
    return _Collisions(
        xi=xi,
        w_max=w_max,
        beta2=beta2,
        eps1=eps1,
        rate=xi * (1 / eps1 - 1 / w_max),
        soft_mean=mean_dedx(p, cfg) * tracks.length - hard_mean,
        soft_var=xi * eps1 * (1 - beta2 * eps1 / (2 * w_max)),
    )


def _electron_range(t: np.ndarray) -> np.ndarray:
    """Practical range [g/cm²] of electrons of kinetic energy ``t`` > 0 [MeV] (Katz & Penfold)."""
    low = 0.412 * t ** (1.265 - 0.0954 * np.log(t))
    return np.where(t < 2.5, low, 0.530 * t - 0.106)


_RANGE = _electron_range(_RANGE_ENERGY)


def _delta_deposit(
    eps: np.ndarray,
    w_max: np.ndarray,
    depth: np.ndarray,
    sin_t: np.ndarray,
    cos_t: np.ndarray,
    phi: np.ndarray,
    cfg: KLMSimConfig,
) -> np.ndarray:
    """Energy [MeV] a δ ray of kinetic energy ``eps`` [MeV] leaves in the bar (step 3).

    It starts ``depth`` [mm] behind the front face on a track at polar angle θ (``sin_t``,
    ``cos_t``; the track runs in the x-z plane at y = 0), at the kinematic angle θ_δ to the track
    and the azimuth ``phi`` [rad] about it, and runs straight to the face it points at.
    """
    me = _ELECTRON_MASS_MEV
    cos_d = np.minimum(np.sqrt(eps / (eps + 2 * me) * (w_max + 2 * me) / w_max), 1)
    sin_d = np.sqrt(1 - cos_d * cos_d)
    cx = cos_d * sin_t + sin_d * cos_t * np.cos(phi)
    cy = sin_d * np.sin(phi)
    to_x = np.where(cx > 0, cfg.bar_thickness - depth, depth) / np.maximum(np.abs(cx), 1e-12)
    to_y = 0.5 * cfg.bar_width / np.maximum(np.abs(cy), 1e-12)
    grams = np.minimum(to_x, to_y) * (cfg.density / 10)  # g/cm² of bar before it leaves
    left = np.maximum(_electron_range(eps) - grams, 0)
    return eps - np.interp(left, _RANGE, _RANGE_ENERGY, left=0.0)


def _track_angles(tracks: _Tracks) -> tuple[np.ndarray, np.ndarray]:
    """sinθ and cosθ of each track (the chord's direction; 1, 0 for a track missing the bar)."""
    sin_t = np.divide(tracks.dx, tracks.length, out=np.ones_like(tracks.dx), where=tracks.dx > 0)
    return sin_t, tracks.cot * sin_t


def _depth(tracks: _Tracks, u: np.ndarray, rows: np.ndarray, cfg: KLMSimConfig) -> np.ndarray:
    """Depth [mm] behind the front face of the point at fraction ``u`` along the chords ``rows``."""
    return tracks.x_a[rows] + u * tracks.dx[rows] + (cfg.x_ref - cfg.bar_front_x)


def _energy(
    tracks: _Tracks, p: np.ndarray, cfg: KLMSimConfig, rng: np.random.Generator
) -> np.ndarray:
    """E_dep [MeV] per track (module docstring, step 3); 0 for a track that misses the bar."""
    c = _collisions(tracks, p, cfg)
    track = np.repeat(np.arange(len(p)), rng.poisson(c.rate))
    inv1 = 1 / c.eps1
    eps = 1 / (inv1[track] - rng.random(len(track)) * (inv1 - 1 / c.w_max)[track])
    spin = rng.random(len(track)) < 1 - c.beta2[track] * eps / c.w_max[track]
    track, eps = track[spin], eps[spin]
    sin_t, cos_t = _track_angles(tracks)
    depth = _depth(tracks, rng.random(len(track)), track, cfg)
    phi = rng.uniform(0, 2 * np.pi, len(track))
    kept = _delta_deposit(eps, c.w_max[track], depth, sin_t[track], cos_t[track], phi, cfg)
    soft = c.soft_mean + np.sqrt(c.soft_var) * rng.standard_normal(len(p))
    return np.maximum(soft + np.bincount(track, kept, minlength=len(p)), 0.0)


def mean_energy_deposit(
    z_hit: np.ndarray, theta: np.ndarray, p: np.ndarray, cfg: KLMSimConfig
) -> np.ndarray:
    """Mean E_dep [MeV] at each context (z_hit [mm], θ [rad], |p| [GeV]): the Bethe mean over
    the chord less the mean energy δ rays carry out of the bar (step 3), by Gauss-Legendre
    quadrature over the transfer (in ln ε), the start along the chord and the azimuth.

    Example:
        >>> e = mean_energy_deposit(0.0, 1.4, 1.0, KLMSimConfig())   # 10.15 mm of plastic
        >>> bool(1.85 < e[0] < 1.95), round(float(mean_dedx(1.0, KLMSimConfig()) * 10.15), 2)
        (True, 2.12)
    """
    z_hit, theta, p = _broadcast_float(z_hit, theta, p)
    tracks = _tracks(z_hit, theta, p, cfg)
    c = _collisions(tracks, p, cfg)
    sin_t, cos_t = _track_angles(tracks)
    (xe, we), (xu, wu), (xp, wp) = (np.polynomial.legendre.leggauss(n) for n in _ESCAPE_NODES)
    u = np.repeat((xu + 1) / 2, len(xp))
    phi = np.tile((xp + 1) * np.pi / 2, len(xu))  # symmetric about φ = 0: [0, π] suffices
    weight = np.outer(wu, wp).ravel() / 4
    escaped = np.zeros(len(p))
    lo, hi = np.log(c.eps1), np.log(c.w_max)
    for x, w in zip(xe, we, strict=True):
        eps = np.exp(lo + (hi - lo) * (x + 1) / 2)
        rows = np.repeat(np.arange(len(p)), len(u))
        kept = _delta_deposit(
            eps[rows],
            c.w_max[rows],
            _depth(tracks, np.tile(u, len(p)), rows, cfg),
            sin_t[rows],
            cos_t[rows],
            np.tile(phi, len(p)),
            cfg,
        )
        lost = ((eps[rows] - kept).reshape(len(p), -1) * weight).sum(axis=1)
        # ξ/ε² (1 − β²ε/W) dε = ξ/ε (1 − β²ε/W) d ln ε
        density = c.xi / eps * (1 - c.beta2 * eps / c.w_max)
        escaped += w * (hi - lo) / 2 * density * lost
    return np.where(tracks.length > 0, mean_dedx(p, cfg) * tracks.length - escaped, 0.0)


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


def event_counts(events: int, cfg: KLMSimConfig) -> tuple[int, int]:
    """The events :func:`simulate` writes in all (``events``) and holds in memory at once
    (one file's).

    Example:
        >>> event_counts(5000, KLMSimConfig(events_per_file=2000))
        (5000, 2000)
    """
    return events, min(events, cfg.events_per_file)


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
