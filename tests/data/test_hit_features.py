"""LDMX-BDT-style event features: every feature against a per-event reference, hand-built events."""

from __future__ import annotations

import math

import numpy as np
import pytest

from detlearn.data.hit_features import (
    DEFAULT_RING_RADII,
    FEATURE_NAMES,
    ISOLATION_RADIUS,
    N_RINGS,
    feature_matrix,
    hit_features,
)
from detlearn.errors import DetlearnError
from detlearn.recipes.ecal_veto.geometry import CELL_RADIUS, LAYER_Z, R68, cell_center

LAYERS = 34


def random_batch(seed: int, events: int = 60, mean_hits: float = 40.0):
    """Showers and scattered hits: empty and one-hit events, many layers, close and lone hits."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(mean_hits, events)
    counts[::9] = 0
    counts[1::9] = 1
    n = int(counts.sum())
    layer = np.minimum(rng.poisson(8.0, n), LAYERS - 1)
    layer[::5] = rng.integers(0, LAYERS, len(layer[::5]))
    event = np.repeat(np.arange(events), counts)
    angle = rng.normal(0.0, 0.2, (2, events))[:, event]
    x = angle[0] * (LAYER_Z[layer] - 240.0) + rng.normal(0.0, 12.0, n)
    y = angle[1] * (LAYER_Z[layer] - 240.0) + rng.normal(0.0, 12.0, n)
    wide = rng.random(n) < 0.2
    x[wide] += rng.normal(0.0, 120.0, wide.sum())
    e = rng.exponential(3.0, n)
    return counts, x, y, LAYER_Z[layer], e, layer


def reference(x, y, z, e, layer, *, back_layer=20, ring_radii=DEFAULT_RING_RADII,
              isolation_radius=ISOLATION_RADIUS) -> dict[str, float]:  # fmt: skip
    """One event's features, straight from the definitions (numpy, hit by hit where simplest)."""
    if len(e) == 0:
        return dict.fromkeys(FEATURE_NAMES, 0.0)
    radii = np.broadcast_to(np.asarray(ring_radii, dtype=float), (LAYERS, N_RINGS - 1))
    total = e.sum()
    f = {
        "n_hits": len(e),
        "total_energy": total,
        "back_energy": e[layer >= back_layer].sum(),
        "max_cell_energy": e.max(),
        "average_layer": layer.mean(),
        "deepest_layer": layer.max(),
        "n_layers_hit": len(np.unique(layer)),
    }
    isolated = 0.0
    for i in range(len(e)):
        others = (layer == layer[i]) & (np.arange(len(e)) != i)
        if not (np.hypot(x[others] - x[i], y[others] - y[i]) <= isolation_radius).any():
            isolated += e[i]
    f["isolated_energy"] = isolated
    if total == 0:
        weighted = ["shower_rms", "x_std", "y_std", "layer_std", "outside_core_fraction"]
        return f | dict.fromkeys(weighted, 0.0) | {f"ring{k}_energy": 0.0 for k in range(N_RINGS)}
    xm, ym, zm = (np.average(v, weights=e) for v in (x, y, z))
    f["shower_rms"] = np.average(np.hypot(x - xm, y - ym), weights=e)
    f["x_std"] = math.sqrt(np.average((x - xm) ** 2, weights=e))
    f["y_std"] = math.sqrt(np.average((y - ym) ** 2, weights=e))
    lm = np.average(layer, weights=e)
    f["layer_std"] = math.sqrt(np.average((layer - lm) ** 2, weights=e))
    if np.average((z - zm) ** 2, weights=e) > 1e-6:
        axis_x = np.polyval(np.polyfit(z, x, 1, w=np.sqrt(e)), z)
        axis_y = np.polyval(np.polyfit(z, y, 1, w=np.sqrt(e)), z)
    else:
        axis_x, axis_y = np.full(len(e), xm), np.full(len(e), ym)
    r = np.hypot(x - axis_x, y - axis_y)
    ring = [np.searchsorted(radii[k], ri, side="right") for k, ri in zip(layer, r, strict=True)]
    ring = np.array(ring)
    for k in range(N_RINGS):
        f[f"ring{k}_energy"] = e[ring == k].sum()
    f["outside_core_fraction"] = 1.0 - f["ring0_energy"] / total
    return f


