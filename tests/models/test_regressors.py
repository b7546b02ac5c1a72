"""The dense regressor: FACILE's Model4Exp exactly, folding for deployment, losses, save/load."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detlearn.config import RegressorConfig
from detlearn.errors import DetlearnError
from detlearn.models import load_model, save_model
from detlearn.models.regressors import Regressor


def _trained_like(cfg: RegressorConfig, seed: int = 0) -> tuple[Regressor, torch.Tensor]:
    """A regressor with fitted scaling and non-trivial BatchNorm statistics and affine terms."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(4000, 36, generator=gen) * torch.linspace(1, 500, 36) + 100
    y = x[:, :4].sum(1).abs() + 1
    model = Regressor(36, cfg)
    model.fit_normalization(x, y)
    model.train()
    with torch.no_grad():
        for _ in range(5):
            model(x[torch.randint(0, len(x), (512,), generator=gen)])
        for m in model.net:
            if isinstance(m, torch.nn.BatchNorm1d):
                m.weight.uniform_(0.5, 2.0, generator=gen)
                m.bias.normal_(generator=gen)
    return model.eval(), x


def test_model4exp_has_facile_layers_and_2111_keras_parameters():
    model = Regressor(36, RegressorConfig(arch="model4exp"))
    kinds = [type(m).__name__ for m in model.net]
    assert kinds == ["BatchNorm1d", "Linear", "ReLU", "BatchNorm1d", "Linear", "ReLU",
                     "BatchNorm1d", "Linear", "ReLU", "Linear"]  # fmt: skip
    assert [m.out_features for m in model.net if isinstance(m, torch.nn.Linear)] == [36, 11, 3, 1]
    assert model.keras_parameter_count() == 2111
    # Keras momentum 0.6 weighs the old moving average by 0.6, i.e. PyTorch momentum 0.4.
    assert all(m.momentum == pytest.approx(0.4) for m in model.net
               if isinstance(m, torch.nn.BatchNorm1d))  # fmt: skip


def test_mlp_follows_its_config():
    model = Regressor(5, RegressorConfig(arch="mlp", hidden=[8, 4], batch_norm=False,
                                         activation="tanh"))  # fmt: skip
    assert [type(m).__name__ for m in model.net] == ["Linear", "Tanh", "Linear", "Tanh", "Linear"]


@pytest.mark.parametrize("arch", ["model4exp", "mlp"])
def test_folded_network_is_the_same_function(arch):
    model, x = _trained_like(RegressorConfig(arch=arch))
    folded = model.folded()
    kinds = {type(m).__name__ for m in folded[1:]}
    assert type(folded[0]).__name__ == "_Center" and kinds <= {"Linear", "ReLU", "Tanh"}
    with torch.no_grad():
        want, got = model(x), folded(x).squeeze(-1)
    scale = float(model.y_std)
    assert torch.abs(got - want).max() / scale < 1e-5


@pytest.mark.parametrize("activation", ["relu", "tanh", "silu"])
def test_onnx_graph_is_the_same_function_with_the_batch_along_columns(activation):
    import onnxruntime as ort

    from detlearn.export import regressor_onnx_model

    cfg = RegressorConfig(arch="mlp", hidden=[16, 8, 3], activation=activation)
    model, x = _trained_like(cfg)
    with torch.no_grad():
        want = model(x).numpy()
    for fold_center in (True, False):
        graph = regressor_onnx_model(model, fold_center)
        ops = [node.op_type for node in graph.graph.node]
        assert ops.count("Gemm") == 4 and ("Sub" in ops) == (not fold_center)
        session = ort.InferenceSession(
            graph.SerializeToString(), providers=["CPUExecutionProvider"]
        )
        got = session.run(None, {"inputs": x.numpy()})[0]
        assert got.shape == (len(x),)
        assert np.abs(got - want).max() / float(model.y_std) < 1e-5


