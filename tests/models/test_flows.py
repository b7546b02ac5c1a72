"""ConditionalFlow: zuko-style checks over every flow kind and every support kind."""

from __future__ import annotations

import json
import math

import numpy as np
import onnxruntime as ort
import pytest
import torch
import zuko
from pydantic import ValidationError

from detlearn.config import FlowConfig
from detlearn.errors import DetlearnError
from detlearn.export import export_sampler_onnx
from detlearn.models import ConditionalFlow, load_model, save_model
from detlearn.models.flows import conditional
from detlearn.models.flows.sampling import BLOCK, BinarySearchRQS, MaskedPass

KINDS = ["nsf", "maf", "realnvp"]
# name -> (lower, upper)
SUPPORTS = {
    "none": (None, None),
    "lower": (1.5, None),
    "upper": (None, -2.0),
    "both": (-1.0, 3.0),
}
CONTEXT = 2


def make_flow(kind: str, supports: list[str], seed: int = 0, **cfg: object) -> ConditionalFlow:
    """A randomly initialized flow with normalization fitted to data inside its support."""
    torch.manual_seed(seed)
    lower = [SUPPORTS[s][0] for s in supports]
    upper = [SUPPORTS[s][1] for s in supports]
    config = FlowConfig(kind=kind, hidden=[16, 16], transforms=2, bins=6, **cfg)
    flow = ConditionalFlow(len(supports), CONTEXT, config, lower, upper)
    y = 1.5 * torch.randn(500, len(supports)) + 0.5
    c = 2.0 * torch.randn(500, CONTEXT) + 1.0
    flow.fit_normalization(flow.support.inverse(y, c), c)
    return flow


def in_support(flow: ConditionalFlow, x: torch.Tensor) -> bool:
    ok = torch.isfinite(x).all()
    for j, (lo, hi) in enumerate(zip(flow.lower, flow.upper, strict=True)):
        if lo is not None:
            ok &= (x[..., j] > lo).all()
        if hi is not None:
            ok &= (x[..., j] < hi).all()
    return bool(ok)


