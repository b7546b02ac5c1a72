"""The built-in LDMX ECal simulator: file layout, trigger, kinematics, topology, determinism."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest
import uproot

from detlearn.errors import DetlearnError
from detlearn.recipes.ecal_veto import geometry as geo
from detlearn.recipes.ecal_veto.simulate import (
    EcalSimConfig,
    sample_file_name,
    simulate,
    simulate_sample,
)

MASSES = [10.0, 100.0, 500.0, 1000.0]
EVENTS = 3000
BRANCHES = {
    "eventNumber": "int32",
    "nHits": "int32",
    "x": "float32",
    "y": "float32",
    "z": "float32",
    "E": "float32",
    "layer": "int32",
    "label": "int32",
    "mass": "float32",
    "recoilE": "float32",
    "recoilTheta": "float32",
    "recoilPhi": "float32",
    "pnDepth": "float32",
    "pnTopology": "int32",
}
JAGGED = {"x", "y", "z", "E", "layer"}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    out = tmp_path_factory.mktemp("ecal")
    return simulate(out, EVENTS, seed=11, options={"masses": MASSES})


@pytest.fixture(scope="module")
def samples(files):
    """Every file's tree as an awkward array, by mass (None: background)."""
    by_mass = {}
    for path in files:
        arrays = uproot.open(path)["ecalHits"].arrays()
        by_mass[None if arrays.label[0] == 0 else float(arrays.mass[0])] = arrays
    return by_mass


def test_one_file_per_sample_with_the_originals_tree_and_branches(files):
    assert [p.name for p in files] == [
        "signal_m10MeV.root",
        "signal_m100MeV.root",
        "signal_m500MeV.root",
        "signal_m1000MeV.root",
        "background.root",
    ]
    for path in files:
        tree = uproot.open(path)["ecalHits"]
        assert set(tree.keys()) == set(BRANCHES)
        assert tree.num_entries == EVENTS
        arrays = tree.arrays()
        for name, dtype in BRANCHES.items():
            values = ak.flatten(arrays[name]) if name in JAGGED else arrays[name]
            assert ak.to_numpy(values).dtype == np.dtype(dtype), name


def test_nhits_counts_every_hit_list(samples):
    for arrays in samples.values():
        for name in JAGGED:
            np.testing.assert_array_equal(ak.num(arrays[name]), arrays.nHits)
        assert ak.sum(arrays.nHits) > 0


def test_every_written_event_passes_the_trigger(samples):
    for arrays in samples.values():
        front = ak.sum(arrays.E[arrays.layer < 20], axis=1)
        assert ak.all(front < 1500.0)
        # Event numbers count the generated events: the gaps are the events the trigger failed.
        numbers = ak.to_numpy(arrays.eventNumber)
        assert numbers[0] >= 1 and np.all(np.diff(numbers) > 0)


def test_background_loses_events_to_the_trigger(samples):
    numbers = ak.to_numpy(samples[None].eventNumber)
    assert numbers[-1] > 1.2 * len(numbers)  # about 75 % pass


def test_hits_sit_on_readout_cells_one_hit_per_cell(samples):
    arrays = samples[None]
    layer = ak.to_numpy(ak.flatten(arrays.layer))
    x, y, z = (ak.to_numpy(ak.flatten(arrays[k])).astype(np.float64) for k in "xyz")
    np.testing.assert_allclose(z, geo.LAYER_Z[layer], atol=1e-3)
    q, r = geo.hex_cell(x, y, layer)
    cx, cy = geo.cell_center(q, r, layer)
    np.testing.assert_allclose(np.c_[cx, cy], np.c_[x, y], atol=1e-3)
    assert geo.in_flower(x, y).all()
    event = np.repeat(np.arange(len(arrays)), ak.to_numpy(arrays.nHits))
    keys = np.stack([event, layer, q, r], axis=1)
    assert len(np.unique(keys, axis=0)) == len(keys)
    assert ak.all(arrays.E > 0)


