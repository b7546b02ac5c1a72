"""Config fuzzing: every recipe's config and the generic example with a random key changed to a
random value of any type (NaN, inf, negative and huge sizes, strings, lists, mappings, nulls),
an unknown key added or a key removed, written as YAML and read by ``load_config``: the result is
a config or a one-line DetlearnError, never another exception; a bad value's error names its key.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detlearn.errors import DetlearnError
from detlearn.recipes import RECIPES, load_config

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.sampled_from([0, -1, 10**18, 2**63]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.lists(st.integers(-5, 10**7), max_size=4),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)


def _bases() -> list[dict[str, Any]]:
    """Every recipe's default config (as a user file naming the recipe) and the generic
    examples: the configs a user starts from."""
    bases = [{"recipe": name, **r.default_config()} for name, r in RECIPES.items()]
    for name in ("generic_flow.yaml", "generic_regressor.yaml"):
        path = EXAMPLES / name
        if path.is_file():
            bases.append(yaml.safe_load(path.read_text()))
    return bases


BASES = _bases()


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path of the nested mappings (and list positions) in ``node``."""
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            out.append((*prefix, k))
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.append((*prefix, i))
            out += _paths(v, (*prefix, i))
    return out


def _parent(raw: Any, path: tuple) -> Any:
    for key in path[:-1]:
        raw = raw[key]
    return raw


@settings(
    max_examples=int(os.environ.get("DETLEARN_FUZZ_EXAMPLES", "300")),
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    base=st.sampled_from(range(len(BASES))),
    pick=st.integers(0, 10**6),
    action=st.sampled_from(["set", "set", "set", "add", "remove"]),
    value=values,
)
def test_a_mutated_config_is_valid_or_a_one_line_error(tmp_path, base, pick, action, value):
    raw = copy.deepcopy(BASES[base])
    paths = _paths(raw)
    path = paths[pick % len(paths)]
    parent = _parent(raw, path)
    if action == "set":
        parent[path[-1]] = value
    elif action == "add" and isinstance(parent, dict):
        parent["no_such_key"] = value
    elif isinstance(parent, dict):
        del parent[path[-1]]
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(raw, allow_unicode=True))
    try:
        load_config(config)
    except DetlearnError as err:
        message = str(err)
        assert "\n" not in message, message
        # A value set under a key it cannot take is named by that key.
        if action == "set" and isinstance(path[-1], str) and "config: key" in message:
            assert any(str(k) in message for k in path), (path, message)


@pytest.mark.parametrize("base", range(len(BASES)))
def test_each_base_config_is_valid_as_it_is(tmp_path, base):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(BASES[base]))
    assert load_config(config) is not None
