"""The example configs a user copies must stay valid."""

from __future__ import annotations

from pathlib import Path

import pytest

from detlearn.recipes import load_config

EXAMPLES = sorted((Path(__file__).parents[1] / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_config_validates(path):
    cfg = load_config(path)
    assert cfg.recipe and cfg.data.inputs
