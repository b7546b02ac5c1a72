"""Property tests (hypothesis) on the transform pairs every model and reader relies on: the
support bijection and its inverse, a flow's standardization there and back, and expressions
against the same formula in numpy."""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from detlearn.config import FlowConfig
from detlearn.io.expressions import Expression
from detlearn.models import ConditionalFlow
from detlearn.models.flows.support import Support

FAST = settings(max_examples=200, deadline=None, derandomize=True)

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)
# Bounds as a model holds them (float32); an interval at least 1 wide, so that points a
# hundredth of it inside a bound are many float32 steps away from it.
bounds = st.one_of(
    st.tuples(st.none(), st.none()),
    st.tuples(finite, st.none()),
    st.tuples(st.none(), finite),
    st.tuples(finite, st.floats(1.0, 1e3)).map(lambda ab: (ab[0], ab[0] + ab[1])),
).map(lambda ab: tuple(None if v is None else float(np.float32(v)) for v in ab))


def _interval(lower: float | None, upper: float | None) -> tuple[float, float]:
    """A finite stretch of the support to draw points from."""
    if lower is not None and upper is not None:
        return lower, upper
    if lower is not None:
        return lower, lower + 100.0
    if upper is not None:
        return upper - 100.0, upper
    return -50.0, 50.0


@FAST
@given(bound=bounds, u=st.lists(st.floats(0.01, 0.99), min_size=1, max_size=20))
def test_the_support_map_is_inverted_and_its_jacobian_is_the_derivative(bound, u):
    lower, upper = bound
    lo, hi = _interval(lower, upper)
    x = torch.tensor([[lo + (hi - lo) * v] for v in u], dtype=torch.float64)
    s = Support([lower], [upper], [None])
    c = torch.ones(len(x), 1, dtype=torch.float64)
    y, ladj = s.forward(x, c)
    assert torch.isfinite(y).all() and not s.outside(x, c).any()
    # Exact to float32 rounding of the bounds and of x near them.
    scale = max(abs(lo), abs(hi), 1.0)
    assert torch.allclose(s.inverse(y, c), x, rtol=0, atol=1e-5 * scale)
    # log|ds/dx| against a central difference (the step stays inside the support).
    h = 1e-4 * (hi - lo)
    up, _ = s.forward(x + h, c)
    down, _ = s.forward(x - h, c)
    numeric = torch.log((up - down) / (2 * h))[:, 0]
    assert torch.allclose(ladj, numeric, atol=1e-3 * scale / (hi - lo))


@FAST
@given(bound=bounds, z=st.lists(st.floats(-1e4, 1e4), min_size=1, max_size=20))
def test_any_latent_value_maps_inside_the_support(bound, z):
    lower, upper = bound
    s = Support([lower], [upper], [None])
    y = torch.tensor([[v] for v in z], dtype=torch.float32)
    x = s.inverse(y, torch.ones(len(y), 1))
    assert torch.isfinite(x).all() and not s.outside(x, torch.ones(len(y), 1)).any()


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    scale=st.floats(1e-3, 1e4),
    shift=st.floats(-1e4, 1e4),
    seed=st.integers(0, 2**16),
)
def test_a_flows_latent_map_inverts_its_sampler_at_any_scale(scale, shift, seed):
    torch.manual_seed(seed)
    flow = ConditionalFlow(1, 1, FlowConfig(hidden=[8], transforms=1, bins=4))
    rng = np.random.default_rng(seed)
    x = torch.tensor(shift + scale * rng.normal(size=(256, 1)), dtype=torch.float32)
    c = torch.tensor(rng.uniform(-1, 1, (256, 1)), dtype=torch.float32)
    flow.fit_normalization(x, c)
    with torch.no_grad():
        z = torch.randn(64, 1, generator=torch.Generator().manual_seed(seed))
        back = flow.latent(flow.sample_from_noise(z, c[:64]), c[:64])
    # x travels as float32: where |shift| >> scale its rounding (2^-24 |x|) is what is lost.
    assert torch.allclose(back, z, atol=2e-3 + 1e-6 * abs(shift) / scale)


numbers = st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=16)
FORMULAS = {
    "sqrt(a**2 + b**2)": lambda a, b: np.sqrt(a**2 + b**2),
    "arctan2(b, a)": lambda a, b: np.arctan2(b, a),
    "where(a > b, a - b, b * 2)": lambda a, b: np.where(a > b, a - b, b * 2),
    "abs(a) + minimum(a, b) / (1 + b**2)": lambda a, b: np.abs(a) + np.minimum(a, b) / (1 + b**2),
    "(a > 0) && !(b > 0) || a == b": lambda a, b: ((a > 0) & ~(b > 0)) | (a == b),
    "log1p(abs(a)) * exp(-abs(b) / 100)": lambda a, b: (
        np.log1p(np.abs(a)) * np.exp(-np.abs(b) / 100)
    ),
}


@FAST
@given(formula=st.sampled_from(sorted(FORMULAS)), a=numbers, data=st.data())
def test_an_expression_computes_what_numpy_does(formula, a, data):
    b = data.draw(st.lists(st.floats(-1e3, 1e3), min_size=len(a), max_size=len(a)))
    a, b = np.array(a), np.array(b)
    got = np.asarray(Expression(formula).evaluate({"a": a, "b": b}), dtype=np.float64)
    want = np.asarray(FORMULAS[formula](a, b), dtype=np.float64)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert math.isfinite(float(np.sum(got)))