def test_signal_recoil_pt_grows_with_the_ap_mass(samples):
    # Above ~50 MeV the A′ sets the recoil p_T; below, the nuclear recoil (q_T) does.
    mean, err = {}, {}
    for mass in MASSES:
        arrays = samples[mass]
        energy = ak.to_numpy(arrays.recoilE).astype(np.float64)
        p = np.sqrt(energy**2 - 0.511**2)
        pt = p * np.sin(ak.to_numpy(arrays.recoilTheta))
        mean[mass], err[mass] = pt.mean(), pt.std() / np.sqrt(len(pt))
    for light, heavy in [(10.0, 100.0), (100.0, 500.0), (100.0, 1000.0)]:
        gap = mean[heavy] - mean[light]
        assert gap > 5 * np.hypot(err[light], err[heavy]), (light, heavy, mean)


def _per_event(arrays):
    """Hits in layers >= 20 and the energy > 2 r68 away from the recoil trajectory [MeV]."""
    tan = np.tan(arrays.recoilTheta)
    xt = tan * np.cos(arrays.recoilPhi) * arrays.z
    yt = tan * np.sin(arrays.recoilPhi) * arrays.z
    r68 = ak.unflatten(geo.R68[ak.to_numpy(ak.flatten(arrays.layer))], arrays.nHits)
    outside = np.hypot(arrays.x - xt, arrays.y - yt) > 2 * r68
    deep = ak.to_numpy(ak.sum(arrays.layer >= 20, axis=1)).astype(np.float64)
    return deep, ak.to_numpy(ak.sum(arrays.E * outside, axis=1)).astype(np.float64)


@pytest.mark.parametrize("mass", MASSES)
def test_background_is_deeper_and_wider_than_signal(samples, mass):
    deep_b, out_b = _per_event(samples[None])
    deep_s, out_s = _per_event(samples[mass])
    for b, s in [(deep_b, deep_s), (out_b, out_s)]:
        error = np.hypot(b.std() / np.sqrt(len(b)), s.std() / np.sqrt(len(s)))
        assert b.mean() - s.mean() > 5 * error


def test_truth_branches_tell_signal_from_background(samples):
    background = samples[None]
    assert ak.all(background.label == 0) and ak.all(background.mass == 0)
    assert ak.all(background.pnDepth >= 0)
    topology = np.bincount(ak.to_numpy(background.pnTopology), minlength=4)
    assert topology[0] == 0 and topology[1] > 0.8 * EVENTS and topology[2:].sum() > 0
    for mass in MASSES:
        arrays = samples[mass]
        assert ak.all(arrays.label == 1) and ak.all(arrays.mass == mass)
        assert ak.all(arrays.pnDepth == -1) and ak.all(arrays.pnTopology == 0)


def test_some_background_shows_no_more_than_a_recoil_shower(samples):
    # Events whose products all went to neutrons or escaped: what makes 1e-4 hard to reach.
    arrays = samples[None]
    total = ak.to_numpy(ak.sum(arrays.E, axis=1))
    bare = total < ak.to_numpy(arrays.recoilE) + 30.0
    assert bare.mean() > 0.02


def test_events_without_an_ecal_hit_are_those_whose_recoil_leaves_the_flower(samples):
    # The evaluation's fiducial selection: a recoil electron inside the flower from the front
    # to 5 X0 showers in the ECal; the empty events (which no ECal veto can split) are the
    # others. 3000 background events hold ~19 empty ones (0.6 %), the contained ones ~0.
    for mass, arrays in samples.items():
        inside = geo.contained(ak.to_numpy(arrays.recoilTheta), ak.to_numpy(arrays.recoilPhi), 5.0)
        empty = ak.to_numpy(arrays.nHits) == 0
        if mass is None:
            assert (empty & ~inside).sum() >= 5
            assert (empty & inside).sum() <= 1
        else:  # a few low-energy recoils stay below threshold (~0.5 %)
            assert (empty & ~inside).mean() > 0.1
            assert (empty & inside).sum() / inside.sum() < 0.015


def test_a_contained_forward_recoil_shower_reads_back_its_energy():
    events = simulate_sample(1.0, 2000, seed=4, cfg=EcalSimConfig(threads=1))
    event = np.repeat(np.arange(len(events)), events.n_hits)
    total = np.bincount(event, weights=events.energy, minlength=len(events))
    forward = (events.recoil_theta < 0.05) & (events.recoil_energy > 200)
    ratio = total[forward] / events.recoil_energy[forward]
    # Leakage behind the stack and outside the flower cost a few per cent.
    assert 0.85 < ratio.mean() < 1.0
    assert ratio.std() / np.sqrt(forward.sum()) < 0.01


