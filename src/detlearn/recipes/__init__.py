"""Recipes: the physics of each workflow (simulator, extractor, default config, evaluation).

A recipe is a subpackage exposing some of:

- ``simulate(out_dir, events, seed, options) -> list[Path]``: write ROOT files in the real layout;
- ``extract(chunk, options) -> dict[str, numpy.ndarray]``: rows from one work item;
- ``evaluate(run_dir, config, out_dir) -> dict``: the recipe's validation suite;

and a ``recipe.yaml`` with its default run config. The core never imports a recipe by name;
it looks them up here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from detlearn.config import read_yaml
from detlearn.errors import DetlearnError

__all__ = ["RECIPES", "Recipe", "get_recipe"]


@dataclass(frozen=True)
class Recipe:
    """A named recipe and the module implementing it."""

    name: str
    module_name: str
    summary: str

    @property
    def module(self) -> ModuleType:
        """The recipe's implementation module (imported on first use)."""
        return importlib.import_module(self.module_name)

    def default_config(self) -> dict[str, Any]:
        """The recipe's default run config (its ``recipe.yaml``) as a dict."""
        path = Path(__file__).parent / self.module_name.rsplit(".", 1)[-1] / "recipe.yaml"
        return read_yaml(path) or {}

    def function(self, name: str) -> Any:
        """The recipe's ``name`` function, or a clear error if it has none."""
        fn = getattr(self.module, name, None)
        if fn is None:
            raise DetlearnError(f"recipe '{self.name}' has no '{name}' step")
        return fn


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in [
        Recipe(
            "klm-timing",
            "detlearn.recipes.klm_timing",
            "EIC KLM bar: photon arrival-time surrogate p(dt | z, theta, |p|)",
        ),
        Recipe(
            "mass-grid",
            "detlearn.recipes.mass_grid",
            "FEDHEX mass-grid interpolation: p(m_phi, m_omega reco | generated masses)",
        ),
        Recipe(
            "hcal-energy",
            "detlearn.recipes.hcal_energy",
            "CMS HCAL channel energy regression (FACILE): DNN vs MAHI-lite",
        ),
    ]
}


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``; an unknown name lists the known ones."""
    try:
        return RECIPES[name]
    except KeyError:
        raise DetlearnError(
            f"unknown recipe '{name}'; known recipes: {', '.join(sorted(RECIPES))}"
        ) from None
