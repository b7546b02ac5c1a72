"""Hit lists to images: each event alone, both layouts, both z binnings, outside hits, norms."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detlearn.data.images import OFFSET_MAX_PEDESTAL, ImageSpec, bin_edges, build_images
from detlearn.errors import DetlearnError

EXTENT = ((-100.0, 100.0), (-80.0, 120.0), (240.0, 770.0))


def random_batch(seed: int, events: int = 40, mean_hits: float = 30.0):
    """Hits spread a little beyond EXTENT (some outside), and a few empty events."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(mean_hits, events)
    counts[::7] = 0
    n = counts.sum()
    x = rng.normal(0.0, 60.0, n)
    y = rng.normal(20.0, 60.0, n)
    z = rng.uniform(200.0, 800.0, n)
    e = rng.exponential(2.0, n)
    return counts, x, y, z, e


def reference_image(spec: ImageSpec, x, y, z, e) -> np.ndarray:
    """One event's image with numpy.histogramdd on the spec's bin edges (no normalization)."""
    h, w = spec.shape
    points = np.stack([x, y, z], axis=1)
    if spec.outside == "clip":
        lo = np.array([lo for lo, _ in spec.extent])
        hi = np.array([hi for _, hi in spec.extent])
        points = np.clip(points, lo, hi)
    if spec.layout == "z_split":
        edges = [bin_edges(spec, 0, h), bin_edges(spec, 1, w), bin_edges(spec, 2, spec.channels)]
        hist, _ = np.histogramdd(points, bins=edges, weights=e)
        return np.moveaxis(hist, 2, 0)
    channels = []
    for row, col in ((0, 1), (1, 2), (2, 0)):
        inside = np.ones(len(x), dtype=bool)
        for axis in range(3):
            lo, hi = spec.extent[axis]
            inside &= (points[:, axis] >= lo) & (points[:, axis] <= hi)
        edges = [bin_edges(spec, row, h), bin_edges(spec, col, w)]
        hist, _ = np.histogramdd(points[inside][:, [row, col]], bins=edges, weights=e[inside])
        channels.append(hist)
    return np.stack(channels)


@pytest.mark.parametrize("outside", ["drop", "clip"])
@pytest.mark.parametrize("z_binning", ["linear", "log"])
@pytest.mark.parametrize(
    ("layout", "shape", "channels"),
    [("xyz", (20, 20), 3), ("xyz", (12, 17), 3), ("z_split", (20, 20), 3), ("z_split", (9, 14), 5)],
)
def test_batch_matches_histogramdd_event_by_event(layout, shape, channels, z_binning, outside):
    spec = ImageSpec(
        layout=layout,
        shape=shape,
        channels=channels,
        extent=EXTENT,
        z_binning=z_binning,
        z_origin=230.0,
        outside=outside,
    )
    counts, x, y, z, e = random_batch(1)
    images, n_outside = build_images(spec, counts, x, y, z, e)
    assert images.shape == (len(counts), channels, *shape) and images.dtype == np.float32
    offsets = np.r_[0, np.cumsum(counts)]
    for i in range(len(counts)):
        s = slice(offsets[i], offsets[i + 1])
        ref = reference_image(spec, x[s], y[s], z[s], e[s])
        np.testing.assert_allclose(images[i], ref, rtol=1e-6, atol=1e-5)
    assert n_outside.sum() > 0


def test_log_z_bins_hold_the_hits_a_hand_computation_says():
    # 3 slices over z − 230 in (10, 10000) mm: edges at 230 + 10**k mm, k = 1..4.
    spec = ImageSpec(
        layout="z_split",
        shape=(1, 1),
        channels=3,
        extent=((-1.0, 1.0), (-1.0, 1.0), (240.0, 10230.0)),
        z_binning="log",
        z_origin=230.0,
    )
    np.testing.assert_allclose(bin_edges(spec, 2, 3), [240.0, 330.0, 1230.0, 10230.0])
    z = np.array([241.0, 329.0, 330.0, 1000.0, 1231.0, 10230.0])
    e = np.array([1.0, 2.0, 4.0, 8.0, 16.0, 32.0])
    zeros = np.zeros(len(z))
    images, _ = build_images(spec, np.array([len(z)]), zeros, zeros, z, e)
    assert images[0, :, 0, 0].tolist() == [1.0 + 2.0, 4.0 + 8.0, 16.0 + 32.0]