MIXED = ["none", "lower", "upper", "both"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("supports", [["lower"], MIXED[:3]])
def test_shapes(kind, supports):
    flow = make_flow(kind, supports)
    f = len(supports)
    c = torch.randn(5, CONTEXT)
    x = flow.sample(c, 7)
    assert x.shape == (5, 7, f)
    assert flow.log_prob(x[:, 0], c).shape == (5,)
    assert flow.sample_from_noise(torch.randn(5, f), c).shape == (5, f)
    assert flow.latent(x[:, 0], c).shape == (5, f)
    assert flow.loss((x[:, 0], c)).shape == ()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("supports", [["both"], MIXED])
def test_gradients_reach_every_parameter(kind, supports):
    flow = make_flow(kind, supports)
    c = torch.randn(64, CONTEXT)
    x = flow.sample(c, 1)[:, 0]
    flow.loss((x, c)).backward()
    for name, p in flow.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def _substitution(support: str, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x(t) covering the support and dx/dt, written out independently of the model."""
    lo, hi = SUPPORTS[support]
    if support == "none":
        return t, torch.ones_like(t)
    if support == "lower":
        return lo + t.exp(), t.exp()
    if support == "upper":
        return hi - (-t).exp(), (-t).exp()
    s = torch.sigmoid(t)
    return lo + (hi - lo) * s, (hi - lo) * s * (1 - s)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("support", list(SUPPORTS))
def test_density_integrates_to_one_in_physical_units(kind, support):
    flow = make_flow(kind, [support]).double()
    mean, std = float(flow.x_mean), float(flow.x_std)
    t = torch.linspace(mean - 12 * std, mean + 12 * std, 40_001, dtype=torch.float64)
    x, dxdt = _substitution(support, t)
    for c in torch.randn(3, CONTEXT, dtype=torch.float64):
        with torch.no_grad():
            p = flow.log_prob(x[:, None], c.expand(len(x), CONTEXT)).exp()
        total = torch.trapezoid(p * dxdt, t).item()
        assert total == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("supports", [["lower"], ["both"], MIXED])
def test_sample_inverse_round_trip(kind, supports):
    flow = make_flow(kind, supports)
    z = torch.randn(200, len(supports)).clamp(-3, 3)
    c = torch.randn(200, CONTEXT)
    with torch.no_grad():
        back = flow.latent(flow.sample_from_noise(z, c), c)
    torch.testing.assert_close(back, z, atol=1e-4, rtol=1e-4)


def test_support_and_standardization_logdet_matches_autograd():
    flow = make_flow("nsf", MIXED).double()
    c = torch.randn(50, CONTEXT, dtype=torch.float64)
    x = flow.support.inverse(torch.randn(50, 4, dtype=torch.float64), c).requires_grad_()
    u, ladj = flow._to_flow_space(x, c)
    jac = torch.stack(
        [torch.autograd.grad(u[:, j].sum(), x, retain_graph=True)[0] for j in range(4)], dim=1
    )  # [N, F(u), F(x)], diagonal for an element-wise map
    off = jac * (1 - torch.eye(4, dtype=jac.dtype))
    assert off.abs().max() == 0
    expected = torch.logdet(jac)
    torch.testing.assert_close(ladj, expected)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("support", ["lower", "upper", "both"])
def test_every_sample_is_inside_the_support_even_for_extreme_noise(kind, support):
    flow = make_flow(kind, [support])
    c = 3.0 * torch.randn(400, CONTEXT)
    z = torch.cat([torch.full((100, 1), v) for v in (-8.0, 8.0, -40.0, 40.0)])
    assert in_support(flow, flow.sample_from_noise(z, c).detach())
    assert in_support(flow, flow.sample(c[:50], 2000, generator=torch.Generator().manual_seed(1)))


@pytest.mark.parametrize("kind", KINDS)
def test_log_prob_is_minus_inf_outside_the_support(kind):
    flow = make_flow(kind, ["both"])
    x = torch.tensor([[-1.0], [3.0], [-5.0], [9.0], [1.0]])
    lp = flow.log_prob(x, torch.zeros(5, CONTEXT))
    assert torch.isinf(lp[:4]).all() and (lp[:4] < 0).all()
    assert torch.isfinite(lp[4])


def test_fit_normalization_names_the_feature_outside_its_support():
    flow = ConditionalFlow(2, 1, FlowConfig(), [None, 0.0], None, names=["z", "dt"])
    x = torch.tensor([[0.0, 1.0], [1.0, -0.5], [2.0, 0.0]])
    with pytest.raises(DetlearnError, match="'dt': 2 of 3 rows"):
        flow.fit_normalization(x, torch.zeros(3, 1))


def test_bounds_are_validated():
    with pytest.raises(DetlearnError, match="not below"):
        ConditionalFlow(1, 1, FlowConfig(), [2.0], [1.0])
    with pytest.raises(DetlearnError, match="expected 1"):
        ConditionalFlow(1, 1, FlowConfig(), [0.0, 1.0])


@pytest.mark.parametrize("kind", KINDS)
def test_conditioner_runs_once_per_context_row(kind):
    flow = make_flow(kind, ["lower"])
    rows: list[int] = []
    hypers = [m for name, m in flow.named_modules() if name.endswith("hyper")]
    assert hypers
    for m in hypers:
        m.register_forward_hook(lambda mod, inp, out: rows.append(inp[0].shape[0]))
    flow.sample(torch.randn(5, CONTEXT), 1000)
    assert rows == [5] * len(hypers)


def test_pit_is_the_model_cdf():
    flow = make_flow("nsf", ["lower"])
    z = torch.linspace(-3, 3, 101)[:, None]
    c = torch.randn(1, CONTEXT).expand(101, CONTEXT)
    with torch.no_grad():
        u = flow.pit(flow.sample_from_noise(z, c), c)
    torch.testing.assert_close(u, torch.special.ndtr(z[:, 0]), atol=3e-5, rtol=0)


def test_weighted_loss_is_the_weighted_mean_nll():
    flow = make_flow("maf", ["none"])
    x, c = torch.randn(4, 1), torch.randn(4, CONTEXT)
    w = torch.tensor([1.0, 0.0, 2.0, 1.0])
    nll = -flow.log_prob(x, c)
    torch.testing.assert_close(flow.loss((x, c, w)), (nll * w).sum() / 4)


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_keeps_density_samples_and_conditioning(kind, tmp_path):
    flow = make_flow(kind, MIXED[:2])
    save_model(flow, tmp_path)
    spec = json.loads((tmp_path / "model.json").read_text())
    assert spec["kind"] == "conditional_flow" and spec["lower"] == [None, 1.5]
    loaded = load_model(tmp_path)
    assert isinstance(loaded, ConditionalFlow) and loaded.spec() == flow.spec()
    flow.eval()
    c = torch.randn(6, CONTEXT)
    x = flow.sample(c, 1)[:, 0]
    torch.testing.assert_close(loaded.log_prob(x, c), flow.log_prob(x, c), atol=0, rtol=0)

    def draw(model, context):
        return model.sample(context, 50, generator=torch.Generator().manual_seed(3))

    assert torch.equal(draw(loaded, c), draw(flow, c))
    # FEDHEX's reload silently dropped the context: samples must still depend on it.
    assert not torch.allclose(draw(loaded, c), draw(loaded, c + 1.0))


def test_load_model_reports_missing_files_and_unknown_kinds(tmp_path):
    with pytest.raises(DetlearnError, match="not found"):
        load_model(tmp_path)
    save_model(make_flow("nsf", ["none"]), tmp_path)
    spec = json.loads((tmp_path / "model.json").read_text())
    (tmp_path / "model.json").write_text(json.dumps({**spec, "kind": "teapot"}))
    with pytest.raises(DetlearnError, match="unknown model kind 'teapot'"):
        load_model(tmp_path)


@pytest.mark.parametrize(
    ("kind", "supports"),
    [("nsf", ["lower"]), ("maf", ["both"]), ("realnvp", ["upper"]), ("nsf", MIXED[:2])],
)
def test_onnx_sampler_matches_pytorch(kind, supports, tmp_path):
    flow = make_flow(kind, supports)
    path = export_sampler_onnx(flow, tmp_path / "sampler.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["noise", "context"]
    gen = torch.Generator().manual_seed(7)
    for batch in (1, 257):
        z = torch.randn(batch, len(supports), generator=gen)
        c = 2.0 * torch.randn(batch, CONTEXT, generator=gen)
        (out,) = session.run(None, {"noise": z.numpy(), "context": c.numpy()})
        with torch.no_grad():
            ref = flow.sample_from_noise(z, c).numpy()
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
        assert in_support(flow, torch.from_numpy(out))


def test_onnx_export_requires_opset_17(tmp_path):
    with pytest.raises(ValueError, match="opset"):
        export_sampler_onnx(make_flow("nsf", ["none"]), tmp_path / "s.onnx", opset=13)


def test_lower_bound_zero_samples_stay_positive_and_finite():
    # A bound at 0: the first float inside is the smallest normal float, not a subnormal.
    flow = ConditionalFlow(1, 1, FlowConfig(kind="maf", hidden=[4]), [0.0])
    x = flow.sample_from_noise(torch.tensor([[-1e4]]), torch.zeros(1, 1)).detach()
    assert x.item() >= torch.finfo(torch.float32).tiny
    assert math.isfinite(flow.log_prob(x, torch.zeros(1, 1)).item())


def test_float64_inputs_are_accepted_by_a_float32_model():
    flow = make_flow("nsf", ["lower"])
    x, c = flow.sample(torch.randn(3, CONTEXT), 1)[:, 0].double(), torch.randn(3, CONTEXT)
    assert flow.log_prob(x, c.double()).dtype == torch.float32
    assert flow.sample(c.double(), 4).dtype == torch.float32


@pytest.mark.parametrize("shared", [True, False])
def test_spline_inverse_matches_zuko_inside_and_outside_its_domain(shared):
    # shared: one spline per context row for many values (the per-bin table); otherwise one
    # spline per value (its own knots gathered), as in a coupling layer's second feature.
    torch.manual_seed(0)
    lead = (5, 2, 1) if shared else (300, 2)
    params = [2 * torch.randn(*lead, 6), 2 * torch.randn(*lead, 6), torch.randn(*lead, 5)]
    ours = BinarySearchRQS(*params)
    ref = zuko.transforms.MonotonicRQSTransform(*params)
    y = 3 * torch.randn(5, 2, 400) if shared else 3 * torch.randn(300, 2)
    edges = torch.tensor([-30.0, -5.0, -4.9999, 0.0, 4.9999, 5.0, 30.0])
    y.view(-1)[: len(edges)] = edges
    x = ours.inv(y)
    torch.testing.assert_close(x, ref.inv(y), atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(ref(x), y, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("supports", [["lower"], MIXED[:2], MIXED[:3]])
@pytest.mark.parametrize(("rows", "n"), [(7, 300), (1, BLOCK + 5)])
def test_sample_is_the_inverse_flow_of_its_own_noise(kind, supports, rows, n):
    # sample() takes shortcuts (context-only units once per row, blocks of samples, the
    # two-feature conditioner tabulated when one row has >= BLOCK samples); it must still be
    # the flow's inverse of the noise it draws, with the context repeated per sample.
    flow = make_flow(kind, supports)
    f = len(supports)
    c = 2.0 * torch.randn(rows, CONTEXT)
    x = flow.sample(c, n, generator=torch.Generator().manual_seed(5))
    z = torch.randn((rows, n, f), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = flow.sample_from_noise(z.reshape(-1, f), c.repeat_interleave(n, 0))
    torch.testing.assert_close(x, ref.view(rows, n, f), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("supports", [["lower"], MIXED[:2]])
def test_sample_over_several_row_blocks_is_the_inverse_of_its_noise(supports, monkeypatch):
    # Rows are sampled ROW_BLOCK samples at a time (2^20; 3 rows of 300 here, so 7 rows make
    # three blocks, the last one short): the blocks must join into the flow's inverse.
    monkeypatch.setattr(conditional, "ROW_BLOCK", 900)
    flow, f = make_flow("nsf", supports), len(supports)
    c = 2.0 * torch.randn(7, CONTEXT)
    x = flow.sample(c, 300, generator=torch.Generator().manual_seed(6))
    z = torch.randn((7, 300, f), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        ref = flow.sample_from_noise(z.reshape(-1, f), c.repeat_interleave(300, 0))
    torch.testing.assert_close(x, ref.view(7, 300, f), atol=1e-5, rtol=1e-4)


def test_tabulated_conditioner_is_the_relu_network_everywhere():
    torch.manual_seed(2)
    flow = ConditionalFlow(2, CONTEXT, FlowConfig(kind="nsf", hidden=[64, 64], passes=2))
    t = flow.flow.transform.transforms[0]
    second = MaskedPass(t, torch.randn(1, CONTEXT), 1, BLOCK)
    assert second.pieces is not None
    kinks = second.pieces[0]
    x = torch.cat([torch.linspace(-50, 50, 20_001), kinks, kinks + 1e-4, kinks - 1e-4])
    x = torch.stack([x, torch.zeros_like(x)], dim=-1)[None]  # [1, n, 2], feature 0 known
    with torch.no_grad():
        table = second._conditioner(x)
        second.pieces = None
        network = second._conditioner(x)
    torch.testing.assert_close(table, network, atol=1e-5, rtol=1e-5)


def test_standardization_spreads_the_training_range_over_the_spline_domain():
    flow = make_flow("nsf", ["lower"])
    y = torch.cat([torch.randn(9000) * 0.3 + 1.0, torch.randn(1000) * 2.0 - 8.0])
    x = 1.5 + y.exp()[:, None]
    c = torch.randn(len(x), CONTEXT)
    flow.fit_normalization(x, c)
    u, _ = flow._to_flow_space(x, c)
    q = torch.quantile(u.double(), torch.tensor([1e-4, 1 - 1e-4], dtype=torch.float64))
    torch.testing.assert_close(q, torch.tensor([-4.5, 4.5], dtype=torch.float64), atol=1e-3, rtol=0)


def test_nsf_samples_beyond_the_training_range_need_base_noise_beyond_5():
    # Bug: with a mean/std standardization, a target whose log distance to the bound has a long
    # lower tail (m_omega piled up at the threshold) left the spline domain above the data
    # empty; the little probability a trained flow put there came out of exp() as samples
    # 10^3-10^4 times the data range. Now every spline maps [-5, 5] onto itself, and u = 5 is
    # half a unit of u above the training data's q(1 - 1e-4).
    flow = make_flow("nsf", ["lower"])
    y = torch.cat([torch.randn(9000) * 0.3 + 1.0, torch.randn(1000) * 2.0 - 8.0])
    x = 1.5 + y.exp()[:, None]
    flow.fit_normalization(x, torch.randn(len(x), CONTEXT))
    c = 3.0 * torch.randn(2000, CONTEXT)
    z = torch.rand(2000, 1) * 10 - 5
    z[:2, 0] = torch.tensor([-5.0, 5.0])
    samples = flow.sample_from_noise(z, c).detach()
    assert samples.max() - 1.5 <= 3 * (x.max() - 1.5)


def test_compiled_spline_kernels_match_zuko_in_float64():
    # The numba kernels sampling runs on CPU: one spline per value (two features per row) and
    # its piecewise-affine-conditioner form, against zuko evaluated in float64.
    from detlearn.models.flows import _kernels as kernels

    gen = torch.Generator().manual_seed(0)
    n, bins = 4000, 8
    total = 3 * bins - 1
    phi = 2 * torch.randn(n, 2 * total, generator=gen)
    y = 3 * torch.randn(n, 2, generator=gen)
    y[:6, 0] = torch.tensor([-30.0, -5.0, -4.9999, 4.9999, 5.0, 30.0])
    got = kernels.inverse_per_value(phi.numpy(), y.numpy(), 5.0, 1e-3)
    for f in range(2):
        w, h, d = phi[:, f * total : (f + 1) * total].double().split([bins, bins, bins - 1], 1)
        ref = zuko.transforms.MonotonicRQSTransform(w, h, d).inv(y[:, f].double())
        np.testing.assert_allclose(got[:, f], ref.numpy(), rtol=1e-4, atol=1e-4)
    assert (got[:6, 0] == y[:6, 0].numpy())[[0, 1, 5]].all()  # outside (-5, 5]: identity

    pieces = 9
    kinks = torch.sort(torch.randn(pieces - 1, generator=gen)).values
    rows = torch.randn(pieces, 1 + 4 * total, generator=gen)
    known = 2 * torch.randn(n, generator=gen)
    p = torch.searchsorted(kinks, known)
    r = rows[p]
    phi = r[:, 1 : 1 + 2 * total] + r[:, 1 + 2 * total :] * (known - r[:, 0]).unsqueeze(1)
    np.testing.assert_allclose(
        kernels.inverse_piecewise(kinks.numpy(), rows.numpy(), known.numpy(), y.numpy(), 5.0, 1e-3),
        kernels.inverse_per_value(phi.numpy(), y.numpy(), 5.0, 1e-3),
        rtol=1e-5,
        atol=1e-5,
    )


def test_sampling_from_several_threads_at_once_gives_the_sequential_samples():
    from concurrent.futures import ThreadPoolExecutor

    flow = make_flow("nsf", ["lower"])
    c = torch.randn(50, CONTEXT)

    def draw(seed: int) -> torch.Tensor:
        return flow.sample(c, 1000, generator=torch.Generator().manual_seed(seed))

    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(draw, range(8)))
    assert all(torch.equal(x, draw(i)) for i, x in enumerate(parallel))


# ---- targets relative to a context column, log contexts (relative_to, log_context) -----------

RELATIVE = {"x0": "c0", "x1": "c1", "x2": "c0", "x3": "c1"}  # every support kind of MIXED


def make_relative_flow(kind: str, **cfg: object) -> tuple[ConditionalFlow, torch.Tensor]:
    """A MIXED-support flow whose four targets are relative to the two (positive) contexts,
    the network seeing log(c0), and positive contexts spanning decades (like generated masses)."""
    torch.manual_seed(0)
    lower = [SUPPORTS[s][0] for s in MIXED]
    upper = [SUPPORTS[s][1] for s in MIXED]
    config = FlowConfig(
        kind=kind,
        hidden=[16, 16],
        transforms=2,
        bins=6,
        relative_to=RELATIVE,
        log_context=["c0"],
        **cfg,
    )
    flow = ConditionalFlow(4, CONTEXT, config, lower, upper)
    c = torch.exp(1.5 * torch.randn(500, CONTEXT))
    flow.fit_normalization(flow.support.inverse(1.5 * torch.randn(500, 4) + 0.5, c), c)
    return flow, c


def test_relative_target_is_modelled_in_units_of_its_context_column():
    flow, _ = make_relative_flow("nsf")
    x = torch.tensor([[0.3, 2.5, -3.0, 1.0]], dtype=torch.float64)
    c = torch.tensor([[2.0, 4.0]], dtype=torch.float64)
    y, ladj = flow.double().support.forward(x, c)
    # x0 / c0; log((x1 - 1.5) / c1); -log((-2 - x2) / c0); the two-sided logit is scale-free.
    expected = [0.15, math.log(1.0 / 4.0), -math.log(1.0 / 2.0), math.log(2.0 / 2.0)]
    torch.testing.assert_close(y[0], torch.tensor(expected, dtype=torch.float64))
    plain = ConditionalFlow(4, CONTEXT, FlowConfig(), flow.lower, flow.upper).double()
    # Only the unbounded target's Jacobian changes (1 / c0); the log maps keep theirs.
    torch.testing.assert_close(ladj, plain.support.forward(x, c)[1] - math.log(2.0))


@pytest.mark.parametrize("kind", KINDS)
def test_relative_targets_round_trip_logdet_support_onnx_and_reload(kind, tmp_path):
    flow, c = make_relative_flow(kind)
    c = c[:64]
    z = torch.randn(64, 4).clamp(-3, 3)
    with torch.no_grad():
        x = flow.sample_from_noise(z, c)
        torch.testing.assert_close(flow.latent(x, c), z, atol=1e-4, rtol=1e-4)
    assert in_support(flow, x)
    # sample() broadcasts each context row over its samples
    drawn = flow.sample(c[:3], 100, generator=torch.Generator().manual_seed(5))
    noise = torch.randn((3, 100, 4), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = flow.sample_from_noise(noise.reshape(-1, 4), c[:3].repeat_interleave(100, 0))
    torch.testing.assert_close(drawn, ref.view(3, 100, 4), atol=1e-5, rtol=1e-4)

    f64 = make_relative_flow(kind)[0].double()
    xd = f64.support.inverse(torch.randn(40, 4, dtype=torch.float64), c[:40].double())
    xd.requires_grad_()
    u, ladj = f64._to_flow_space(xd, c[:40].double())
    jac = torch.stack(
        [torch.autograd.grad(u[:, j].sum(), xd, retain_graph=True)[0] for j in range(4)], 1
    )
    torch.testing.assert_close(ladj, torch.logdet(jac))

    path = export_sampler_onnx(flow, tmp_path / "sampler.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"noise": z.numpy(), "context": c.numpy()})
    np.testing.assert_allclose(out, x.numpy(), rtol=1e-5, atol=1e-5)

    save_model(flow, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert loaded.spec()["flow"]["relative_to"] == RELATIVE
    assert loaded.spec()["flow"]["log_context"] == ["c0"]
    torch.testing.assert_close(loaded.log_prob(x, c), flow.log_prob(x, c), atol=0, rtol=0)


def test_relative_to_names_and_a_non_positive_context_are_errors():
    with pytest.raises(DetlearnError, match=r"'x9' is not a target; targets: x0, x1"):
        ConditionalFlow(2, CONTEXT, FlowConfig(relative_to={"x9": "c0"}))
    with pytest.raises(DetlearnError, match=r"'cc0' is not a context column \(did you mean 'c0'"):
        ConditionalFlow(2, CONTEXT, FlowConfig(relative_to={"x0": "cc0"}))
    flow = ConditionalFlow(1, CONTEXT, FlowConfig(relative_to={"x0": "c1"}), lower=[0.0])
    c = torch.tensor([[1.0, 2.0], [1.0, 0.0], [1.0, -1.0]])
    x = torch.ones(3, 1)
    with pytest.raises(
        DetlearnError,
        match="context 'c1' has 2 values <= 0 or NaN, but must be > 0: target 'x0' is relative_to it",
    ):
        flow.fit_normalization(x, c)
    lp = flow.log_prob(x, c)
    assert torch.isfinite(lp[0]) and torch.isinf(lp[1:]).all()


def test_log_context_is_standardized_in_log_space_and_must_be_positive():
    flow, c = make_relative_flow("nsf")
    log_c0 = torch.log(c[:, 0].double())
    torch.testing.assert_close(flow.c_mean[0].double(), log_c0.mean(), atol=1e-5, rtol=0)
    torch.testing.assert_close(flow.c_std[0].double(), log_c0.std(), atol=1e-5, rtol=0)
    torch.testing.assert_close(flow.c_mean[1].double(), c[:, 1].double().mean(), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        flow._context(c)[:, 0], (torch.log(c[:, 0]) - flow.c_mean[0]) / flow.c_std[0]
    )
    with pytest.raises(
        DetlearnError, match=r"'ctx' is not a context column; context columns: c0, c1"
    ):
        ConditionalFlow(1, CONTEXT, FlowConfig(log_context=["ctx"]))
    plain = ConditionalFlow(1, CONTEXT, FlowConfig(log_context=["c1"]))
    c = torch.tensor([[-1.0, 2.0], [1.0, 0.0]])
    with pytest.raises(
        DetlearnError,
        match=r"context 'c1' has 1 values <= 0 or NaN, but must be > 0: it is in model\.flow\.log_context",
    ):
        plain.fit_normalization(torch.ones(2, 1), c)


def test_context_noise_smears_the_network_context_in_training_only(tmp_path):
    # c0 is read as log(c0): its noise is in log units, i.e. a relative smear of the label.
    flow, c = make_relative_flow("nsf", context_noise={"c0": 0.1})
    n = 200_000
    c = c[torch.randint(len(c), (n,), generator=torch.Generator().manual_seed(1))]
    torch.manual_seed(2)
    noise = flow._context(c, noisy=True) - flow._context(c)
    # The standardized context moves by 0.1 / std(log c0) in column 0, not at all in column 1;
    # the sample standard deviation of n normal draws is known to 1 / sqrt(2 n) relative.
    want = 0.1 / float(flow.c_std[0])
    assert abs(float(noise[:, 0].std()) / want - 1) < 4 / math.sqrt(2 * n)
    assert abs(float(noise[:, 0].mean())) < 4 * want / math.sqrt(n)
    assert (noise[:, 1] == 0).all()

    x = flow.sample(c[:256], 1, generator=torch.Generator().manual_seed(3))[:, 0]
    batch = (x, c[:256])
    exact = -flow.log_prob(*batch).mean()
    flow.eval()  # validation and every use after training: the density at the labels as given
    torch.testing.assert_close(flow.loss(batch), exact, atol=0, rtol=0)
    flow.train()
    noisy = [flow.loss(batch) for _ in range(2)]
    assert noisy[0] != noisy[1] and exact not in noisy
    torch.testing.assert_close(-flow.log_prob(*batch).mean(), exact, atol=0, rtol=0)

    # The noise is configuration, not a weight: a saved model reloads with it and the same density.
    save_model(flow, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    torch.testing.assert_close(loaded._noise, flow._noise, atol=0, rtol=0)
    torch.testing.assert_close(loaded.log_prob(*batch), flow.log_prob(*batch), atol=0, rtol=0)


def test_context_noise_names_and_values_are_checked():
    with pytest.raises(
        DetlearnError, match=r"model\.flow\.context_noise: 'ctx' is not a context column"
    ):
        ConditionalFlow(1, CONTEXT, FlowConfig(context_noise={"ctx": 0.1}))
    with pytest.raises(ValidationError, match=r"context_noise\.c0\s+Input should be greater"):
        FlowConfig(context_noise={"c0": -0.1})


# ---- per-target context columns (context_of) -------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_context_of_keeps_a_targets_conditioner_off_the_other_context_columns(kind):
    flow = make_flow(kind, ["lower", "none"], context_of={"x1": ["c1"]})
    x = torch.randn(8, 2)
    c = torch.randn(8, CONTEXT)
    for t in flow.flow.transform.transforms:
        inputs = torch.cat([x, c], dim=1).requires_grad_()
        params = t.hyper(inputs).unflatten(-1, (2, -1))
        grad_x1 = torch.autograd.grad(params[:, 1].sum(), inputs, retain_graph=True)[0]
        grad_x0 = torch.autograd.grad(params[:, 0].sum(), inputs)[0]
        assert (grad_x1[:, 2] == 0).all() and (grad_x1[:, 3] != 0).any()  # x1 reads c1 only
        assert (grad_x0[:, 2] != 0).any() and (grad_x0[:, 3] != 0).any()  # x0 reads both
    with pytest.raises(DetlearnError, match=r"model\.flow\.context_of: 'c9' is not a context"):
        make_flow(kind, ["lower", "none"], context_of={"x1": ["c9"]})


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("rows", "n"), [(7, 300), (1, BLOCK + 5)])
def test_context_of_flow_samples_its_own_inverse_exports_and_reloads(kind, rows, n, tmp_path):
    flow = make_flow(kind, ["lower", "none"], context_of={"x1": ["c1"]})
    c = 2.0 * torch.randn(rows, CONTEXT)
    x = flow.sample(c, n, generator=torch.Generator().manual_seed(5))
    z = torch.randn((rows, n, 2), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = flow.sample_from_noise(z.reshape(-1, 2), c.repeat_interleave(n, 0))
    torch.testing.assert_close(x, ref.view(rows, n, 2), atol=1e-5, rtol=1e-4)
    if rows > 1:
        path = export_sampler_onnx(flow, tmp_path / "sampler.onnx")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        zz, cc = z[:, 0].contiguous(), c
        (out,) = session.run(None, {"noise": zz.numpy(), "context": cc.numpy()})
        with torch.no_grad():
            np.testing.assert_allclose(
                out, flow.sample_from_noise(zz, cc).numpy(), atol=1e-5, rtol=1e-5
            )
        save_model(flow, tmp_path / "m")
        loaded = load_model(tmp_path / "m")
        xs = x[:, 0]
        torch.testing.assert_close(loaded.log_prob(xs, c), flow.log_prob(xs, c), atol=0, rtol=0)


@pytest.mark.parametrize("kind", ["maf", "realnvp"])
def test_affine_scales_stay_bounded_however_large_the_network_outputs(kind):
    """FEDHEX clamped its MAF log-scales with tanh; zuko's affine transform soft-bounds each
    at ln(1000): with the networks' weights blown up 1e4 times, each transform still changes a
    feature's log-density by at most ln(1000) (the shifts are not bounded, as in FEDHEX)."""
    torch.manual_seed(0)
    transforms = 3
    flow = ConditionalFlow(2, 1, FlowConfig(kind=kind, hidden=[16], transforms=transforms))
    with torch.no_grad():
        for p in flow.parameters():
            p.mul_(1e4)
    x, c = torch.randn(500, 2), torch.randn(500, 1)
    with torch.no_grad():
        u, _ = flow._to_flow_space(x, c)
        _, ladj = flow.flow(flow._context(c)).transform.call_and_ladj(u)
    # Summed over 2 features and the transforms: within the bound, yet beyond one transform's.
    assert ladj.abs().max().item() <= transforms * 2 * math.log(1000) * (1 + 1e-5)
    assert ladj.abs().max().item() > math.log(1000)