def per_event(counts, *hits):
    offsets = np.r_[0, np.cumsum(counts)]
    for i in range(len(counts)):
        yield [v[offsets[i] : offsets[i + 1]] for v in hits]


def one_event(x, y, layer, e, **options):
    """The features of a single event [name: float], z on the LDMX v14 layer planes."""
    layer = np.asarray(layer)
    f = hit_features(
        np.array([len(layer)]), np.asarray(x, float), np.asarray(y, float), LAYER_Z[layer],
        np.asarray(e, float), layer, **options,
    )  # fmt: skip
    return {name: float(v[0]) for name, v in f.items()}


@pytest.mark.parametrize("radii", ["default", "r68"])
@pytest.mark.parametrize("seed", [0, 1])
def test_every_feature_matches_the_per_event_reference(seed, radii):
    ring_radii = DEFAULT_RING_RADII if radii == "default" else np.outer(R68, [1.0, 2.0, 3.0])
    counts, x, y, z, e, layer = random_batch(seed)
    features = hit_features(counts, x, y, z, e, layer, ring_radii=ring_radii)
    assert list(features) == list(FEATURE_NAMES)
    assert all(v.dtype == np.float32 and v.shape == counts.shape for v in features.values())
    for i, hits in enumerate(per_event(counts, x, y, z, e, layer)):
        expected = reference(*hits, ring_radii=ring_radii)
        for name in FEATURE_NAMES:
            np.testing.assert_allclose(
                features[name][i], expected[name], rtol=2e-6, atol=1e-5, err_msg=f"{name}, {i}"
            )
    # The batch exercises what the features tell apart.
    assert (counts == 0).any() and (counts == 1).any() and counts.max() > 40
    iso, total = features["isolated_energy"], features["total_energy"]
    assert ((iso > 0) & (iso < total)).any()
    assert (features["ring1_energy"] > 0).any() and (features["ring3_energy"] > 0).any()


def test_features_do_not_depend_on_the_order_of_hits_or_the_batch():
    counts, x, y, z, e, layer = random_batch(2)
    rng = np.random.default_rng(3)
    event = np.repeat(np.arange(len(counts)), counts)
    order = np.lexsort((rng.random(len(e)), event))  # shuffled within each event
    shuffled = hit_features(counts, x[order], y[order], z[order], e[order], layer[order])
    batch = hit_features(counts, x, y, z, e, layer)
    for name in FEATURE_NAMES:
        np.testing.assert_allclose(shuffled[name], batch[name], rtol=1e-5, atol=1e-5)
    for i, hits in enumerate(per_event(counts, x, y, z, e, layer)):
        alone = hit_features(np.array([len(hits[0])]), *hits)
        assert all(alone[name][0] == batch[name][i] for name in FEATURE_NAMES)


def test_a_single_hit():
    f = one_event([30.0], [-40.0], [7], [5.0])
    assert f == {
        "n_hits": 1.0, "total_energy": 5.0, "back_energy": 0.0, "max_cell_energy": 5.0,
        "shower_rms": 0.0, "x_std": 0.0, "y_std": 0.0, "average_layer": 7.0, "layer_std": 0.0,
        "deepest_layer": 7.0, "isolated_energy": 5.0, "ring0_energy": 5.0, "ring1_energy": 0.0,
        "ring2_energy": 0.0, "ring3_energy": 0.0, "outside_core_fraction": 0.0,
        "n_layers_hit": 1.0,
    }  # fmt: skip


def test_two_hits_far_apart_in_one_layer_are_both_isolated():
    f = one_event([0.0, 100.0], [0.0, 0.0], [4, 4], [1.0, 2.0])
    assert f["isolated_energy"] == 3.0
    assert f["n_layers_hit"] == 1.0
    assert f["x_std"] == pytest.approx(math.sqrt((1 * 66.667**2 + 2 * 33.333**2) / 3), rel=1e-4)
    assert f["shower_rms"] == pytest.approx((1 * 66.6667 + 2 * 33.3333) / 3, rel=1e-5)


@pytest.mark.parametrize("neighbour", [(1, 0), (0, 1), (1, -1), (-1, 0), (0, -1), (-1, 1)])
@pytest.mark.parametrize("layer", [10, 11])
def test_hits_in_neighbouring_cells_are_not_isolated(neighbour, layer):
    q, r = np.array([0, neighbour[0]]), np.array([0, neighbour[1]])
    x, y = cell_center(q, r, np.array([layer, layer]))
    assert one_event(x, y, [layer, layer], [1.0, 2.0])["isolated_energy"] == 0.0
    # The same cells one layer apart: each hit is alone in its layer.
    assert one_event(x, y, [layer, layer + 1], [1.0, 2.0])["isolated_energy"] == 3.0