def test_export_keeps_the_centring_when_folding_it_loses_precision(tmp_path):
    """An input at 17.3 +- 0.05 (a pedestal): folded, float32 cancels ~350 x its spread."""
    import onnxruntime as ort

    from detlearn.export import REGRESSOR_PARITY, regressor_onnx_model

    model, x = _trained_like(RegressorConfig(arch="model4exp"))
    x[:, 5] = 17.3 + 0.05 * torch.randn(len(x), generator=torch.Generator().manual_seed(1))
    model.fit_normalization(x, x[:, :4].sum(1).abs() + 1)
    with torch.no_grad():
        want = model(x).numpy()
    errors = {}
    for fold_center in (True, False):
        graph = regressor_onnx_model(model, fold_center).SerializeToString()
        got = ort.InferenceSession(graph, providers=["CPUExecutionProvider"]).run(
            None, {"inputs": x.numpy()}
        )[0]
        errors[fold_center] = np.abs(got - want).max() / (REGRESSOR_PARITY * float(model.y_std))
    assert errors[True] > 1 >= errors[False], errors


@torch.no_grad()
def test_losses_vanish_at_the_truth_and_weights_select_rows():
    model, x = _trained_like(RegressorConfig(loss="mse"))
    with torch.no_grad():
        y = model(x)
    assert float(model.loss((x, y))) < 1e-10
    for loss in ("huber", "relative"):
        other = Regressor(36, RegressorConfig(loss=loss))
        other.load_state_dict(model.state_dict())
        assert float(other.eval().loss((x, y))) < 1e-10
    # A weight of zero removes a row: the loss is the loss of the other rows.
    off = y.clone()
    off[:10] += 10 * model.y_std  # 10 rows, 10 sigma off: mean loss 100 * 10 / 4000
    w = torch.ones(len(x))
    w[:10] = 0
    assert float(model.loss((x, off, w))) < 1e-10
    assert float(model.loss((x, off))) > 0.1


@torch.no_grad()
def test_relative_loss_is_the_mean_squared_relative_error():
    model, x = _trained_like(RegressorConfig(loss="relative"))
    with torch.no_grad():
        pred = model(x)
    target = pred / 1.1
    assert float(model.loss((x, target))) == pytest.approx(0.01, rel=1e-4)


def test_save_load_gives_the_same_predictions(tmp_path):
    model, x = _trained_like(RegressorConfig())
    save_model(model, tmp_path)
    again = load_model(tmp_path)
    assert isinstance(again, Regressor) and again.spec() == model.spec()
    with torch.no_grad():
        np.testing.assert_array_equal(again(x).numpy(), model(x).numpy())


def test_wrong_input_width_is_a_clear_error():
    model = Regressor(36, RegressorConfig())
    with pytest.raises(DetlearnError, match=r"expected shape \[N, 36\], got \[4, 35\]"):
        model(torch.zeros(4, 35))


def test_scaling_is_fitted_on_the_training_rows_only(tmp_path):
    """Validation rows ten units away must not move the input or target scaling."""
    from detlearn.config import TrainingConfig
    from detlearn.training import fit

    rng = np.random.default_rng(0)
    x_train = rng.uniform(0, 1, (2000, 3)).astype(np.float32)
    x_val = rng.uniform(10, 11, (500, 3)).astype(np.float32)
    train = {"inputs": x_train, "target": x_train.sum(1)}
    val = {"inputs": x_val, "target": x_val.sum(1)}
    model = Regressor(3, RegressorConfig(arch="mlp", hidden=[8]), [f"x{i}" for i in range(3)], "y")
    fit(model, train, val, TrainingConfig(batch_size=500, max_epochs=1), tmp_path)
    np.testing.assert_allclose(model.x_mean.numpy(), x_train.mean(0), atol=1e-6)
    np.testing.assert_allclose(model.x_std.numpy(), x_train.std(0, ddof=1), rtol=1e-5)
    assert model.y_mean.item() == pytest.approx(float(train["target"].mean()), abs=1e-5)
