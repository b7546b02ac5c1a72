"""Recipes: the physics of each workflow (simulator, extractor, default config, evaluation).

Each recipe package defines one :class:`~detlearn.recipes.base.Recipe` record, ``RECIPE``;
:data:`RECIPES` lists them, and is the only place that does. Nothing below this layer imports
a recipe: the core reaches a recipe's functions through the record.

- :mod:`.klm_timing`: photon arrival times in the ePIC KLM bar (a flow surrogate);
- :mod:`.mass_grid`: FEDHEX's mass-grid interpolation (a flow over a grid of labels);
- :mod:`.hcal_energy`: CMS HCAL channel energy (a dense regressor against MAHI);
- :mod:`.ecal_veto`: the LDMX ECal veto (classifiers of hits against a BDT).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from detlearn.config import RunConfig, config_from_raw, read_raw_config
from detlearn.errors import DetlearnError
from detlearn.recipes import ecal_veto, hcal_energy, klm_timing, mass_grid
from detlearn.recipes.base import Recipe

__all__ = ["RECIPES", "Recipe", "get_recipe", "load_config"]

RECIPES: dict[str, Recipe] = {
    r.name: r for r in (klm_timing.RECIPE, mass_grid.RECIPE, hcal_energy.RECIPE, ecal_veto.RECIPE)
}


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``; an unknown name lists the known ones."""
    if isinstance(name, str) and name in RECIPES:
        return RECIPES[name]
    raise DetlearnError(f"unknown recipe {name!r}; known recipes: {', '.join(sorted(RECIPES))}")


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read a YAML run config, merged over its recipe's default config (``recipe.yaml``),
    with ``overrides`` (``--set``) over both (see :func:`~detlearn.config.config_from_raw`).

    Relative input paths are resolved against the config file's folder.
    """
    raw = read_raw_config(path)
    recipe = (overrides or {}).get("recipe", raw.get("recipe"))
    defaults = get_recipe(recipe).default_config() if recipe else {}
    return config_from_raw(raw, path, defaults, overrides)
