"""mass-grid recipe: FEDHEX's p(m_Φ,reco, m_ω,reco | m_Φ, m_ω), interpolated between grid points.

Layers:

- :mod:`.density`: the resolution model as a config (:class:`MassGridConfig`), the generated-mass
  grid, the acceptance, the exact density :func:`log_density` and its sampler :func:`sample_reco`;
- :mod:`.simulate`: ROOT ntuples in the Rutgers two-prong NanoAOD layout, one per grid point.

The data path is config-only (``recipe.yaml``: branch expressions and FEDHEX's selection).

Example:
    >>> files = simulate("sim", 10_000, seed=0)     # doctest: +SKIP
"""

from __future__ import annotations

from detlearn.recipes.mass_grid.density import (
    MassGridConfig,
    acceptance,
    gaussian_grid,
    grid_points,
    log_density,
    sample_reco,
)
from detlearn.recipes.mass_grid.simulate import (
    MassGridEvents,
    config_from_options,
    simulate,
    simulate_point,
    write_events,
)

__all__ = [
    "MassGridConfig",
    "MassGridEvents",
    "acceptance",
    "config_from_options",
    "gaussian_grid",
    "grid_points",
    "log_density",
    "sample_reco",
    "simulate",
    "simulate_point",
    "write_events",
]
