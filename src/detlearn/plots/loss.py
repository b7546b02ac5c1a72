"""The loss curve of a training: train and validation loss per epoch.

Example:
    >>> plot_loss("runs/klm/flow/history.csv", "loss.png")   # doctest: +SKIP
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from detlearn.errors import DetlearnError
from detlearn.plots.style import exp_label, save, styled

__all__ = ["plot_loss"]


@styled
def plot_loss(history_csv: str | Path, path: str | Path, ylabel: str = "loss") -> Path:
    """Training and validation loss per epoch from a ``history.csv`` (or a Lightning
    ``CSVLogger`` metrics file); ``ylabel`` names the loss and its unit.

    Every column whose name contains ``loss`` (except per-step ``*_step`` columns) is averaged
    per ``epoch`` over the rows where it is filled (Lightning writes sparse rows).
    """
    history_csv = Path(history_csv)
    try:
        with history_csv.open(newline="") as fh:
            records = list(csv.DictReader(fh))
    except OSError as exc:
        raise DetlearnError(f"cannot read loss history {history_csv}: {exc.strerror}") from exc
    columns = [
        c for c in (records[0] if records else {}) if "loss" in c and not c.endswith("_step")
    ]
    if not records or "epoch" not in records[0] or not columns:
        raise DetlearnError(
            f"{history_csv}: need an 'epoch' column and at least one '*loss*' column"
        )
    fig = Figure(figsize=(6.5, 5.0), layout="constrained")
    ax = fig.subplots()
    for col in columns:
        per_epoch: dict[int, list[float]] = {}
        for rec in records:
            if rec.get(col) and rec.get("epoch"):
                per_epoch.setdefault(int(float(rec["epoch"])), []).append(float(rec[col]))
        epochs = sorted(per_epoch)
        ax.plot(epochs, [np.mean(per_epoch[e]) for e in epochs], marker="o", ms=4, label=col)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.legend(loc="upper right")
    exp_label(ax)
    return save(fig, path)
