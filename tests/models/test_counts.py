"""CountModel: a negative-binomial N | context that allows zeros and recovers the mean."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detlearn.config import TrainingConfig
from detlearn.errors import DetlearnError
from detlearn.models import CountModel, load_model, save_model
from detlearn.training import fit


def test_shapes_and_zero_counts():
    model = CountModel(3, hidden=[8])
    c = torch.randn(5, 3)
    n = torch.tensor([0, 0, 1, 5, 30])
    lp = model.log_prob(n, c)
    assert lp.shape == (5,) and torch.isfinite(lp).all()
    assert model.mean(c).shape == (5,)
    s = model.sample(c)
    assert s.shape == (5,) and s.dtype == torch.long and (s >= 0).all()


def test_probabilities_sum_to_one():
    torch.manual_seed(0)
    model = CountModel(2, hidden=[8])
    torch.nn.init.normal_(model.net[-1].weight)
    model.log_mean.fill_(np.log(20.0))
    c = torch.randn(4, 2)
    n = torch.arange(0, 20_000, dtype=torch.float32)
    for row in c:
        total = model.log_prob(n, row.expand(len(n), 2)).exp().sum().item()
        assert total == pytest.approx(1.0, abs=1e-4)


def test_sampler_matches_the_mean_and_variance():
    model = CountModel(1, hidden=[4])
    model.fit_normalization(torch.full((100,), 7.0), torch.randn(100, 1))
    c = torch.zeros(20_000, 1)
    s = model.sample(c, generator=torch.Generator().manual_seed(0)).double()
    mu, r = 7.0, 1.0  # the zero-initialized head predicts mean(N) and r = 1
    var = mu + mu**2 / r
    assert model.mean(c[:1]).item() == pytest.approx(mu, rel=1e-5)
    assert s.mean().item() == pytest.approx(mu, abs=5 * (var / len(s)) ** 0.5)
    assert s.var().item() == pytest.approx(var, rel=0.1)
    again = model.sample(c, generator=torch.Generator().manual_seed(0)).double()
    assert torch.equal(s, again)


def test_negative_counts_are_rejected():
    with pytest.raises(DetlearnError, match=">= 0"):
        CountModel(1).fit_normalization(torch.tensor([1.0, -1.0]), torch.zeros(2, 1))


def test_save_load_round_trip(tmp_path):
    model = CountModel(2, hidden=[8])
    model.fit_normalization(torch.tensor([0.0, 3.0, 9.0]), torch.randn(3, 2))
    save_model(model, tmp_path)
    loaded = load_model(tmp_path)
    assert isinstance(loaded, CountModel) and loaded.spec() == model.spec()
    c, n = torch.randn(5, 2), torch.tensor([0, 1, 2, 3, 4])
    assert torch.equal(loaded.log_prob(n, c), model.log_prob(n, c))


def test_fit_recovers_the_conditional_mean(tmp_path):
    rng = np.random.default_rng(1)

    def data(size):
        c = rng.uniform(-1, 1, (size, 1)).astype(np.float32)
        mu, r = np.exp(1.5 + 0.8 * c[:, 0]), 4.0
        return {"count": rng.negative_binomial(r, r / (r + mu)), "context": c}

    train, val = data(6000), data(1000)
    torch.manual_seed(0)
    model = CountModel(1, hidden=[16])
    cfg = TrainingConfig(batch_size=256, lr=2e-2, max_epochs=12, patience=12)
    fit(model, train, val, cfg, tmp_path, progress=False)
    c, n = train["context"][:, 0], train["count"]
    with torch.no_grad():
        pred = model.mean(torch.as_tensor(train["context"])).numpy()
    for lo in (-1.0, -0.5, 0.0, 0.5):
        sel = (c >= lo) & (c < lo + 0.5)
        # The MLE of a bin's mean is within a few standard errors of the bin's sample mean.
        se = n[sel].std() / np.sqrt(sel.sum())
        assert pred[sel].mean() == pytest.approx(n[sel].mean(), abs=4 * se)