@pytest.mark.parametrize("cell", [(2, -1), (1, 1), (2, 0)])
def test_hits_with_a_cell_between_them_are_isolated(cell):
    x, y = cell_center(np.array([0, cell[0]]), np.array([0, cell[1]]), np.array([3, 3]))
    assert one_event(x, y, [3, 3], [1.0, 2.0])["isolated_energy"] == 3.0


def test_the_isolation_radius_separates_the_first_ring_of_cells_from_the_second():
    pitch, second = math.sqrt(3.0) * CELL_RADIUS, 3.0 * CELL_RADIUS  # 8.34, 14.46 mm
    assert pitch + 2.0 < ISOLATION_RADIUS < second - 1.5


def test_isolation_needs_every_other_hit_of_the_layer_out_of_reach():
    # a–b close, c far from both; a radius just above |ab| decides.
    x, y, e = [0.0, 5.0, 40.0], [0.0, 0.0, 0.0], [1.0, 2.0, 4.0]
    assert one_event(x, y, [2, 2, 2], e)["isolated_energy"] == 4.0
    assert one_event(x, y, [2, 2, 2], e, isolation_radius=4.9)["isolated_energy"] == 7.0
    assert one_event(x, y, [2, 2, 2], e, isolation_radius=5.0)["isolated_energy"] == 4.0


@pytest.mark.parametrize(("back_layer", "expected"), [(20, 3.0), (25, 3.0), (26, 0.0), (0, 4.0)])
def test_back_energy_counts_the_layers_from_back_layer_on(back_layer, expected):
    f = one_event([0.0, 0.0], [0.0, 0.0], [19, 25], [1.0, 3.0], back_layer=back_layer)
    assert f["back_energy"] == expected
    assert f["deepest_layer"] == 25.0 and f["average_layer"] == 22.0