def test_same_seed_gives_identical_events_for_any_thread_count():
    a = simulate_sample(None, 2500, seed=3, cfg=EcalSimConfig(threads=1))
    b = simulate_sample(None, 2500, seed=3, cfg=EcalSimConfig(threads=2))
    c = simulate_sample(None, 2500, seed=4, cfg=EcalSimConfig(threads=2))
    for name in ("event_number", "recoil_energy", "pn_depth", "n_hits", "layer", "x", "energy"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.recoil_energy, c.recoil_energy)


def test_a_sample_does_not_depend_on_the_other_samples(tmp_path):
    alone = simulate(
        tmp_path / "a", 300, seed=5, options={"masses": [100.0], "background_events": 0}
    )
    both = simulate(tmp_path / "b", 300, seed=5, options={"masses": [10.0, 100.0]})
    assert [p.name for p in both] == [sample_file_name(m) for m in (10.0, 100.0, None)]
    first = uproot.open(alone[0])["ecalHits"].arrays()
    second = uproot.open(both[1])["ecalHits"].arrays()
    assert ak.all(first.E == second.E) and ak.all(first.eventNumber == second.eventNumber)


def test_background_events_option_sets_the_background_size(tmp_path):
    files = simulate(tmp_path, 50, seed=1, options={"masses": [], "background_events": 120})
    assert [p.name for p in files] == ["background.root"]
    assert uproot.open(files[0])["ecalHits"].num_entries == 120


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"treshold": 0.2}, "unknown option 'treshold'; did you mean 'threshold'"),
        ({"threshold": -1.0}, "option 'threshold'"),
        ({"masses": [5000.0]}, "masses must lie in"),
        ({"trigger_layers": 40}, "option 'trigger_layers'"),
        ({"pn_species": [0.5, 0.5, 0.5, 0.5]}, "pn_species must be"),
        ({"compression": "gzip"}, "option 'compression'"),
    ],
)
def test_a_bad_option_gives_one_line_naming_it(tmp_path, options, named):
    with pytest.raises(DetlearnError, match=named) as err:
        simulate(tmp_path, 10, seed=0, options=options)
    assert "\n" not in str(err.value)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("events", [0, -3])
def test_events_must_be_positive(tmp_path, events):
    with pytest.raises(DetlearnError, match="events per sample must be > 0"):
        simulate(tmp_path, events, seed=0)


def test_no_sample_to_make_is_an_error(tmp_path):
    with pytest.raises(DetlearnError, match="no sample to make"):
        simulate(tmp_path, 10, seed=0, options={"masses": [], "background_events": 0})


def test_geometry_tables_describe_34_layers_and_the_flower():
    assert len(geo.LAYER_Z) == len(geo.X0_IN_FRONT) == len(geo.LAYER_WEIGHTS) == geo.N_LAYERS
    assert np.all(np.diff(geo.LAYER_Z) > 0) and np.all(np.diff(geo.X0_IN_FRONT) > 0)
    assert len(geo.DEPTH_EDGES) == geo.N_LAYERS + 1
    grid = geo.cell_grid()
    xs, ys = grid.x[0, : grid.n_cells[0]], grid.y[0, : grid.n_cells[0]]
    assert abs(xs.max() - xs.min() - (513.0 - 2 * geo.CELL_RADIUS)) < 2 * geo.CELL_RADIUS
    assert abs(ys.max() - ys.min() - (493.0 - 2 * geo.CELL_RADIUS)) < 2 * geo.CELL_RADIUS
    rng = np.random.default_rng(0)
    x, y = rng.uniform(-250, 250, (2, 10_000))
    layer = rng.integers(0, geo.N_LAYERS, 10_000)
    cx, cy = geo.cell_center(*geo.hex_cell(x, y, layer), layer)
    assert np.hypot(cx - x, cy - y).max() <= geo.CELL_RADIUS + 1e-9
