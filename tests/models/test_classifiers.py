"""The ECal-veto classifiers: the generalized LDMX ConvNet and the EdgeConv point cloud."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import safetensors.torch
import torch

from detlearn.config import ClassifierConfig
from detlearn.errors import DetlearnError
from detlearn.models.classifiers import ImageClassifier, PointCloudClassifier, top_hits
from detlearn.models.gbdt import BoostedTrees

IMAGE_SIZES = [(3, (20, 20)), (5, (16, 24)), (1, (9, 9))]
FEATURES = 5  # x, y, z, E, layer


@pytest.fixture(autouse=True)
def _one_thread():
    """These models are tiny: one intra-op thread is faster than several fighting for cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _image_cfg(mass: bool = False, **kw) -> ClassifierConfig:
    base = {"conv_channels": [4, 8], "dense": [16, 8], "dropout": 0.5}
    return ClassifierConfig(mass_parameterized=mass, **{**base, **kw})


def _cloud_cfg(mass: bool = False, **kw) -> ClassifierConfig:
    base = {"max_hits": 12, "neighbours": 4, "edge_channels": [8, 16], "dense": [16]}
    return ClassifierConfig(arch="point_cloud", mass_parameterized=mass, **{**base, **kw})


def _events(n_real: list[int], k: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Hits [N, K, 5] (x, y, z [mm], E [MeV], layer) zero-padded after each event's real hits."""
    n = len(n_real)
    mask = (torch.arange(k) < torch.tensor(n_real).unsqueeze(1)).float()
    hits = torch.randn(n, k, FEATURES, generator=gen) * torch.tensor([50.0, 50.0, 100.0, 1, 5])
    hits[..., 2] += 400
    hits[..., 3] = torch.rand(n, k, generator=gen) * 200 + 0.1
    hits[..., 4] = hits[..., 4].abs().round()
    return hits * mask.unsqueeze(-1), mask


def _image_model(channels: int, shape: tuple, mass: bool, seed: int = 0) -> ImageClassifier:
    torch.manual_seed(seed)
    model = ImageClassifier(channels, shape, _image_cfg(mass))
    if mass:
        model.fit_normalization(
            torch.rand(10, channels, *shape), torch.tensor([1.0, 10, 100, 1000] * 2 + [5, 50]),
            torch.zeros(10),
        )  # fmt: skip
    return model


def _cloud_model(
    mass: bool, seed: int = 0
) -> tuple[PointCloudClassifier, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = PointCloudClassifier(FEATURES, _cloud_cfg(mass))
    hits, mask = _events([12, 7, 3, 0, 1, 5, 12, 9], 12, gen)
    columns = [hits, mask] + ([torch.rand(8, generator=gen) * 1000 + 1] if mass else [])
    model.fit_normalization(*columns, torch.zeros(8))
    return model, hits, mask


def _mass(n: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, generator=torch.Generator().manual_seed(seed)) * 999 + 1


# ----------------------------------------------------------------------------- images


@pytest.mark.parametrize("mass", [False, True])
@pytest.mark.parametrize(("channels", "shape"), IMAGE_SIZES)
def test_image_classifier_gives_one_logit_per_event_for_any_image_size(channels, shape, mass):
    model = _image_model(channels, shape, mass)
    images = torch.rand(6, channels, *shape)
    out = model(images, _mass(6)) if mass else model(images)
    assert out.shape == (6,) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert model.batch_keys == (("images", "mass", "label") if mass else ("images", "label"))
    proba = model.predict_proba(images, _mass(6)) if mass else model.predict_proba(images)
    assert ((proba > 0) & (proba < 1)).all()


def test_default_image_classifier_is_the_original_convnet():
    model = ImageClassifier(3, (20, 20), ClassifierConfig())
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (3, 32, (5, 5)), (32, 64, (5, 5)),
    ]  # fmt: skip
    linears = [m for m in model.head.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(1600, 500), (500, 1)]
    assert model.head.dropout.p == 0.5


def test_mass_parameterized_image_classifier_joins_the_mass_after_the_first_dense_layer():
    cfg = ClassifierConfig(mass_parameterized=True, dense=[20, 60])
    model = ImageClassifier(3, (20, 20), cfg)
    linears = [m for m in model.head.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(1600, 20), (21, 60), (60, 1)]


def test_image_shape_is_checked():
    model = ImageClassifier(3, (20, 20), _image_cfg())
    with pytest.raises(DetlearnError, match=r"expected images \[N, 3, 20, 20\]"):
        model(torch.rand(2, 3, 16, 20))
    with pytest.raises(DetlearnError, match="needs the mass"):
        ImageClassifier(3, (20, 20), _image_cfg(mass=True))(torch.rand(2, 3, 20, 20))


# ----------------------------------------------------------------------------- top_hits


def _top_hits_reference(counts, columns, k):
    names = list(columns)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    hits = np.zeros((len(counts), k, len(names)), np.float32)
    mask = np.zeros((len(counts), k), np.float32)
    for i in range(len(counts)):
        rows = np.arange(offsets[i], offsets[i + 1])
        order = rows[np.argsort(-columns[names[3]][rows], kind="stable")][:k]
        for j, row in enumerate(order):
            hits[i, j] = [columns[n][row] for n in names]
            mask[i, j] = 1
    return hits, mask


@pytest.mark.parametrize("k", [1, 4, 30])
def test_top_hits_keeps_each_events_hardest_hits_like_a_per_event_loop(k):
    rng = np.random.default_rng(3)
    counts = np.array([0, 1, 5, 12, 0, 3, 25, 2])
    total = counts.sum()
    energy = rng.exponential(10.0, total).round(0)  # rounded: ties must keep input order
    columns = {"x": rng.normal(size=total), "y": rng.normal(size=total),
               "z": rng.normal(size=total), "E": energy, "layer": rng.integers(0, 34, total)}  # fmt: skip
    hits, mask = top_hits(counts, columns, k)
    want_hits, want_mask = _top_hits_reference(counts, columns, k)
    assert hits.dtype == mask.dtype == np.float32
    np.testing.assert_array_equal(mask, want_mask)
    np.testing.assert_array_equal(hits, want_hits)


def test_top_hits_of_events_without_hits_is_all_padding():
    hits, mask = top_hits(np.zeros(3, int), {k: np.zeros(0) for k in "xyzE"}, 4)
    assert hits.shape == (3, 4, 4) and not hits.any() and not mask.any()
    with pytest.raises(DetlearnError, match="not flat arrays"):
        top_hits([2], {k: np.zeros(3) for k in "xyzE"}, 4)
    with pytest.raises(DetlearnError, match="at least x, y, z and energy"):
        top_hits([1], {k: np.zeros(1) for k in "xyz"}, 4)


# ----------------------------------------------------------------------------- point cloud


@pytest.mark.parametrize("mass", [False, True])
def test_point_cloud_gives_finite_logits_for_empty_and_sparse_events(mass):
    model, hits, mask = _cloud_model(mass)
    model.eval()
    extra = (_mass(8),) if mass else ()
    out = model(hits, mask, *extra)
    # events with 12, 7, 3, 0, 1, 5, 12, 9 real hits; k = 4 needs 5 for a full neighbourhood
    assert out.shape == (8,) and torch.isfinite(out).all()
    alone = model(hits[3:5], mask[3:5], *(m[3:5] for m in extra))
    torch.testing.assert_close(alone, out[3:5], rtol=0, atol=1e-6)
    assert model.batch_keys == (
        ("hits", "mask", "mass", "label") if mass else ("hits", "mask", "label")
    )


def test_point_cloud_is_invariant_to_the_order_of_the_real_hits():
    model, hits, mask = _cloud_model(False)
    model.eval()
    gen = torch.Generator().manual_seed(5)
    shuffled = hits.clone()
    for i, n in enumerate(mask.sum(1).long().tolist()):
        shuffled[i, :n] = hits[i, torch.randperm(n, generator=gen)]
    torch.testing.assert_close(model(shuffled, mask), model(hits, mask), rtol=0, atol=1e-5)


def test_padded_hits_do_not_change_the_point_cloud_output():
    model, hits, mask = _cloud_model(True)
    model.eval()
    mass = _mass(8)
    # more slots (including a neighbourhood larger than some events) and non-zero padding
    padded = torch.cat([hits, torch.zeros(8, 6, FEATURES)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(8, 6)], dim=1)
    torch.testing.assert_close(
        model(padded, padded_mask, mass), model(hits, mask, mass), rtol=0, atol=1e-5
    )
    junk = hits + (1 - mask).unsqueeze(-1) * torch.randn(hits.shape) * 100
    torch.testing.assert_close(model(junk, mask, mass), model(hits, mask, mass), rtol=0, atol=1e-5)


def test_point_cloud_normalization_is_fitted_on_real_hits_with_log_energy():
    model, hits, mask = _cloud_model(False)
    real = hits[mask > 0].double()
    real[:, 3] = real[:, 3].log()
    torch.testing.assert_close(model.hit_mean.double(), real.mean(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.hit_std.double(), real.std(0), rtol=1e-5, atol=1e-5)


def test_point_cloud_inputs_are_checked():
    model = PointCloudClassifier(FEATURES, _cloud_cfg())
    with pytest.raises(DetlearnError, match=r"expected hits \[N, K, 5\]"):
        model(torch.zeros(2, 4, 4), torch.zeros(2, 4))
    with pytest.raises(DetlearnError, match="mask"):
        model(torch.zeros(2, 4, 5), torch.zeros(2, 3))
    with pytest.raises(DetlearnError, match="x, y, z and energy"):
        PointCloudClassifier(3, _cloud_cfg())


# ----------------------------------------------------------------------------- both


def _variants():
    """(model, inputs) for each classifier and variant, with 8 events."""
    out = []
    for mass in (False, True):
        for channels, shape in IMAGE_SIZES[:2]:
            model = _image_model(channels, shape, mass)
            images = torch.rand(8, channels, *shape, generator=torch.Generator().manual_seed(2))
            out.append((model, (images, _mass(8)) if mass else (images,)))
        model, hits, mask = _cloud_model(mass)
        out.append((model, (hits, mask, _mass(8)) if mass else (hits, mask)))
    return out


VARIANTS = _variants()
IDS = [f"{m.kind}-{'mass' if m.cfg.mass_parameterized else 'plain'}-{i}"
       for i, (m, _) in enumerate(VARIANTS)]  # fmt: skip


@pytest.mark.parametrize(("model", "inputs"), VARIANTS, ids=IDS)
def test_gradients_reach_every_parameter(model, inputs):
    model.train()
    model.zero_grad()
    label = torch.tensor([0.0, 1.0] * 4)
    model.loss([*inputs, label]).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize(("model", "inputs"), VARIANTS, ids=IDS)
def test_dropout_is_on_in_training_and_off_in_evaluation(model, inputs):
    model.train()
    assert not torch.equal(model(*inputs), model(*inputs))
    model.eval()
    assert torch.equal(model(*inputs), model(*inputs))


@pytest.mark.parametrize(
    ("model", "inputs"), [(m, x) for m, x in VARIANTS if m.cfg.mass_parameterized]
)
def test_mass_parameterized_output_depends_on_the_mass(model, inputs):
    model.eval()
    *rest, _ = inputs
    light, heavy = model(*rest, torch.full((8,), 1.0)), model(*rest, torch.full((8,), 1000.0))
    assert (light - heavy).abs().min() > 1e-6


@pytest.mark.parametrize(("model", "inputs"), VARIANTS, ids=IDS)
def test_spec_and_safetensors_rebuild_the_same_function(model, inputs, tmp_path):
    model.eval()
    spec = json.loads(json.dumps(model.spec()))
    assert spec["kind"] == model.kind
    path = tmp_path / "model.safetensors"
    safetensors.torch.save_model(model, str(path))
    again = type(model).from_spec(spec)
    assert again.spec() == spec
    safetensors.torch.load_model(again, str(path))
    again.eval()
    assert torch.equal(again(*inputs), model(*inputs))
    fresh = type(model).from_spec(spec).eval()
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh(*inputs), model(*inputs))
    buffers = {name for name, _ in model.named_buffers()}
    assert ("log_mass_mean" in buffers) == model.cfg.mass_parameterized


def test_loss_is_the_weighted_mean_binary_cross_entropy():
    model, hits, mask = _cloud_model(False)
    model.eval()
    label = torch.tensor([1.0, 0, 0, 1, 1, 0, 1, 0])
    logit = model(hits, mask)
    per_event = -(label * torch.nn.functional.logsigmoid(logit)
                  + (1 - label) * torch.nn.functional.logsigmoid(-logit))  # fmt: skip
    torch.testing.assert_close(model.loss([hits, mask, label]), per_event.mean())
    # Signed weights as fit() passes them (mean 1 over the split): the mean of w·l.
    weight = torch.tensor([1.0, 2, -0.5, 1, 3, 1, 0.5, 2])
    torch.testing.assert_close(model.loss([hits, mask, label, weight]), (weight * per_event).mean())
    assert model.loss_label == "loss (binary cross-entropy) [nats]"
    with pytest.raises(DetlearnError, match=r"labels must lie in \[0, 1\]"):
        model.fit_normalization(hits, mask, torch.full((8,), 2.0))


def test_image_mass_normalization_is_the_log_mass_mean_and_std():
    model = ImageClassifier(1, (9, 9), _image_cfg(mass=True))
    mass = torch.tensor([1.0, 10, 100, 1000])
    model.fit_normalization(torch.rand(4, 1, 9, 9), mass, torch.tensor([1.0, 1, 0, 0]))
    log_mass = mass.double().log()
    assert float(model.log_mass_mean) == pytest.approx(float(log_mass.mean()), rel=1e-6)
    assert float(model.log_mass_std) == pytest.approx(float(log_mass.std()), rel=1e-6)


# ----------------------------------------------------------------------------- ONNX


def _export(model, example, names, path):
    with warnings.catch_warnings():
        # The legacy (TorchScript) exporter is chosen on purpose, as in detlearn.export.onnx.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", "Constant folding", UserWarning)
        torch.onnx.export(
            model,
            example,
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=names,
            output_names=["logit"],
            dynamic_axes={name: {0: "batch"} for name in [*names, "logit"]},
        )


@pytest.mark.parametrize("mass", [False, True])
@pytest.mark.parametrize("kind", ["image", "point_cloud"])
def test_onnx_export_matches_pytorch_at_another_batch_size(kind, mass, tmp_path):
    import onnxruntime as ort

    gen = torch.Generator().manual_seed(7)
    if kind == "image":
        model = _image_model(5, (16, 24), mass).eval()
        names = ["images"]
        example = (torch.rand(3, 5, 16, 24, generator=gen),)
        inputs = (torch.rand(11, 5, 16, 24, generator=gen),)
    else:
        model = _cloud_model(mass)[0].eval()
        names = ["hits", "mask"]
        example = _events([12, 4, 9], 12, gen)
        inputs = _events([0, 1, 2, 5, 12, 12, 7, 3, 11, 6, 4], 12, gen)
    if mass:
        names.append("mass")
        example, inputs = (*example, _mass(3)), (*inputs, _mass(11, seed=4))
    path = tmp_path / "model.onnx"
    _export(model, example, names, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {n: x.numpy() for n, x in zip(names, inputs, strict=True)})[0]
    with torch.no_grad():
        want = model(*inputs).numpy()
    assert got.shape == want.shape == (11,)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- training


def _train(model, batch_of, steps=200):
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(11)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        model.loss(batch_of(64, gen)).backward()
        opt.step()
    model.eval()
    *inputs, label = batch_of(1000, torch.Generator().manual_seed(99))
    with torch.no_grad():
        correct = (model(*inputs) > 0).float() == label
    return float(correct.float().mean())


def test_image_classifier_learns_a_separable_toy_problem():
    torch.manual_seed(0)

    def batch_of(n, gen):
        # signal: a bright 2×2 spot on faint noise; background: noise only
        label = (torch.rand(n, generator=gen) < 0.5).float()
        images = torch.rand(n, 1, 9, 9, generator=gen) * 0.5
        r, c = torch.randint(0, 8, (2, n), generator=gen)
        for dr in (0, 1):
            for dc in (0, 1):
                images[torch.arange(n), 0, r + dr, c + dc] += label * 1.5
        return [images / images.amax((1, 2, 3), keepdim=True), label]

    model = ImageClassifier(1, (9, 9), _image_cfg(dense=[16], dropout=0.1))
    assert _train(model, batch_of) > 0.9


def test_point_cloud_classifier_learns_a_separable_toy_problem():
    torch.manual_seed(0)
    cfg = _cloud_cfg(mass=True, dropout=0.1)

    def batch_of(n, gen):
        # signal: a narrow shower (5 mm around its axis); background: 60 mm wide
        label = (torch.rand(n, generator=gen) < 0.5).float()
        n_real = torch.randint(2, 13, (n,), generator=gen).tolist()
        hits, mask = _events(n_real, 12, gen)
        width = 60 - 55 * label
        hits[..., :2] = torch.randn(n, 12, 2, generator=gen) * width[:, None, None]
        hits = hits * mask.unsqueeze(-1)
        mass = torch.rand(n, generator=gen) * 999 + 1
        return [hits, mask, mass, label]

    model = PointCloudClassifier(FEATURES, cfg)
    model.fit_normalization(*batch_of(2000, torch.Generator().manual_seed(1)))
    assert _train(model, batch_of) > 0.9


def test_boosted_trees_stop_early_on_the_weighted_validation_loss():
    # Validation rows of weight 0 with flipped labels: on the unweighted loss they make the
    # trees stop within a few iterations; weighted, they do not count and training goes on.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 1)).astype(np.float32)
    y = (x[:, 0] + 0.3 * rng.normal(size=2000) > 0).astype(np.float32)
    flipped = np.arange(2000) % 2 == 1
    y_val = np.where(flipped, 1 - y, y)
    weight = np.where(flipped, 0.0, 1.0)
    fits = [
        BoostedTrees.train(x, y, None, x, y_val, ["a"], val_weight=w, iterations=200, patience=5)
        for w in (None, weight)
    ]
    unweighted, weighted = (f.booster.best_iteration for f in fits)
    assert unweighted < 15 and weighted > 3 * unweighted
