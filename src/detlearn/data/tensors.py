"""Tensors a model trains on, built from the columns of one split.

- :func:`flow_tensors`: (target, context[, weight]) rows of a conditional density, optionally
  balanced over labels;
- :func:`first_rows_per_group`: one row per group (an event's count of photons, say).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

__all__ = ["first_rows_per_group", "flow_tensors"]


def first_rows_per_group(groups: np.ndarray) -> np.ndarray:
    """Indices of the first row of each group, in row order."""
    _, first = np.unique(groups, return_index=True)
    return np.sort(first)


def flow_tensors(
    part: Mapping[str, np.ndarray],
    context: list[str],
    target: list[str],
    weight: list[str],
    balance: list[str],
    power: float = 1.0,
) -> tuple[torch.Tensor, ...]:
    """(target, context[, weight]) tensors of one split; rows of weight 0 dropped (they add
    nothing to the loss), negative weights (NLO generators) kept with their sign.

    With ``balance`` columns, each row's weight is multiplied by n^−``power`` (rescaled to mean
    1), n the number of rows sharing its values of them: with power 1 every grid label counts
    alike in the loss; with ½ a label's total weight grows as √n, which keeps more of the
    effective number of rows of the well-populated labels.
    """
    w = np.asarray(part[weight[0]], dtype=np.float64) if weight else None
    if balance:
        _, label, count = np.unique(
            np.stack([part[k] for k in balance], 1), axis=0, return_inverse=True, return_counts=True
        )
        share = count[label.reshape(-1)] ** -float(power)
        share *= len(share) / share.sum()
        w = share if w is None else w * share
    keep = w != 0 if w is not None else np.ones(len(part[context[0]]), dtype=bool)
    x = torch.as_tensor(np.stack([part[k][keep] for k in target], 1), dtype=torch.float32)
    c = torch.as_tensor(np.stack([part[k][keep] for k in context], 1), dtype=torch.float32)
    if w is not None:
        return x, c, torch.as_tensor(w[keep], dtype=torch.float32)
    return x, c
