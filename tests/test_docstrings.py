"""Every docstring example in the package runs and prints what its docstring shows."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import detlearn

MODULES = sorted(m.name for m in pkgutil.walk_packages(detlearn.__path__, "detlearn."))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed"


def test_the_examples_are_found():
    finder = doctest.DocTestFinder()
    examples = sum(
        len(t.examples) for n in MODULES for t in finder.find(importlib.import_module(n))
    )
    assert len(MODULES) > 40 and examples > 100
