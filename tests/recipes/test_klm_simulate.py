"""The built-in KLM bar simulator: gun kinematics, energy deposit, photons, EDM4hep files."""

from __future__ import annotations

from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot

from detlearn.errors import DetlearnError
from detlearn.recipes.klm_timing.simulate import (
    C_MM_PER_NS,
    PARTICLES,
    KLMSimConfig,
    mean_dedx,
    sample_delays,
    simulate,
    simulate_events,
    write_edm4hep,
)

VECTORS = [f"{v}.{c}" for v in ("vertex", "momentum") for c in "xyz"]
PARTICLE_LEAVES = [
    f"MCParticles.{leaf}" for leaf in ["PDG", "generatorStatus", "mass", "time", *VECTORS]
]


def hit_leaves(collection: str, legacy: bool) -> list[str]:
    energy = "EDep" if legacy else "eDep"
    members = ("cellID", energy, "time", "pathLength")
    members += tuple(f"{v}.{c}" for v in ("position", "momentum") for c in "xyz")
    relation = f"_{collection}_{'MCParticle' if legacy else 'particle'}"
    return [f"{collection}.{m}" for m in members] + [
        f"{relation}.index",
        f"{relation}.collectionID",
    ]


@pytest.fixture(scope="module")
def events():
    return simulate_events(400, KLMSimConfig(), np.random.default_rng(2))


def test_same_seed_gives_identical_events_for_any_thread_count():
    cfg = KLMSimConfig()
    a = simulate_events(600, cfg, np.random.default_rng(7), threads=1)
    b = simulate_events(600, cfg, np.random.default_rng(7), threads=2)
    c = simulate_events(600, cfg, np.random.default_rng(8))
    for name in ("z_hit", "theta", "p", "e_dep", "n_photons", "photon_time", "photon_z"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.photon_time[:100], c.photon_time[:100])


def test_theta_window_keeps_track_in_gun_z_range_over_window_depth(events):
    cfg = KLMSimConfig()
    cot = np.cos(events.theta) / np.sin(events.theta)
    z_deep = events.vertex_z + cfg.theta_window_depth * cot
    eps = 1e-9
    assert np.all((z_deep >= cfg.gun_z_min - eps) & (z_deep <= cfg.gun_z_max + eps))
    assert np.all((events.vertex_z >= cfg.gun_z_min) & (events.vertex_z <= cfg.gun_z_max))


def test_every_track_crosses_the_bar_when_the_gun_range_lies_inside_it():
    cfg = KLMSimConfig(gun_z_min=-740.0, gun_z_max=740.0)
    ev = simulate_events(2000, cfg, np.random.default_rng(3))
    assert np.all(ev.e_dep > 0)
    # The default gun range reaches z = 767 > 750: some tracks pass beyond the bar's end.
    default = simulate_events(2000, KLMSimConfig(), np.random.default_rng(3))
    assert np.any(default.e_dep == 0)


@pytest.mark.parametrize("particle", ["mu-", "pi-"])
def test_t_hit_is_straight_flight_from_vertex_to_reference_plane(particle):
    cfg = KLMSimConfig(particle=particle)
    ev = simulate_events(200, cfg, np.random.default_rng(4))
    mass = PARTICLES[particle][1]
    distance = np.hypot(cfg.x_ref - ev.vertex_x, ev.z_hit - ev.vertex_z)
    speed = ev.p / np.sqrt(ev.p**2 + mass**2) * C_MM_PER_NS
    np.testing.assert_allclose(ev.t_hit, distance / speed, rtol=1e-12)


@pytest.mark.parametrize("reference_x", [None, 1770.3, 1800.0])
def test_z_hit_is_where_the_momentum_line_crosses_the_reference_plane(reference_x):
    cfg = KLMSimConfig(reference_x=reference_x)
    ev = simulate_events(200, cfg, np.random.default_rng(5))
    x_ref = 1775.3 if reference_x is None else reference_x
    assert cfg.x_ref == x_ref
    expected = ev.vertex_z + (x_ref - ev.vertex_x) * ev.pz / ev.px
    np.testing.assert_allclose(ev.z_hit, expected, rtol=0, atol=1e-9)
    np.testing.assert_allclose(ev.theta, np.arccos(ev.pz / ev.p), rtol=1e-12)


def test_mip_dedx_is_two_mev_per_cm():
    p = np.geomspace(0.2, 2.0, 400)
    assert float(mean_dedx(p, KLMSimConfig()).min()) == pytest.approx(0.200, rel=0.02)


def test_mean_energy_deposit_is_bethe_dedx_times_path():
    cfg = KLMSimConfig(gun_z_min=-680.0, gun_z_max=680.0)
    ev = simulate_events(20_000, cfg, np.random.default_rng(6))
    # |cotθ| < 5: the track moves < 56 mm in z from the gun to the back face, so it crosses the
    # full thickness, path T / sinθ.
    full = np.abs(np.cos(ev.theta) / np.sin(ev.theta)) < 5
    path = cfg.bar_thickness / np.sin(ev.theta[full])
    expected = mean_dedx(ev.p[full], cfg) * path * 1e-3  # GeV
    residual = ev.e_dep[full] - expected
    tolerance = 5 * residual.std() / np.sqrt(full.sum())
    assert abs(residual.mean()) < tolerance
    assert abs(residual.mean()) < 0.01 * expected.mean()


