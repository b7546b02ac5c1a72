"""The mass-grid resolution model: p(m_Φ,reco, m_ω,reco | m_Φ, m_ω), exact, and its sampler.

FEDHEX (``asatk/flows_pseudoaxions``) learns the reconstructed masses of Φ → γω (ω: a collimated
"two-prong" evaluated with a π⁰ hypothesis) on a sparse grid of generated masses and interpolates
between the grid points. This module defines the toy truth the recipe's simulator draws from, in
closed form, so an interpolating model can be scored against the exact density at any label.
Units: GeV.

``physics`` mode (physics.md §4.2). At a label (M, m) = (m_Φ, m_ω), with t = ``omega_threshold``
(0.415 GeV, the π⁺π⁻π⁰ threshold), the reconstructed pair (φ, ω) is a mixture. The Φ state and the
ω state are drawn independently:

- Φ **core** (1 − f_T): a correlated Gaussian with the ω core, μ_φ = ``phi_scale`` · M,
  σ_φ = sqrt((``phi_resolution`` · M)² + ``phi_noise``²); correlation ρ = ``correlation`` when the
  ω state is the core as well (the shared two-prong energy scale), none otherwise;
- Φ **mis-pairing tail** (f_T = ``phi_tail_fraction``): φ = ``phi_tail_top`` · M · B,
  B ~ Beta(``phi_tail_alpha``, ``phi_tail_beta``), a continuum below the peak;
- ω **core** (1 − f_L − f_H): μ_ω = ``omega_scale`` · m, σ_ω = sqrt((``omega_resolution`` · m)²
  + ``omega_noise``²), truncated to ω ≥ t;
- ω **low tail** (f_L = ``omega_low_fraction``): N(``omega_low_mean`` · m,
  (``omega_low_width`` · m)²) truncated to ω ≥ t, a shoulder reaching down to the threshold;
- ω **high outliers** (f_H = ``omega_high_fraction``): ω = max(μ_ω, t) + Exp(``omega_high_scale``)
  (an exponential above μ_ω truncated at t, which by memorylessness is this shifted exponential).

The correlated core is built as ω ~ TN(μ_ω, σ_ω; ω ≥ t), then φ | ω ~ TN(μ_φ + ρ σ_φ (ω − μ_ω)/σ_ω,
σ_φ sqrt(1 − ρ²); φ > 0): each factor is a one-dimensional truncated normal with its exact
normalization, so the joint density is exact and the support (φ > 0, ω ≥ t) holds by construction.
Where the truncation is far out (every default grid point but m = 0.25 GeV, whose generated mass
lies below the threshold and so piles up just above it) this is the plain bivariate Gaussian.
The density of the whole mixture is

    p = (1−f_T)[(1−f_L−f_H) C(φ,ω) + N_φ(φ)(f_L L(ω) + f_H H(ω))]
      + f_T T(φ)[(1−f_L−f_H) C_ω(ω) + f_L L(ω) + f_H H(ω)],

with C the correlated core, N_φ and C_ω its uncorrelated truncated-normal marginals, T, L, H the
tails above.

``gauss`` mode (FEDHEX's ``GridGaussGenerator``): the core alone, centred on the label
(μ_φ = M, μ_ω = m) with a fixed covariance, diagonal or full, the same truncation applying.
Its grid excludes the edges of the box: x_k = x_min + (k+1)(x_max − x_min)/(n+1).

Example:
    >>> cfg = MassGridConfig()
    >>> grid_points(cfg)[[0, -1]].tolist()
    [[100.0, 0.25], [5410.0, 9.025]]
    >>> x = sample_reco(np.array([[2460.0, 5.125]] * 3), cfg, np.random.default_rng(0))
    >>> bool(np.all(np.isfinite(log_density(x, np.array([2460.0, 5.125]), cfg))))
    True
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy.special import betaln, log_ndtr, logsumexp, ndtri_exp, xlog1py, xlogy

__all__ = [
    "CONTEXT",
    "TARGET",
    "MassGridConfig",
    "acceptance",
    "core_parameters",
    "gaussian_grid",
    "grid_points",
    "log_density",
    "sample_reco",
]

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)

#: Context (generated masses) and target (reconstructed masses) columns of the recipe [GeV].
CONTEXT = ("label_phi", "label_omega")
TARGET = ("phi", "omega")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=True)


class MassGridConfig(_Strict):
    """Every number of the mass-grid simulator (defaults: FEDHEX's 10x10box_10k_jun2023 grid).

    Example:
        >>> MassGridConfig(mode="gauss", gauss_covariance="full", gauss_correlation=0.5).mode
        'gauss'
    """

    mode: Literal["physics", "gauss"] = Field(
        "physics", description="'physics' (resolution model) or 'gauss' (FEDHEX grid Gaussians)"
    )
    # Grid of generated masses
    phi_start: float = Field(100.0, gt=0, description="first generated m_Φ (physics mode) [GeV]")
    phi_step: float = Field(590.0, gt=0, description="m_Φ grid step (physics mode) [GeV]")
    phi_points: int = Field(10, gt=0, description="number of m_Φ grid values")
    omega_start: float = Field(0.25, gt=0, description="first generated m_ω (physics mode) [GeV]")
    omega_step: float = Field(0.975, gt=0, description="m_ω grid step (physics mode) [GeV]")
    omega_points: int = Field(10, gt=0, description="number of m_ω grid values")
    omega_threshold: float = Field(
        0.415, ge=0, description="lowest m_ω,reco: the π⁺π⁻π⁰ threshold 2m_π± + m_π0 [GeV]"
    )
    # Correlated core
    phi_scale: float = Field(0.99, gt=0, description="core mean of m_Φ,reco / m_Φ")
    phi_resolution: float = Field(0.024, ge=0, description="core σ_Φ / m_Φ, constant term")
    phi_noise: float = Field(10.0, ge=0, description="core σ_Φ term independent of m_Φ [GeV]")
    omega_scale: float = Field(0.97, gt=0, description="core mean of m_ω,reco / m_ω")
    omega_resolution: float = Field(0.09, ge=0, description="core σ_ω / m_ω, constant term")
    omega_noise: float = Field(0.02, ge=0, description="core σ_ω term independent of m_ω [GeV]")
    correlation: float = Field(0.4, gt=-1, lt=1, description="correlation ρ of the two cores")
    # Tails
    phi_tail_fraction: float = Field(
        0.12, ge=0, le=1, description="fraction of mis-paired m_Φ (low continuum)"
    )
    phi_tail_top: float = Field(0.9, gt=0, description="upper end of the m_Φ tail / m_Φ")
    phi_tail_alpha: float = Field(1.5, gt=0, description="Beta shape α of the m_Φ tail")
    phi_tail_beta: float = Field(1.5, gt=0, description="Beta shape β of the m_Φ tail")
    omega_low_fraction: float = Field(0.2, ge=0, le=1, description="fraction in the low m_ω tail")
    omega_low_mean: float = Field(0.6, gt=0, description="low m_ω tail: Gaussian mean / m_ω")
    omega_low_width: float = Field(0.25, gt=0, description="low m_ω tail: Gaussian σ / m_ω")
    omega_high_fraction: float = Field(
        0.01, ge=0, le=1, description="fraction of high m_ω outliers"
    )
    omega_high_scale: float = Field(
        1.5, gt=0, description="high m_ω outliers: exponential scale above the core mean [GeV]"
    )
    # Gauss mode
    gauss_phi_range: tuple[float, float] = Field(
        (0.0, 5500.0), description="gauss mode: m_Φ box; grid edges excluded [GeV]"
    )
    gauss_omega_range: tuple[float, float] = Field(
        (0.0, 11.0), description="gauss mode: m_ω box; grid edges excluded [GeV]"
    )
    gauss_sigma: tuple[float, float] = Field(
        (100.0, 0.15), description="gauss mode: σ of (m_Φ,reco, m_ω,reco) [GeV]"
    )
    gauss_covariance: Literal["diag", "full"] = Field(
        "diag", description="gauss mode: 'diag' (DiagCov) or 'full' (FullCov, gauss_correlation)"
    )
    gauss_correlation: float | None = Field(
        None, gt=-1, lt=1, description="gauss mode, full covariance: correlation ρ"
    )
    # Selection and file layout
    acceptance_max: float = Field(
        0.08, gt=0, le=1, description="physics mode: acceptance at high m_Φ"
    )
    acceptance_scale: float = Field(
        800.0, gt=0, description="physics mode: acceptance = max · (1 − exp(−m_Φ / scale)) [GeV]"
    )
    photon_pt_cut: float = Field(
        220.0, gt=0, description="photon pT threshold of the selection [GeV]"
    )
    no_candidate_fraction: float = Field(
        0.2, ge=0, le=1, description="rejected events without a Φ candidate (indices -1)"
    )
    region_fail_fraction: float = Field(
        0.3, ge=0, le=1, description="rejected events with CBL_Region == 2 (others fail on pT)"
    )
    extra_photons: float = Field(0.6, ge=0, description="mean number of decoy photons per event")
    extra_twoprongs: float = Field(
        1.0, ge=0, description="mean number of decoy two-prongs per event"
    )

    @model_validator(mode="after")
    def _consistent(self) -> MassGridConfig:
        if self.omega_low_fraction + self.omega_high_fraction > 1:
            raise ValueError("omega_low_fraction + omega_high_fraction must not exceed 1")
        if self.no_candidate_fraction + self.region_fail_fraction > 1:
            raise ValueError("no_candidate_fraction + region_fail_fraction must not exceed 1")
        if self.phi_resolution == 0 and self.phi_noise == 0:
            raise ValueError("phi_resolution and phi_noise cannot both be 0")
        if self.omega_resolution == 0 and self.omega_noise == 0:
            raise ValueError("omega_resolution and omega_noise cannot both be 0")
        if min(self.gauss_sigma) <= 0:
            raise ValueError("gauss_sigma must be positive")
        for name in ("gauss_phi_range", "gauss_omega_range"):
            lo, hi = getattr(self, name)
            if hi <= lo:
                raise ValueError(f"{name} must be (low, high) with high > low")
        if (self.gauss_covariance == "full") != (self.gauss_correlation is not None):
            raise ValueError("gauss_correlation is required by, and only by, gauss_covariance full")
        return self


def gaussian_grid(
    phi_range: tuple[float, float], omega_range: tuple[float, float], n_phi: int, n_omega: int
) -> np.ndarray:
    """FEDHEX ``GridGaussGenerator`` centres: an interior grid that excludes the box edges.

    x_k = x_min + (k+1)(x_max − x_min)/(n+1) for k = 0…n−1, the same for y, m_Φ varying slowest.

    Returns:
        An ``(n_phi * n_omega, 2)`` array of (m_Φ, m_ω) [GeV].

    Example:
        >>> gaussian_grid((0.0, 3.0), (0.0, 1.0), 2, 1).tolist()
        [[1.0, 0.5], [2.0, 0.5]]
    """
    xs = phi_range[0] + np.arange(1, n_phi + 1) * (phi_range[1] - phi_range[0]) / (n_phi + 1)
    ys = omega_range[0] + np.arange(1, n_omega + 1) * (omega_range[1] - omega_range[0]) / (
        n_omega + 1
    )
    return np.stack(np.meshgrid(xs, ys, indexing="ij"), axis=-1).reshape(-1, 2)


def grid_points(cfg: MassGridConfig) -> np.ndarray:
    """The generated (m_Φ, m_ω) grid [GeV], shape ``(phi_points * omega_points, 2)``.

    physics mode: m_Φ = ``phi_start`` + k ``phi_step`` (100 … 5410 by default),
    m_ω = ``omega_start`` + k ``omega_step`` (0.25 … 9.025); gauss mode: :func:`gaussian_grid`.
    m_Φ varies slowest: point i is (m_Φ[i // omega_points], m_ω[i % omega_points]).

    Example:
        >>> grid_points(MassGridConfig(phi_points=2, omega_points=2)).tolist()
        [[100.0, 0.25], [100.0, 1.225], [690.0, 0.25], [690.0, 1.225]]
    """
    if cfg.mode == "gauss":
        return gaussian_grid(
            cfg.gauss_phi_range, cfg.gauss_omega_range, cfg.phi_points, cfg.omega_points
        )
    xs = cfg.phi_start + cfg.phi_step * np.arange(cfg.phi_points)
    ys = cfg.omega_start + cfg.omega_step * np.arange(cfg.omega_points)
    # Rounding to 1e-9 GeV makes 0.25 + 3 * 0.975 print (and compare) as 3.175.
    grid = np.stack(np.meshgrid(xs, ys, indexing="ij"), axis=-1).reshape(-1, 2)
    return np.round(grid, 9)


def acceptance(labels: np.ndarray, cfg: MassGridConfig) -> np.ndarray:
    """Fraction of generated events passing the selection, per label row.

    physics mode: ``acceptance_max`` · (1 − exp(−m_Φ / ``acceptance_scale``)) (≈ 8 % at high
    m_Φ, ≈ 1 % at 100 GeV, as in the FEDHEX samples); gauss mode: 1 (FEDHEX's generator has no
    selection). It does not depend on the reconstructed masses, so the density of the events
    that pass is :func:`log_density` unchanged.

    Example:
        >>> acceptance(np.array([[1e9, 1.0]]), MassGridConfig()).round(3).tolist()
        [0.08]
    """
    labels = np.asarray(labels, dtype=np.float64).reshape(-1, 2)
    if cfg.mode == "gauss":
        return np.ones(len(labels))
    return cfg.acceptance_max * -np.expm1(-labels[:, 0] / cfg.acceptance_scale)


def core_parameters(
    labels: np.ndarray, cfg: MassGridConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """(μ_φ, σ_φ, μ_ω, σ_ω, ρ) of the correlated core at each label row [GeV; ρ unitless]."""
    m_phi, m_om = labels[:, 0], labels[:, 1]
    if cfg.mode == "gauss":
        rho = cfg.gauss_correlation if cfg.gauss_correlation is not None else 0.0
        s_phi, s_om = cfg.gauss_sigma
        return m_phi, np.full_like(m_phi, s_phi), m_om, np.full_like(m_om, s_om), rho
    return (
        cfg.phi_scale * m_phi,
        np.hypot(cfg.phi_resolution * m_phi, cfg.phi_noise),
        cfg.omega_scale * m_om,
        np.hypot(cfg.omega_resolution * m_om, cfg.omega_noise),
        cfg.correlation,
    )


def _tn_logpdf(x: np.ndarray, mu: np.ndarray, sigma: np.ndarray, lower: float) -> np.ndarray:
    """log of N(μ, σ²) truncated to x ≥ lower; log_ndtr keeps far truncations exact."""
    z = (x - mu) / sigma
    out = -0.5 * z**2 - np.log(sigma) - _LOG_SQRT_2PI - log_ndtr((mu - lower) / sigma)
    return np.where(x >= lower, out, -np.inf)


def _tn_sample(
    mu: np.ndarray, sigma: np.ndarray, lower: float, rng: np.random.Generator
) -> np.ndarray:
    """Draws of N(μ, σ²) truncated to x > lower, by inversion in log space.

    With u uniform on (0, 1], z = −Φ⁻¹(u Φ((μ − lower)/σ)) ≥ (lower − μ)/σ; ``ndtri_exp`` inverts
    log Φ, so a truncation hundreds of σ out is still sampled exactly.
    """
    u = 1.0 - rng.random(len(mu))
    z = -ndtri_exp(np.log(u) + log_ndtr((mu - lower) / sigma))
    # Rounding may land on the boundary (probability ~1e-16); keep the support open there.
    return np.maximum(mu + sigma * z, np.nextafter(lower, np.inf))


def _components(
    x: np.ndarray, labels: np.ndarray, cfg: MassGridConfig
) -> tuple[list[np.ndarray], list[float]]:
    """Log densities of the mixture terms and their weights (see the module docstring)."""
    phi, om = x[:, 0], x[:, 1]
    t = cfg.omega_threshold
    mu_p, s_p, mu_o, s_o, rho = core_parameters(labels, cfg)
    core_om = _tn_logpdf(om, mu_o, s_o, t)
    cond_mu = mu_p + rho * s_p * (om - mu_o) / s_o
    core = core_om + _tn_logpdf(phi, cond_mu, s_p * math.sqrt(1.0 - rho**2), 0.0)
    if cfg.mode == "gauss":
        return [core], [1.0]
    m_phi, m_om = labels[:, 0], labels[:, 1]
    marg_phi = _tn_logpdf(phi, mu_p, s_p, 0.0)
    top = cfg.phi_tail_top * m_phi
    b = phi / top
    a_, b_ = cfg.phi_tail_alpha, cfg.phi_tail_beta
    with np.errstate(divide="ignore", invalid="ignore"):
        tail_phi = xlogy(a_ - 1, b) + xlog1py(b_ - 1, -b) - betaln(a_, b_) - np.log(top)
    tail_phi = np.where((b > 0) & (b < 1), tail_phi, -np.inf)
    low_om = _tn_logpdf(om, cfg.omega_low_mean * m_om, cfg.omega_low_width * m_om, t)
    base = np.maximum(mu_o, t)
    high_om = np.where(
        om >= base, -(om - base) / cfg.omega_high_scale - math.log(cfg.omega_high_scale), -np.inf
    )
    f_t, f_l, f_h = cfg.phi_tail_fraction, cfg.omega_low_fraction, cfg.omega_high_fraction
    f_c = 1.0 - f_l - f_h
    terms = [
        core,
        marg_phi + low_om,
        marg_phi + high_om,
        tail_phi + core_om,
        tail_phi + low_om,
        tail_phi + high_om,
    ]
    weights = [
        (1 - f_t) * f_c,
        (1 - f_t) * f_l,
        (1 - f_t) * f_h,
        f_t * f_c,
        f_t * f_l,
        f_t * f_h,
    ]
    return terms, weights


def _rows(x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"x must have shape (N, 2), got {x.shape}")
    labels = np.broadcast_to(np.asarray(labels, dtype=np.float64), x.shape)
    return x, labels


def log_density(x: np.ndarray, labels: np.ndarray, cfg: MassGridConfig) -> np.ndarray:
    """Exact log p(m_Φ,reco, m_ω,reco | m_Φ, m_ω) [log GeV⁻²] of the simulator's reco masses.

    Args:
        x: ``(N, 2)`` reconstructed (m_Φ, m_ω) [GeV].
        labels: ``(N, 2)`` generated (m_Φ, m_ω) [GeV], or one ``(2,)`` label for every row.
        cfg: the simulator config.

    Returns:
        ``(N,)`` log densities; −inf outside the support (m_Φ,reco ≤ 0 or m_ω,reco < threshold).

    Example:
        >>> cfg = MassGridConfig(mode="gauss")
        >>> float(log_density(np.array([[1000.0, 3.0]]), np.array([1000.0, 3.0]), cfg)[0]
        ...       + np.log(2 * np.pi * 100.0 * 0.15)).__round__(9)
        0.0
    """
    x, labels = _rows(x, labels)
    terms, weights = _components(x, labels, cfg)
    kept = [(term, w) for term, w in zip(terms, weights, strict=True) if w > 0]
    stacked = np.stack([term for term, _ in kept])
    log_w = np.log([w for _, w in kept])[:, None]
    # The truncated normals include their lower bound; m_Φ,reco = 0 is outside the support.
    return np.where(x[:, 0] > 0, logsumexp(stacked + log_w, axis=0), -np.inf)


def sample_reco(labels: np.ndarray, cfg: MassGridConfig, rng: np.random.Generator) -> np.ndarray:
    """One draw of (m_Φ,reco, m_ω,reco) [GeV] per label row, exactly as :func:`log_density` says.

    Args:
        labels: ``(N, 2)`` generated (m_Φ, m_ω) [GeV].
        cfg: the simulator config.
        rng: the random generator (the draws depend only on it, the labels and the config).

    Returns:
        ``(N, 2)`` array; always m_Φ,reco > 0 and m_ω,reco ≥ ``omega_threshold``.

    Example:
        >>> x = sample_reco(np.full((1000, 2), [2460.0, 5.125]), MassGridConfig(),
        ...                 np.random.default_rng(1))
        >>> bool((x[:, 1] > 0.415).all() and (x[:, 0] > 0).all())
        True
    """
    labels = np.asarray(labels, dtype=np.float64)
    if labels.ndim != 2 or labels.shape[1] != 2:
        raise ValueError(f"labels must have shape (N, 2), got {labels.shape}")
    n = len(labels)
    t = cfg.omega_threshold
    mu_p, s_p, mu_o, s_o, rho = core_parameters(labels, cfg)
    om_core = _tn_sample(mu_o, s_o, t, rng)
    if cfg.mode == "gauss":
        cond_mu = mu_p + rho * s_p * (om_core - mu_o) / s_o
        phi = _tn_sample(cond_mu, s_p * math.sqrt(1.0 - rho**2), 0.0, rng)
        return np.stack([phi, om_core], axis=1)
    m_phi, m_om = labels[:, 0], labels[:, 1]
    # Every component is drawn for every row and then selected, so the stream of random numbers
    # (and hence each row's draw) does not depend on which states the other rows fell into.
    phi_is_tail = rng.random(n) < cfg.phi_tail_fraction
    r = rng.random(n)
    om_is_low = r < cfg.omega_low_fraction
    om_is_high = ~om_is_low & (r < cfg.omega_low_fraction + cfg.omega_high_fraction)
    om_is_core = ~om_is_low & ~om_is_high
    om_low = _tn_sample(cfg.omega_low_mean * m_om, cfg.omega_low_width * m_om, t, rng)
    om_high = np.maximum(mu_o, t) + rng.exponential(cfg.omega_high_scale, n)
    om = np.where(om_is_core, om_core, np.where(om_is_low, om_low, om_high))
    cond_mu = np.where(om_is_core, mu_p + rho * s_p * (om - mu_o) / s_o, mu_p)
    cond_s = np.where(om_is_core, s_p * math.sqrt(1.0 - rho**2), s_p)
    phi_core = _tn_sample(cond_mu, cond_s, 0.0, rng)
    phi_tail = cfg.phi_tail_top * m_phi * rng.beta(cfg.phi_tail_alpha, cfg.phi_tail_beta, n)
    phi = np.where(phi_is_tail, phi_tail, phi_core)
    return np.stack([phi, om], axis=1)
