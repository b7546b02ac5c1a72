"""Fuzzing the ROOT reading entry point: ``prepare`` on real files (a flat ntuple and the KLM
simulator's EDM4hep file) truncated, with flipped bits or zeroed blocks. Every outcome is a read
or a one-line DetlearnError naming the file (a warning is allowed), never another exception,
never a hang (20 s per case).

``make fuzz`` runs many more cases (``DETLEARN_FUZZ_EXAMPLES``); a failing case prints the
mutation hypothesis found, which replays it.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
from conftest import write_flat
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detlearn.config import deep_merge, validate_config
from detlearn.errors import DetlearnError
from detlearn.prepare import prepare
from detlearn.recipes import get_recipe
from detlearn.recipes.klm_timing.simulate import KLMSimConfig, simulate_events, write_edm4hep

EXAMPLES = int(os.environ.get("DETLEARN_FUZZ_EXAMPLES", "80"))
CASE_SECONDS = 20


class _Hang(Exception):
    """A case ran past CASE_SECONDS."""


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    """The two real files and the config that reads each."""
    base = tmp_path_factory.mktemp("fuzz")
    flat = write_flat(base / "flat.root", n=300)
    cfg = KLMSimConfig()
    klm = write_edm4hep(simulate_events(20, cfg, np.random.default_rng(0)), base / "klm.root", cfg)
    flat_columns = {
        "pt": {"expr": "sqrt(px**2 + py**2)", "role": "context"},
        "pz": {"role": "target"},
        "e": {"expr": "ak.sum(hitE)", "role": "observer"},
    }

    def flat_config(path):
        data = {"inputs": [str(path)], "tree": "Events", "columns": flat_columns}
        return validate_config({"data": data, "executor": {"workers": 1}})

    def klm_config(path):
        raw = get_recipe("klm-timing").default_config()
        overrides = {"data": {"inputs": [str(path)]}, "executor": {"workers": 1}}
        return validate_config(deep_merge(raw, overrides))

    return [(flat, flat_config), (klm, klm_config)]


mutations = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1), st.just(0)),
    st.tuples(st.just("flip"), st.floats(0, 1), st.integers(1, 8)),
    st.tuples(st.just("zero"), st.floats(0, 1), st.integers(1, 512)),
)


def _mutated(data: bytes, kind: str, where: float, size: int, rng: np.random.Generator) -> bytes:
    out = bytearray(data)
    at = min(int(where * len(out)), len(out) - 1)
    if kind == "truncate":
        return bytes(out[:at])
    if kind == "flip":
        for i in rng.integers(0, len(out), size):
            out[i] ^= 1 << int(rng.integers(8))
        return bytes(out)
    out[at : at + size] = bytes(len(out[at : at + size]))
    return bytes(out)


def _alarm(signum, frame):
    raise _Hang


# A damaged value may well be a plausible one that a check warns about (the KLM causality check
# sees photons arriving too early): a warning is an outcome like a read.
@pytest.mark.filterwarnings("ignore::detlearn.errors.DetlearnWarning")
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(which=st.integers(0, 1), mutation=mutations, seed=st.integers(0, 2**32 - 1))
def test_a_damaged_file_is_read_or_refused_in_one_line(originals, tmp_path, which, mutation, seed):
    original, config = originals[which]
    path, out = tmp_path / "case.root", tmp_path / "dataset"
    path.write_bytes(_mutated(original.read_bytes(), *mutation, np.random.default_rng(seed)))
    shutil.rmtree(out, ignore_errors=True)
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(CASE_SECONDS)
    try:
        prepare(config(path), out, progress=False)
    except DetlearnError as err:
        assert "\n" not in str(err) and str(path) in str(err), str(err)
    except _Hang:
        pytest.fail(f"prepare ran past {CASE_SECONDS} s on {mutation}")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert not any(p.name.endswith(".tmp") for p in Path(out).rglob("*")) if out.exists() else True