def test_log_lattice_takes_the_nearest_geometric_point():
    # Points 1, 10, 100 (origin 0): nearest in distance splits at 5.5 and 55.
    spec = ImageSpec(
        layout="z_split",
        shape=(1, 1),
        channels=3,
        extent=((-1.0, 1.0), (-1.0, 1.0), (1.0, 100.0)),
        z_binning="log",
        assignment="lattice",
    )
    z = np.array([1.0, 5.4, 5.6, 54.0, 56.0, 100.0])
    e = np.array([1.0, 2.0, 4.0, 8.0, 16.0, 32.0])
    zeros = np.zeros(len(z))
    images, _ = build_images(spec, np.array([len(z)]), zeros, zeros, z, e)
    assert images[0, :, 0, 0].tolist() == [1.0 + 2.0, 4.0 + 8.0, 16.0 + 32.0]


@pytest.mark.parametrize("layout", ["xyz", "z_split"])
def test_lattice_assignment_is_the_originals_nearest_point(layout):
    spec = ImageSpec(layout=layout, extent=EXTENT, assignment="lattice", outside="clip")
    counts, x, y, z, e = random_batch(2, events=1, mean_hits=300)
    images, _ = build_images(spec, counts, x, y, z, e)
    n = spec.shape[0]
    points = (n, n, n if layout == "xyz" else spec.channels)
    tabs = [np.linspace(lo, hi, k) for (lo, hi), k in zip(EXTENT, points, strict=True)]
    idx = [
        np.abs(t[None, :] - v[:, None]).argmin(axis=1) for t, v in zip(tabs, (x, y, z), strict=True)
    ]
    ref = np.zeros((3, n, n))
    if layout == "xyz":
        for c, (r, k) in enumerate(((0, 1), (1, 2), (2, 0))):
            np.add.at(ref[c], (idx[r], idx[k]), e)
    else:
        np.add.at(ref, (idx[2], idx[0], idx[1]), e)
    np.testing.assert_allclose(images[0], ref, rtol=1e-6)


@pytest.mark.parametrize("layout", ["xyz", "z_split"])
def test_each_image_comes_from_its_own_event_only(layout):
    # The original summed z_split images over all earlier events and lost the first hit.
    spec = ImageSpec(layout=layout, extent=EXTENT)
    counts, x, y, z, e = random_batch(3, events=5)
    counts[:] = [4, 4, 0, 4, 4]
    n = counts.sum()
    x, y, z, e = x[:n], y[:n], z[:n], e[:n]
    twice = [np.r_[v[:4], v[:4], v[8:12], v[8:12]] for v in (x, y, z, e)]
    images, _ = build_images(spec, counts, *twice)
    np.testing.assert_array_equal(images[0], images[1])
    np.testing.assert_array_equal(images[3], images[4])
    single, _ = build_images(spec, np.array([4]), *(v[:4] for v in twice))
    np.testing.assert_array_equal(images[0], single[0])
    assert not images[2].any()


@pytest.mark.parametrize("normalization", ["none", "offset_max", "sum", "log1p"])
def test_an_event_without_hits_keeps_a_valid_image(normalization):
    spec = ImageSpec(extent=EXTENT, normalization=normalization)
    empty = np.zeros(0)
    images, outside = build_images(spec, np.array([0, 0]), empty, empty, empty, empty)
    assert images.shape == (2, 3, 20, 20) and outside.tolist() == [0, 0]
    expected = 1.0 if normalization == "offset_max" else 0.0  # (0 + 0.1) / max(0 + 0.1)
    assert np.all(images == expected)


@pytest.mark.parametrize("policy", ["drop", "clip"])
def test_outside_hits_are_counted_and_dropped_or_clipped(policy):
    spec = ImageSpec(
        layout="z_split",
        shape=(2, 2),
        channels=1,
        extent=((0.0, 2.0), (0.0, 2.0), (0.0, 1.0)),
        outside=policy,
    )
    # Event 0: inside, x beyond the top, y below the bottom, z beyond, x NaN; event 1: one
    # hit exactly on the upper corner (inside: the last bin is closed).
    x = np.array([0.5, 5.0, 1.5, 0.5, np.nan, 2.0])
    y = np.array([0.5, 0.5, -3.0, 1.5, 0.5, 2.0])
    z = np.array([0.5, 0.5, 0.5, 7.0, 0.5, 1.0])
    e = np.array([1.0, 2.0, 4.0, 8.0, 16.0, 32.0])
    images, outside = build_images(spec, np.array([5, 1]), x, y, z, e)
    assert outside.tolist() == [4, 0]
    if policy == "drop":
        assert images[0, 0].tolist() == [[1.0, 0.0], [0.0, 0.0]]
    else:  # the NaN hit has no bin to go to: dropped either way
        assert images[0, 0].tolist() == [[1.0, 8.0], [4.0 + 2.0, 0.0]]
    assert images[1, 0].tolist() == [[0.0, 0.0], [0.0, 32.0]]


