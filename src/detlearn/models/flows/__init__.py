"""Conditional normalizing flows p(x | c) in physical units, with physical support built in.

- :mod:`.support`: the fixed bijection from each target's physical support onto the real line;
- :mod:`.conditional`: :class:`ConditionalFlow`, support + standardization + a zuko flow;
- :mod:`.sampling`: the per-context fast inverse (conditioner once per context row);
- :mod:`._kernels`: the compiled (numba) spline inverses that sampling runs on CPU.
"""

from __future__ import annotations

from detlearn.models.flows.conditional import ConditionalFlow
from detlearn.models.flows.support import Support

__all__ = ["ConditionalFlow", "Support"]
