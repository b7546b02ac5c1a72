"""mass-grid recipe: the FEDHEX grid, the exact density against its sampler, the ROOT round trip."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest
import uproot
from scipy import stats

from detlearn.config import deep_merge, validate_config
from detlearn.errors import DetlearnError
from detlearn.io.dataset import Dataset
from detlearn.prepare import prepare
from detlearn.recipes import get_recipe
from detlearn.recipes.mass_grid import (
    MassGridConfig,
    acceptance,
    gaussian_grid,
    grid_points,
    log_density,
    sample_reco,
    simulate,
    simulate_point,
)

CANONICAL = (2460.0, 5.125)
FULL_GAUSS = MassGridConfig(mode="gauss", gauss_covariance="full", gauss_correlation=-0.6)


def _feature_points(label, cfg):
    """Panel edges fine enough for every feature of the density at ``label`` (GeV)."""
    m_phi, m_om = label
    t = cfg.omega_threshold
    if cfg.mode == "gauss":
        (s_p, s_o), mu_p, mu_o = cfg.gauss_sigma, m_phi, m_om
        phi_pts, om_pts = [], []
    else:
        mu_p, s_p = cfg.phi_scale * m_phi, np.hypot(cfg.phi_resolution * m_phi, cfg.phi_noise)
        mu_o, s_o = cfg.omega_scale * m_om, np.hypot(cfg.omega_resolution * m_om, cfg.omega_noise)
        top = cfg.phi_tail_top * m_phi
        low_mu, low_s = cfg.omega_low_mean * m_om, cfg.omega_low_width * m_om
        base = max(mu_o, t)
        phi_pts = [top * np.linspace(0, 1, 41)]
        om_pts = [
            low_mu + low_s * np.arange(-8, 8.01, 0.25),
            base + cfg.omega_high_scale * np.arange(0, 40.01, 0.5),
        ]
    phi = np.concatenate(
        [[0.0, mu_p + 12 * s_p], mu_p + s_p * np.arange(-12, 12.01, 0.25), *phi_pts]
    )
    om = np.concatenate(
        [[t, max(mu_o, t) + 12 * s_o], mu_o + s_o * np.arange(-12, 12.01, 0.25), *om_pts]
    )
    return np.unique(phi[phi >= 0]), np.unique(om[om >= t])


def _bin_probabilities(label, cfg, phi_bins, om_bins, nodes=6):
    """∫∫ p over each (phi, omega) bin: Gauss-Legendre on panels refined at every feature."""
    phi_f, om_f = _feature_points(label, cfg)
    panels = []
    for bins, feats in ((phi_bins, phi_f), (om_bins, om_f)):
        inside = feats[(feats > bins[0]) & (feats < bins[-1])]
        panels.append(np.unique(np.concatenate([bins, inside])))
    x, w = np.polynomial.legendre.leggauss(nodes)

    def nodes_of(edges):
        lo, hi = edges[:-1, None], edges[1:, None]
        return ((lo + hi) / 2 + (hi - lo) / 2 * x).ravel(), ((hi - lo) / 2 * w).ravel()

    (pp, pw), (op, ow) = nodes_of(panels[0]), nodes_of(panels[1])
    grid = np.stack(np.meshgrid(pp, op, indexing="ij"), axis=-1).reshape(-1, 2)
    dens = np.exp(log_density(grid, np.asarray(label), cfg)).reshape(len(pp), len(op))
    per_panel = (
        (dens * pw[:, None] * ow[None, :])
        .reshape(len(panels[0]) - 1, nodes, len(panels[1]) - 1, nodes)
        .sum(axis=(1, 3))
    )
    starts = [np.searchsorted(p, b[:-1]) for p, b in zip(panels, (phi_bins, om_bins), strict=True)]
    return np.add.reduceat(np.add.reduceat(per_panel, starts[0], axis=0), starts[1], axis=1)


def test_physics_grid_is_the_fedhex_grid():
    grid = grid_points(MassGridConfig())
    phi = [100, 690, 1280, 1870, 2460, 3050, 3640, 4230, 4820, 5410]
    omega = [0.25, 1.225, 2.2, 3.175, 4.15, 5.125, 6.1, 7.075, 8.05, 9.025]
    assert grid.shape == (100, 2)
    assert grid[:, 0].tolist() == np.repeat(phi, 10).astype(float).tolist()
    assert grid[:, 1].tolist() == np.tile(omega, 10).tolist()


def test_gauss_grid_excludes_the_box_edges():
    centers = np.arange(1, 11) / 11
    grid = gaussian_grid((0.0, 1.0), (0.0, 1.0), 10, 10)
    np.testing.assert_allclose(grid[::10, 0], centers)
    np.testing.assert_allclose(grid[:10, 1], centers)
    cfg = MassGridConfig(mode="gauss", phi_points=4, omega_points=2)
    np.testing.assert_allclose(np.unique(grid_points(cfg)[:, 0]), 5500 * np.arange(1, 5) / 5)
    np.testing.assert_allclose(np.unique(grid_points(cfg)[:, 1]), 11 * np.arange(1, 3) / 3)


def test_sampling_and_simulation_are_deterministic(tmp_path):
    labels = grid_points(MassGridConfig())
    a = sample_reco(labels, MassGridConfig(), np.random.default_rng(5))
    b = sample_reco(labels, MassGridConfig(), np.random.default_rng(5))
    assert np.array_equal(a, b)
    opts = {"phi_points": 2, "omega_points": 1}
    runs = [
        simulate(tmp_path / name, 50, seed, opts) for name, seed in [("a", 3), ("b", 3), ("c", 4)]
    ]
    read = [[uproot.open(f)["Events"].arrays(library="np") for f in files] for files in runs]
    assert all(
        np.array_equal(read[0][i]["CBL_RecoPhi_mass"], read[1][i]["CBL_RecoPhi_mass"])
        for i in range(2)
    )
    assert not np.array_equal(read[0][0]["CBL_RecoPhi_mass"], read[2][0]["CBL_RecoPhi_mass"])
    assert not list(tmp_path.glob("*/.*.tmp"))


def test_a_write_that_fails_half_way_leaves_no_file(tmp_path, monkeypatch):
    # e.g. the disk filling up while uproot writes the baskets
    def full(self, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(uproot.writing.writable.WritableTree, "extend", full)
    with pytest.raises(DetlearnError, match=r"grid_000\.root: disk full"):
        simulate(tmp_path / "sim", 50, 0, {"phi_points": 2, "omega_points": 1})
    assert list((tmp_path / "sim").iterdir()) == []


@pytest.mark.parametrize(
    ("label", "cfg"),
    [
        (CANONICAL, MassGridConfig()),
        ((100.0, 0.25), MassGridConfig()),  # m_omega below threshold: piles up just above it
        ((5410.0, 9.025), MassGridConfig()),
        ((1000.0, 0.8), FULL_GAUSS),  # omega truncated 2.6 sigma below the centre
    ],
)
def test_density_integrates_to_one_over_the_support(label, cfg):
    phi_f, om_f = _feature_points(label, cfg)
    total = _bin_probabilities(label, cfg, phi_f[[0, -1]], om_f[[0, -1]])
    assert abs(total.item() - 1.0) < 1e-3


@pytest.mark.parametrize(
    ("label", "cfg"),
    [(CANONICAL, MassGridConfig()), ((690.0, 0.25), MassGridConfig()), ((1000.0, 0.8), FULL_GAUSS)],
)
def test_sample_histogram_matches_the_density(label, cfg):
    n = 1_000_000
    x = sample_reco(np.tile(label, (n, 1)), cfg, np.random.default_rng(11))
    # Bins from an independent pilot sample's quantiles, plus the density's edges.
    pilot = sample_reco(np.tile(label, (20_000, 1)), cfg, np.random.default_rng(12))
    phi_f, om_f = _feature_points(label, cfg)
    q = np.linspace(0, 1, 21)[1:-1]
    phi_bins = np.unique(np.concatenate([np.quantile(pilot[:, 0], q), phi_f[[0, -1]]]))
    om_bins = np.unique(np.concatenate([np.quantile(pilot[:, 1], q), om_f[[0, -1]]]))
    if cfg.mode == "physics":
        phi_bins = np.unique(np.append(phi_bins, cfg.phi_tail_top * label[0]))
    observed, _, _ = np.histogram2d(x[:, 0], x[:, 1], [phi_bins, om_bins])
    assert observed.sum() == n
    expected = n * _bin_probabilities(label, cfg, phi_bins, om_bins)
    assert abs(expected.sum() - n) < 1e-3 * n
    used = expected > 5
    chi2 = (((observed - expected) ** 2) / expected)[used].sum()
    ndf = used.sum() - 1
    assert abs(chi2 - ndf) < 5 * np.sqrt(2 * ndf), (chi2, ndf)


def test_core_means_widths_and_correlation_follow_the_config():
    cfg = MassGridConfig(phi_tail_fraction=0, omega_low_fraction=0, omega_high_fraction=0)
    m_phi, m_om = CANONICAL
    x = sample_reco(np.tile(CANONICAL, (400_000, 1)), cfg, np.random.default_rng(2))
    sigma_phi = np.hypot(cfg.phi_resolution * m_phi, cfg.phi_noise)
    sigma_om = np.hypot(cfg.omega_resolution * m_om, cfg.omega_noise)
    assert 0.024 < sigma_phi / m_phi < 0.026 and 0.088 < sigma_om / m_om < 0.092
    np.testing.assert_allclose(x.mean(axis=0), [0.99 * m_phi, 0.97 * m_om], rtol=2e-4)
    half68 = (np.quantile(x, 0.84134, axis=0) - np.quantile(x, 0.15866, axis=0)) / 2
    np.testing.assert_allclose(half68, [sigma_phi, sigma_om], rtol=0.01)
    assert abs(np.corrcoef(x.T)[0, 1] - 0.4) < 0.01


def test_mixture_mean_follows_the_config():
    cfg = MassGridConfig()
    m_phi, m_om = CANONICAL
    x = sample_reco(np.tile(CANONICAL, (1_000_000, 1)), cfg, np.random.default_rng(3))
    f_t, f_l, f_h = cfg.phi_tail_fraction, cfg.omega_low_fraction, cfg.omega_high_fraction
    a, b = cfg.phi_tail_alpha, cfg.phi_tail_beta
    mean_phi = (1 - f_t) * 0.99 * m_phi + f_t * cfg.phi_tail_top * m_phi * a / (a + b)
    low_mu, low_s = 0.6 * m_om, 0.25 * m_om
    low_mean = stats.truncnorm.mean((0.415 - low_mu) / low_s, np.inf, low_mu, low_s)
    mean_om = (1 - f_l - f_h) * 0.97 * m_om + f_l * low_mean + f_h * (0.97 * m_om + 1.5)
    stderr = x.std(axis=0) / np.sqrt(len(x))
    assert np.all(np.abs(x.mean(axis=0) - [mean_phi, mean_om]) < 5 * stderr)


def test_support_holds_everywhere_on_the_grid():
    cfg = MassGridConfig()
    labels = np.repeat(grid_points(cfg), 5_000, axis=0)
    x = sample_reco(labels, cfg, np.random.default_rng(4))
    assert x[:, 1].min() >= 0.415 and x[:, 0].min() > 0
    outside = np.array([[-1.0, 2.0], [100.0, 0.4149], [0.0, 1.0]])
    assert np.all(log_density(outside, np.array([690.0, 1.225]), cfg) == -np.inf)


def test_prepare_reads_exactly_the_selected_events(tmp_path):
    opts = {"phi_points": 3, "omega_points": 3, "phi_start": 690.0}
    files = simulate(tmp_path / "sim", 300, 7, opts)
    assert [f.name for f in files] == [f"grid_{i:03d}.root" for i in range(9)]
    raw = deep_merge(
        get_recipe("mass-grid").default_config(),
        {"data": {"inputs": [str(tmp_path / "sim" / "*.root")]}, "executor": {"workers": 1}},
    )
    prepare(validate_config(raw), tmp_path / "ds", progress=False)
    rows = Dataset.open(tmp_path / "ds").load(["phi", "omega", "label_phi", "label_omega", "event"])
    cfg = MassGridConfig(**opts)
    seeds = np.random.SeedSequence(7).spawn(9)
    total = 0
    for i, label in enumerate(grid_points(cfg)):
        truth = simulate_point(label, 300, cfg, np.random.default_rng(seeds[i]))
        mine = (rows["label_phi"] == label[0]) & (rows["label_omega"] == label[1])
        order = np.argsort(rows["event"][mine])
        assert np.array_equal(rows["event"][mine][order], np.flatnonzero(truth.passed))
        assert np.array_equal(rows["phi"][mine][order], truth.reco[truth.passed, 0])
        assert np.array_equal(rows["omega"][mine][order], truth.reco[truth.passed, 1])
        total += mine.sum()
    assert total == len(rows["phi"])
    tree = uproot.open(files[4])["Events"]
    assert {"CBL_RecoPhi_mass", "TwoProng_massPi0", "Photon_pt", "nPhoton", "GenOmega_mass"} <= set(
        tree.keys()
    )


def test_acceptance_is_the_selected_fraction():
    cfg = MassGridConfig()
    label = np.array(CANONICAL)
    ev = simulate_point(label, 200_000, cfg, np.random.default_rng(8))
    eff = acceptance(label[None], cfg)[0]
    assert 0.075 < eff < 0.08
    assert abs(ev.passed.mean() - eff) < 5 * np.sqrt(eff * (1 - eff) / len(ev.passed))
    b = ev.branches
    counts = ak.to_numpy(ak.num(b["Photon"].pt))
    flat_pt = ak.to_numpy(ak.flatten(b["Photon"].pt))
    index = b["CBL_RecoPhi_photonindex"]
    start = np.cumsum(counts) - counts
    selected_pt = np.where(index >= 0, flat_pt[start + np.maximum(index, 0)], -1.0)
    assert np.all(np.diff(flat_pt)[np.diff(np.repeat(start, counts)) == 0] <= 0)  # sorted by pT
    passes = (b["CBL_Region"] == 1) & (selected_pt > cfg.photon_pt_cut)
    assert np.array_equal(passes, ev.passed)
    # Rejected events fail for each of the three reasons.
    assert {0, 1, 2} <= set(np.unique(b["CBL_Region"][~ev.passed]).tolist())


@pytest.mark.parametrize(
    ("options", "events", "message"),
    [
        (
            {"phi_tial_fraction": 0.1},
            10,
            "unknown option 'phi_tial_fraction'; did you mean 'phi_tail_fraction'",
        ),
        ({"correlation": 1.5}, 10, "option 'correlation'"),
        ({"gauss_covariance": "full"}, 10, "gauss_correlation"),
        ({}, 0, "events per grid point"),
    ],
)
def test_bad_simulate_options_name_the_key(tmp_path, options, events, message):
    with pytest.raises(DetlearnError, match=message):
        simulate(tmp_path, events, 0, options)


def test_recipe_defaults_validate():
    cfg = validate_config(get_recipe("mass-grid").default_config())
    assert cfg.data.columns["omega"].lower == MassGridConfig().omega_threshold
    assert cfg.data.selection.endswith(f"> {MassGridConfig().photon_pt_cut:g})")
