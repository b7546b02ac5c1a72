"""Shared fixtures: small ROOT files written with uproot, and the CLI runner."""

from __future__ import annotations

from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot
from typer.testing import CliRunner

SHARED = Path(__file__).resolve().parents[1].parent / "shared"

#: A klm-timing run small enough for a test: the recipe's model shrunk, one epoch, one worker
#: (tests merge in what they need beside it).
KLM_TINY = {
    "model": {
        "flow": {"transforms": 1, "bins": 8, "hidden": [16]},
        "count_hidden": [8],
        "count_max_epochs": 2,
    },
    "training": {"max_epochs": 1, "batch_size": 4096},
    "executor": {"workers": 1},
}


def write_flat(
    path: Path, n: int = 1000, seed: int = 0, tree: str = "Events", nan_rows: int = 0
) -> Path:
    """A flat ntuple: per-entry px, py, pz [GeV], a region flag, and jagged hit energies."""
    rng = np.random.default_rng(seed)
    px, py, pz = rng.normal(0, 1, (3, n))
    if nan_rows:
        px[:nan_rows] = np.nan
    counts = rng.integers(0, 4, n)
    columns = {
        "px": px,
        "py": py,
        "pz": pz,
        "region": rng.integers(0, 2, n).astype(np.int32),
        "hitE": ak.unflatten(rng.exponential(1.0, counts.sum()), counts),
    }
    write_tree(path, tree, columns)
    return path


def write_tree(path: Path, tree: str, columns: dict) -> None:
    """Write ``columns`` as a TTree (uproot's plain assignment would make an RNTuple)."""
    with uproot.recreate(path) as f:
        f.mktree(tree, {k: ak.type(ak.Array(v)).content for k, v in columns.items()})
        f[tree].extend(columns)


@pytest.fixture
def flat_file(tmp_path: Path) -> Path:
    return write_flat(tmp_path / "flat.root")


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def flat_config(tmp_path: Path, inputs: list[str], **data: object) -> Path:
    """A run config over flat files: p and theta from expressions, region > 0 selected."""
    import yaml

    cfg = {
        "data": {
            "inputs": inputs,
            "columns": {
                "p": {"expr": "sqrt(px**2 + py**2 + pz**2)", "role": "context", "unit": "GeV"},
                "theta": {
                    "expr": "arccos(pz / sqrt(px**2 + py**2 + pz**2))",
                    "role": "target",
                    "unit": "rad",
                },
            },
            "step_size": 250,
            **data,
        },
        "executor": {"workers": 1},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path
