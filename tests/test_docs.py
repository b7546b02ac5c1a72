"""The documentation builds in strict mode, and every public name has a docstring to show in it."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import detlearn

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(m.name for m in pkgutil.walk_packages(detlearn.__path__, "detlearn."))


@pytest.mark.slow
def test_docs_build_strictly(tmp_path):
    """``mkdocs build --strict``: a broken link, an unknown page, a docstring griffe cannot
    parse (a parameter documented that the signature lacks) or a generated section that fails
    all stop the build."""
    site = tmp_path / "site"
    env = os.environ | {"NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    pages = {
        "index.html": "detlearn",
        "getting-started/index.html": "load_config",
        "recipes/klm-timing/index.html": "kl_mean",
        "recipes/mass-grid/index.html": "width_pass_fraction",
        "recipes/hcal-energy/index.html": "dnn_beats_mahi_fraction",
        # Written at build time from the code: the schema, `config show`, the typer app.
        "configuration/index.html": "balance_power",
        "cli/index.html": "detlearn config show",
        "architecture/index.html": "detlearn.families",
        "api/families/index.html": "export_run",
        "api/runs/index.html": "Surrogate",
        # The catalogue of faults and hostile input, read from the tests' own cases.
        "robustness/index.html": "lies outside",
    }
    for page, text in pages.items():
        html = (site / page).read_text(encoding="utf-8")
        assert text in html, f"{page} lacks {text!r}"
    assert (site / "img" / "hcal_resolution.png").is_file()


def _auto_dataclass_doc(cls: type) -> str:
    """The docstring ``dataclasses`` writes for a class that has none: its signature."""
    try:
        return cls.__name__ + str(inspect.signature(cls)).replace(" -> None", "")
    except (TypeError, ValueError):
        return ""


def _own_docstring(obj: object) -> str:
    """The object's own docstring: a class's is not inherited, nor the signature a dataclass
    writes in place of a missing one."""
    if inspect.isclass(obj):
        doc = obj.__dict__.get("__doc__") or ""
        if dataclasses.is_dataclass(obj) and doc == _auto_dataclass_doc(obj):
            return ""
        return doc.strip()
    return (getattr(obj, "__doc__", None) or "").strip()


def _documentable(obj: object) -> bool:
    """A detlearn function or class (numba's compiled functions and functools' wrappers
    included); constants, type aliases and instances are left out."""
    obj = inspect.unwrap(getattr(obj, "py_func", obj))
    if not (inspect.isclass(obj) or inspect.isfunction(obj)):
        return False
    return getattr(obj, "__module__", "").startswith("detlearn")


@pytest.mark.parametrize("name", MODULES)
def test_public_names_have_docstrings(name):
    module = importlib.import_module(name)
    missing = [
        public
        for public in getattr(module, "__all__", ())
        if _documentable(getattr(module, public)) and not _own_docstring(getattr(module, public))
    ]
    assert not missing, f"{name}: no docstring for {', '.join(missing)}"


def test_the_public_names_are_found():
    checked = {
        id(getattr(m, n))
        for m in map(importlib.import_module, MODULES)
        for n in getattr(m, "__all__", ())
        if _documentable(getattr(m, n))
    }
    assert len(checked) > 150