def test_normalizations_follow_their_formulas():
    counts, x, y, z, e = random_batch(4, events=12)
    raw, _ = build_images(ImageSpec(extent=EXTENT), counts, x, y, z, e)
    raw = raw.astype(np.float64)
    flat = raw.reshape(len(raw), -1)
    expected = {
        "offset_max": (flat + OFFSET_MAX_PEDESTAL)
        / (flat.max(axis=1, keepdims=True) + OFFSET_MAX_PEDESTAL),
        "sum": flat / np.where(flat.sum(axis=1) > 0, flat.sum(axis=1), 1.0)[:, None],
        "log1p": np.log1p(flat),
    }
    for name, want in expected.items():
        got, _ = build_images(ImageSpec(extent=EXTENT, normalization=name), counts, x, y, z, e)
        np.testing.assert_allclose(got.reshape(len(got), -1), want, rtol=1e-5, atol=1e-7)
    total, _ = build_images(ImageSpec(extent=EXTENT, normalization="sum"), counts, x, y, z, e)
    sums = total.reshape(len(total), -1).sum(axis=1)
    np.testing.assert_allclose(sums[counts > 0], 1.0, rtol=1e-5)


def test_images_do_not_depend_on_the_thread_count():
    counts, x, y, z, e = random_batch(5, events=9000, mean_hits=5)
    spec = ImageSpec(extent=EXTENT, layout="z_split", normalization="offset_max")
    one, out_one = build_images(spec, counts, x, y, z, e, threads=1)
    two, out_two = build_images(spec, counts, x, y, z, e, threads=2)
    np.testing.assert_array_equal(one, two)
    np.testing.assert_array_equal(out_one, out_two)


@st.composite
def events(draw):
    n_events = draw(st.integers(1, 6))
    counts = np.array(draw(st.lists(st.integers(0, 12), min_size=n_events, max_size=n_events)))
    n = int(counts.sum())
    coordinate = st.floats(-300.0, 900.0, allow_nan=False)
    x, y, z = (np.array(draw(st.lists(coordinate, min_size=n, max_size=n))) for _ in range(3))
    e = np.array(draw(st.lists(st.floats(0.0, 1e3), min_size=n, max_size=n)))
    return counts, x, y, z, e


@settings(max_examples=150, deadline=None)
@given(
    batch=events(),
    layout=st.sampled_from(["xyz", "z_split"]),
    z_binning=st.sampled_from(["linear", "log"]),
    shape=st.tuples(st.integers(1, 7), st.integers(1, 7)),
)
def test_histogram_conserves_energy_inside_and_counts_outside_hits(batch, layout, z_binning, shape):
    counts, x, y, z, e = batch
    spec = ImageSpec(
        layout=layout,
        shape=shape,
        channels=3 if layout == "xyz" else 4,
        extent=EXTENT,
        z_binning=z_binning,
        z_origin=230.0,
    )
    images, outside = build_images(spec, counts, x, y, z, e)
    inside = np.ones(len(x), dtype=bool)
    for v, (lo, hi) in zip((x, y, z), EXTENT, strict=True):
        inside &= (v >= lo) & (v <= hi)
    event = np.repeat(np.arange(len(counts)), counts)
    np.testing.assert_array_equal(outside, np.bincount(event[~inside], minlength=len(counts)))
    expected = np.bincount(event[inside], weights=e[inside], minlength=len(counts))
    per_channel = images.astype(np.float64).sum(axis=(2, 3))
    if layout == "xyz":  # every projection holds all the energy inside
        for c in range(3):
            np.testing.assert_allclose(per_channel[:, c], expected, rtol=1e-5, atol=1e-3)
    else:
        np.testing.assert_allclose(per_channel.sum(axis=1), expected, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"layout": "xy"}, "layout"),
        ({"shape": (20, 0)}, "shape"),
        ({"layout": "xyz", "channels": 5}, "channels"),
        ({"extent": ((0, 1), (1, 0), (0, 1))}, "extent of y"),
        ({"z_binning": "log", "z_origin": 300.0}, "z_origin"),
        ({"normalization": "max"}, "normalization"),
        ({"outside": "wrap"}, "outside"),
        ({"assignment": "nearest"}, "assignment"),
    ],
)
def test_a_bad_spec_gives_one_line_naming_the_field(fields, named):
    with pytest.raises(DetlearnError, match=named) as err:
        ImageSpec(**fields)
    assert "\n" not in str(err.value)


def test_hit_arrays_must_match_the_counts():
    x = np.zeros(3)
    with pytest.raises(DetlearnError, match=r"'e' must be 1-D with counts\.sum"):
        build_images(ImageSpec(), np.array([2, 1]), x, x, x, np.zeros(2))
    with pytest.raises(DetlearnError, match="counts must be >= 0"):
        build_images(ImageSpec(), np.array([4, -1]), x, x, x, x)
    with pytest.raises(DetlearnError, match="integer"):
        build_images(ImageSpec(), np.array([1.5, 1.5]), x, x, x, x)
