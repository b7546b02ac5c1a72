"""The exact Δt density of the KLM simulator against the simulator itself."""

from __future__ import annotations

import numpy as np
import pytest

from detlearn.recipes.klm_timing.density import (
    density_grid,
    log_density,
    mean_photon_count,
)
from detlearn.recipes.klm_timing.simulate import KLMSimConfig, sample_delays, simulate_events

DIRECT = KLMSimConfig()
WLS = KLMSimConfig(mode="wls")
AIR_GAP = KLMSimConfig(far_end_air_gap=True)


def chi2_against_density(
    dt: np.ndarray, context: tuple[float, float, float], cfg: KLMSimConfig, n_bins: int
) -> tuple[float, int]:
    """χ² of a histogram of ``dt`` in equal-probability bins of the exact density (bin integrals
    from a fine grid), with open first and last bins."""
    grid = np.arange(-3.0, cfg.gate, 0.004)
    _, f = density_grid(*context, cfg, dt=grid)
    cdf = np.concatenate([[0.0], np.cumsum((f[1:] + f[:-1]) / 2 * np.diff(grid))])
    inner = np.interp(np.linspace(0, cdf[-1], n_bins + 1)[1:-1], cdf, grid)
    probs = np.diff(np.concatenate([[0.0], np.interp(inner, grid, cdf), [1.0]]))
    observed, _ = np.histogram(dt, np.concatenate([[-np.inf], inner, [np.inf]]))
    expected = len(dt) * probs
    return float(((observed - expected) ** 2 / expected).sum()), n_bins - 1


def assert_consistent(chi2: float, ndf: int) -> None:
    assert abs(chi2 - ndf) < 5 * np.sqrt(2 * ndf), f"chi2 = {chi2:.1f} for ndf = {ndf}"


def draw(context: tuple[float, float, float], n: int, cfg: KLMSimConfig, seed: int) -> np.ndarray:
    z, theta, p = (np.full(n, v) for v in context)
    return sample_delays(z, theta, p, cfg, np.random.default_rng(seed))


def test_density_matches_ten_million_simulated_photons():
    context = (100.0, 1.3, 1.0)
    dt = draw(context, 10_000_000, DIRECT, seed=1)
    assert_consistent(*chi2_against_density(dt, context, DIRECT, n_bins=400))


@pytest.mark.parametrize(
    ("cfg", "context"),
    [
        (DIRECT, (650.0, 0.6, 0.3)),  # near the sensor, slow muon
        (DIRECT, (-500.0, 2.9, 4.0)),  # far end, steep backward track
        (WLS, (0.0, np.pi / 2, 1.0)),
        (WLS, (700.0, 0.5, 0.3)),
        (KLMSimConfig(particle="pi-", rise_time=0.9, decay_time=2.1), (-200.0, 1.0, 0.5)),
        (KLMSimConfig(wall_tir=False), (600.0, 1.7, 2.0)),
        (AIR_GAP, (-650.0, 1.2, 1.0)),
        (KLMSimConfig(far_end_air_gap=True, wall_tir=False), (-300.0, 1.5, 2.0)),
    ],
    ids=[
        "direct-near",
        "direct-steep",
        "wls-mid",
        "wls-near",
        "rise-pion",
        "no-tir",
        "air-gap",
        "air-gap-no-tir",
    ],
)
def test_density_matches_simulated_photons(cfg, context):
    dt = draw(context, 500_000, cfg, seed=2)
    assert_consistent(*chi2_against_density(dt, context, cfg, n_bins=100))


@pytest.mark.parametrize("cfg", [DIRECT, WLS, AIR_GAP], ids=["direct", "wls", "air-gap"])
@pytest.mark.parametrize(
    "context", [(0.0, np.pi / 2, 1.0), (740.0, 0.3, 0.2), (-745.0, 3.0, 9.0), (755.0, 2.5, 1.0)]
)
def test_density_integrates_to_one(cfg, context):
    grid = np.arange(-3.0, cfg.gate, 0.002)
    _, f = density_grid(*context, cfg, dt=grid)
    assert np.trapezoid(f, grid) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("cfg", [DIRECT, AIR_GAP], ids=["direct", "air-gap"])
def test_mean_photon_count_matches_simulated_counts(cfg):
    ev = simulate_events(3000, cfg, np.random.default_rng(4))
    expected = mean_photon_count(ev.z_hit, ev.theta, ev.p, cfg)
    residual = ev.n_photons - expected
    assert abs(residual.sum()) < 5 * np.sqrt((residual**2).sum())
    assert residual.sum() / expected.sum() == pytest.approx(0.0, abs=0.01)


def test_log_density_broadcasts_and_is_minus_inf_outside_support():
    out = log_density(np.array([[5.0], [DIRECT.gate + 1.0]]), 0.0, np.pi / 2, [1.0, 2.0], DIRECT)
    assert out.shape == (2, 2)
    assert np.all(np.isfinite(out[0])) and np.all(out[1] == -np.inf)
    missing = log_density(5.0, 900.0, np.pi / 2, 1.0, DIRECT)  # track beyond the bar's end
    assert missing == -np.inf