def test_layer_average_is_per_hit_and_its_spread_energy_weighted():
    f = one_event([0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [2, 2, 10], [1.0, 1.0, 2.0])
    assert f["average_layer"] == pytest.approx(14.0 / 3.0)
    assert f["layer_std"] == pytest.approx(4.0)  # weighted mean 6, weighted deviations ±4
    assert f["n_layers_hit"] == 2.0


def test_an_inclined_straight_shower_lies_in_the_core():
    # Hits along x = 0.4 (z − 240 mm): far apart in x, all on the fitted axis.
    layer = np.arange(0, 30, 3)
    x = 0.4 * (LAYER_Z[layer] - 240.0)
    f = one_event(x, np.zeros(len(layer)), layer, np.linspace(1.0, 4.0, len(layer)))
    assert f["x_std"] > 30.0
    assert f["ring0_energy"] == pytest.approx(f["total_energy"])
    assert f["outside_core_fraction"] == pytest.approx(0.0, abs=1e-6)


def test_rings_are_measured_from_the_axis_in_units_of_the_layers_radii():
    # Axis along z at x = 0 (two equal hits at ±d in every hit layer cancel).
    d = 50.0
    layers = [0, 0, 33, 33]
    x = [d, -d, d, -d]
    r68 = np.outer(R68, [1.0, 2.0, 3.0])  # 4 mm at the front, 104 mm at the back
    f = one_event(x, [0.0] * 4, layers, [1.0, 1.0, 2.0, 2.0], ring_radii=r68)
    assert (f["ring0_energy"], f["ring3_energy"]) == (4.0, 2.0)
    f = one_event(x, [0.0] * 4, layers, [1.0, 1.0, 2.0, 2.0], ring_radii=(40.0, 45.0, 60.0))
    assert (f["ring2_energy"], f["outside_core_fraction"]) == (6.0, 1.0)


@pytest.mark.parametrize("seed", [4, 5])
def test_ring_energies_sum_to_the_total(seed):
    counts, x, y, z, e, layer = random_batch(seed, events=200)
    for radii in (DEFAULT_RING_RADII, np.outer(R68, [1.0, 2.0, 3.0]), (1.0, 2.0, 3.0)):
        f = hit_features(counts, x, y, z, e, layer, ring_radii=radii)
        rings = sum(f[f"ring{k}_energy"].astype(float) for k in range(N_RINGS))
        np.testing.assert_allclose(rings, f["total_energy"], rtol=1e-6)
        core = np.divide(f["ring0_energy"], rings, out=np.ones(len(rings)), where=rings > 0)
        np.testing.assert_allclose(f["outside_core_fraction"], 1.0 - core, rtol=1e-5, atol=1e-6)


def test_events_without_hits_or_energy_give_zeros_not_nan():
    counts = np.array([0, 2, 0, 0, 3])
    x = np.array([1.0, 2.0, 0.0, 0.0, 5.0])
    layer = np.array([1, 2, 3, 3, 3])
    e = np.array([0.0, 0.0, 1.0, 2.0, 3.0])  # event 1: hits without energy
    f = hit_features(counts, x, x, LAYER_Z[layer], e, layer)
    matrix = feature_matrix(f)
    assert np.isfinite(matrix).all()
    assert (matrix[[0, 2, 3]] == 0).all()
    assert f["n_hits"][1] == 2 and f["total_energy"][1] == 0 and f["isolated_energy"][1] == 0
    assert f["shower_rms"][1] == f["outside_core_fraction"][1] == f["layer_std"][1] == 0
    assert f["average_layer"][1] == 1.5 and f["n_layers_hit"][1] == 2


def test_an_empty_batch():
    empty = np.zeros(0)
    f = hit_features(np.zeros(0, dtype=int), empty, empty, empty, empty, np.zeros(0, dtype=int))
    assert feature_matrix(f).shape == (0, len(FEATURE_NAMES))
    f = hit_features(np.zeros(5, dtype=np.int32), empty, empty, empty, empty, empty)
    assert (feature_matrix(f) == 0).all()


def test_feature_matrix_columns_follow_feature_names():
    counts, x, y, z, e, layer = random_batch(6)
    f = hit_features(counts, x, y, z, e, layer)
    matrix = feature_matrix(f | {"extra": np.ones(len(counts))})
    assert matrix.shape == (len(counts), len(FEATURE_NAMES)) and matrix.dtype == np.float32
    for j, name in enumerate(FEATURE_NAMES):
        assert (matrix[:, j] == f[name]).all()
    with pytest.raises(DetlearnError, match=r"missing features.*ring2_energy"):
        feature_matrix({k: v for k, v in f.items() if k != "ring2_energy"})
    with pytest.raises(DetlearnError, match="one length"):
        feature_matrix(f | {"n_hits": f["n_hits"][:-1]})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"counts": np.array([2.0, 1.0])}, "counts must be a 1-D integer array"),
        ({"counts": np.array([4, -1])}, "counts must be >= 0"),
        ({"x": np.zeros(2)}, "'x' must be 1-D with counts.sum\\(\\) = 3"),
        ({"y": np.array([0.0, np.nan, 0.0])}, "'y' has values that are not finite"),
        ({"e": np.array([1.0, -0.5, 1.0])}, "'e' must be >= 0"),
        ({"layer": np.array([0.0, 1.0, 2.0])}, "'layer' must be integers"),
        ({"layer": np.array([0, 34, 2])}, "'layer' must lie in \\[0, 34\\)"),
        ({"layer": np.array([0, -1, 2])}, "'layer' must lie in \\[0, 34\\)"),
        ({"ring_radii": (10.0, 20.0)}, "ring_radii must have shape"),
        ({"ring_radii": np.ones((33, 3))}, "ring_radii must have shape"),
        ({"ring_radii": (10.0, 5.0, 20.0)}, "increasing"),
        ({"ring_radii": (0.0, 5.0, 20.0)}, "positive"),
        ({"back_layer": 35}, "back_layer must be an int in \\[0, 34\\]"),
        ({"layers": 0}, "layers must be a positive int"),
        ({"isolation_radius": -1.0}, "isolation_radius must be finite and >= 0"),
    ],
)
def test_bad_input_is_refused_with_one_line(change, message):
    args = {
        "counts": np.array([2, 1]),
        "x": np.zeros(3),
        "y": np.zeros(3),
        "z": np.full(3, 250.0),
        "e": np.ones(3),
        "layer": np.array([0, 1, 2]),
    } | change
    with pytest.raises(DetlearnError, match=message):
        hit_features(**args)
