"""Training refuses a network that will not fit in memory, before it writes anything, naming
the keys to lower; the sizes it checks are those of the networks it would build."""

from __future__ import annotations

import pytest
import torch
from conftest import flat_config, write_flat

from detlearn import training
from detlearn.cli import app
from detlearn.config import FlowConfig, RunConfig
from detlearn.families import FAMILIES
from detlearn.models import (
    ConditionalFlow,
    CountModel,
    ImageClassifier,
    PointCloudClassifier,
    Regressor,
)
from detlearn.prepare import prepare
from detlearn.recipes import load_config
from detlearn.runs.training_data import TrainingData
from detlearn.training import BYTES_PER_PARAMETER, ModelSize, training_bytes

#: Training memory per parameter as torch holds it: the weight, its gradient, AdamW's two
#: moments, each of the parameter's own size.
TORCH_COPIES = 4


@pytest.fixture(scope="module")
def flat_dataset(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("flat")
    path = write_flat(tmp / "f.root", n=1000, seed=3)
    config = flat_config(tmp, [str(path)])
    prepare(load_config(config), tmp / "ds", progress=False)
    return config, tmp / "ds"


def _cli(runner, *args):
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, [line for line in result.output.splitlines() if line.strip()]


def test_a_flow_too_big_for_memory_is_refused_naming_the_keys_before_any_file(
    flat_dataset, tmp_path, runner, monkeypatch
):
    config, ds = flat_dataset
    monkeypatch.setattr(training, "usable_memory", lambda: 50_000_000)
    sets = ["--set=model.flow.hidden=[1024, 1024]", "--set=model.flow.transforms=8"]
    run = tmp_path / "run"
    code, lines = _cli(runner, "train", config, "-d", ds, "-o", run, "--quiet", *sets)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: training needs ~") and "GB of memory" in lines[0]
    assert "0.05 GB available" in lines[0]
    for key in ("model.flow.hidden", "model.flow.transforms", "training.batch_size"):
        assert key in lines[0]
    assert not run.exists()
    run.mkdir()  # an existing empty run folder stays empty
    code, _ = _cli(runner, "train", config, "-d", ds, "-o", run, "--quiet", *sets)
    assert code == 2 and not any(run.iterdir())


def test_the_batch_alone_can_be_too_big(flat_dataset, tmp_path, runner, monkeypatch):
    config, ds = flat_dataset
    monkeypatch.setattr(training, "usable_memory", lambda: 50_000_000)
    args = ["train", config, "-d", ds, "-o", tmp_path / "run", "--quiet"]
    code, lines = _cli(runner, *args, "--set=training.batch_size=1000000")
    assert code == 2 and "training.batch_size" in lines[-1] and not (tmp_path / "run").exists()


def _data(features: int = 2, context: int = 3) -> TrainingData:
    """Columns by role, as the families' sizes read them (no dataset needed)."""
    target, ctx = [f"x{i}" for i in range(features)], [f"c{i}" for i in range(context)]
    return TrainingData(None, ctx, target, [], ["label"])  # type: ignore[arg-type]


def _parameter_bytes(*models: torch.nn.Module) -> int:
    return sum(TORCH_COPIES * p.numel() * p.element_size() for m in models for p in m.parameters())


CASES = {
    "flow nsf, 2 targets": ({"family": "flow"}, 2),
    "flow nsf, 1 target": ({"family": "flow"}, 1),
    "flow maf": ({"family": "flow", "flow": {"kind": "maf"}}, 3),
    "flow realnvp": ({"family": "flow", "flow": {"kind": "realnvp"}}, 2),
    "flow with context_of": ({"family": "flow", "flow": {"context_of": {"x0": ["c0"]}}}, 2),
    "flow with its count model": ({"family": "flow", "count": "negbinom"}, 2),
    "regressor model4exp": ({"family": "regressor"}, 1),
    "regressor mlp": ({"family": "regressor", "regressor": {"arch": "mlp"}}, 1),
    "classifier cnn": ({"family": "classifier"}, 1),
    "classifier point_cloud": ({"family": "classifier", "classifier": {"arch": "point_cloud"}}, 1),
}


def _real(cfg: RunConfig, data: TrainingData) -> list[torch.nn.Module]:
    """The networks the family's training builds, really built."""
    model = cfg.model
    if model.family == "flow":
        flows = [ConditionalFlow(len(data.target), len(data.context), model.flow)]
        count = [CountModel(len(data.context), model.count_hidden)] if model.count != "none" else []
        return flows + count
    if model.family == "regressor":
        return [Regressor(len(data.context), model.regressor)]
    if model.classifier.arch == "cnn":
        image = model.classifier.image
        return [ImageClassifier(image.channels, image.shape, model.classifier)]
    return [PointCloudClassifier(len(model.classifier.hits), model.classifier)]


@pytest.mark.parametrize("case", CASES)
def test_the_parameter_estimate_is_within_25_percent_of_the_real_models(case):
    model, features = CASES[case]
    cfg = RunConfig.model_validate({"model": model})
    data = _data(features)
    sizes = FAMILIES[cfg.model.family].sizes(cfg, data)
    estimate = sum(s.parameters for s in sizes) * BYTES_PER_PARAMETER
    real = _parameter_bytes(*_real(cfg, data))
    assert abs(estimate - real) <= 0.25 * real, (estimate, real)


def test_the_bdt_has_no_network_to_size():
    cfg = RunConfig.model_validate(
        {"model": {"family": "classifier", "classifier": {"arch": "bdt"}}}
    )
    assert FAMILIES["classifier"].sizes(cfg, _data()) == []


def test_a_flow_of_the_widest_layers_within_bounds_is_tens_of_gigabytes():
    """``hidden: [8192] * 16`` passes the config's bounds, and no laptop trains it."""
    flow = FlowConfig(hidden=[8192] * 16, transforms=16)
    parameters, activations = ConditionalFlow.size(2, 3, flow)
    need = training_bytes([ModelSize(parameters, activations, ())], batch_size=4096)
    assert parameters > 10**10 and need > 100e9