def test_events_without_photons_are_kept(tmp_path: Path):
    cfg = KLMSimConfig(sensor_coverage=1e-4)
    ev = simulate_events(300, cfg, np.random.default_rng(8))
    assert len(ev) == 300
    assert (ev.n_photons == 0).sum() > 50
    path = write_edm4hep(ev, tmp_path / "sparse.root", cfg)
    tree = uproot.open(path)["events"]
    assert tree.num_entries == 300
    counts = ak.to_numpy(ak.num(tree[f"{cfg.collection}.time"].array()))
    np.testing.assert_array_equal(counts, ev.n_photons + 1)  # the muon's own hit, then photons


@pytest.mark.parametrize("legacy", [False, True])
def test_round_trip_through_edm4hep_file(tmp_path: Path, events, legacy):
    cfg = KLMSimConfig(legacy_names=legacy, collection="BarHits")
    path = write_edm4hep(events, tmp_path / "ev.edm4hep.root", cfg)
    assert [p.name for p in tmp_path.iterdir()] == ["ev.edm4hep.root"]  # no temporary left
    tree = uproot.open(path)["events"]
    leaves = PARTICLE_LEAVES + hit_leaves("BarHits", legacy)
    data_leaves = {k for k in tree.keys() if not k.startswith("n")}
    assert data_leaves == set(leaves)
    arrays = tree.arrays(leaves)
    relation = "_BarHits_MCParticle" if legacy else "_BarHits_particle"
    pdg = arrays["MCParticles.PDG"]
    linked = pdg[arrays[f"{relation}.index"]]
    # Each event's first hit is the muon's own (its energy deposit, at the reference plane);
    # every other hit links to an optical photon.
    assert ak.all(linked[:, 0] == PARTICLES["mu-"][0]) and ak.all(linked[:, 1:] == -22)
    np.testing.assert_array_equal(ak.to_numpy(ak.num(arrays["BarHits.time"])), events.n_photons + 1)
    e_dep = arrays["BarHits.EDep" if legacy else "BarHits.eDep"][:, 0]
    np.testing.assert_allclose(ak.to_numpy(e_dep), events.e_dep, rtol=1e-6)
    np.testing.assert_allclose(ak.to_numpy(arrays["BarHits.time"][:, 0]), events.t_hit, rtol=1e-6)
    np.testing.assert_allclose(ak.to_numpy(arrays["BarHits.position.z"][:, 0]), events.z_hit)
    assert ak.all(pdg[:, 0] == PARTICLES["mu-"][0])
    assert ak.all(arrays["MCParticles.generatorStatus"][:, 0] == 1)
    assert ak.all(arrays["MCParticles.generatorStatus"][:, 1:] == 0)
    np.testing.assert_array_equal(
        ak.to_numpy(ak.flatten(arrays["BarHits.time"][:, 1:])), events.photon_time
    )
    np.testing.assert_allclose(ak.to_numpy(arrays["MCParticles.vertex.z"][:, 0]), events.vertex_z)


def test_repo_reader_links_hits_to_photons(tmp_path: Path, events):
    from detlearn.io.edm4hep import read_hits

    cfg = KLMSimConfig()
    path = write_edm4hep(events, tmp_path / "ev.root", cfg)
    hits, unlinked = read_hits(uproot.open(path)["events"], cfg.collection, 0, len(events))
    assert unlinked == 0
    assert ak.all(hits["particle_PDG"][:, 0] == PARTICLES["mu-"][0])
    assert ak.all(hits["particle_PDG"][:, 1:] == -22)


def test_simulate_writes_seeded_files(tmp_path: Path):
    options = {"events_per_file": 40, "mode": "wls"}
    paths = simulate(tmp_path / "a", 100, seed=3, options=options)
    assert [p.name for p in paths] == [f"klm_{i:04d}.edm4hep.root" for i in range(3)]
    assert [uproot.open(p)["events"].num_entries for p in paths] == [40, 40, 20]
    again = simulate(tmp_path / "b", 100, seed=3, options=options)
    first = uproot.open(paths[2])["events"]["HcalBarrelHits.time"].array()
    assert ak.all(first == uproot.open(again[2])["events"]["HcalBarrelHits.time"].array())


@pytest.mark.parametrize(
    ("options", "key"),
    [({"bogus_key": 1}, "bogus_key"), ({"mode": "fiber"}, "mode"), ({"jitter": 0.0}, "jitter")],
)
def test_bad_option_raises_error_naming_the_key(tmp_path: Path, options, key):
    with pytest.raises(DetlearnError, match=key):
        simulate(tmp_path, 10, seed=0, options=options)


def test_sample_delays_gives_nan_for_a_track_missing_the_bar():
    dt = sample_delays(
        np.array([0.0, 900.0]), np.pi / 2, 1.0, KLMSimConfig(), np.random.default_rng(0)
    )
    assert np.isfinite(dt[0]) and np.isnan(dt[1])
