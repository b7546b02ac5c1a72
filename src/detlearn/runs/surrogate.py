"""The flow family's trained run: :func:`train_flow` writes it, :class:`Surrogate` uses it.

Layout of a flow run directory::

    run.json            the :class:`~detlearn.runs.artifact.RunInfo`
    flow/               the conditional flow: model.safetensors + model.json, history.csv, loss.png
    count/              (optional) the count model N | context, same layout

Example:
    >>> s = Surrogate.load("runs/klm")                                       # doctest: +SKIP
    >>> s.sample({"z": [0.0], "theta": [1.4], "p": [2.0]}, 100_000).shape    # doctest: +SKIP
    (1, 100000, 1)
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from scipy.spatial import Delaunay, QhullError

from detlearn._files import atomic_write_bytes
from detlearn._threads import usable_memory
from detlearn.config import RunConfig
from detlearn.data.selection import grid_labels, training_splits
from detlearn.data.tensors import first_rows_per_group, flow_tensors
from detlearn.errors import DetlearnError, DetlearnWarning
from detlearn.io.dataset import GROUP_COLUMN
from detlearn.models import ConditionalFlow, CountModel, load_model
from detlearn.runs.artifact import RunInfo, TargetColumn, read_run_info
from detlearn.runs.training_data import TrainingData, seeded
from detlearn.training import ModelSize, fit, last_checkpoint, meta_parameters

__all__ = ["ContextRangeWarning", "Surrogate", "flow_sizes", "train_flow", "write_samples"]

#: Context rows per block of :meth:`Surrogate.simulate_events` (rows of similar photon count).
_EVENT_BLOCK = 512


class ContextRangeWarning(DetlearnWarning):
    """Contexts outside the range seen in training (the model extrapolates there)."""


def flow_sizes(cfg: RunConfig, data: TrainingData) -> list[ModelSize]:
    """The sizes of the flow :func:`train_flow` trains (counted from the config: see
    :meth:`~detlearn.models.ConditionalFlow.size`) and of its count model, if any (built on
    the meta device)."""
    features, context = len(data.target), len(data.context)
    parameters, activations = ConditionalFlow.size(features, context, cfg.model.flow)
    sizes = [ModelSize(parameters, activations, ("model.flow.hidden", "model.flow.transforms"))]
    if cfg.model.count != "none":
        hidden = cfg.model.count_hidden
        count = meta_parameters(lambda: CountModel(context, hidden))
        sizes.append(ModelSize(count, context + 2 * sum(hidden) + 2, ("model.count_hidden",)))
    return sizes


def train_flow(
    cfg: RunConfig, data: TrainingData, out: Path, resume: bool = False, progress: bool = True
) -> Path:
    """Train a conditional flow (and optionally its count model); returns the run directory.

    Context columns (role ``context``) condition the flow over the target columns (role
    ``target``, with their physical bounds as support). Rows with weight 0 (role ``weight``)
    are left out of the flow and the loss is weighted. With ``model.count: negbinom`` a count
    model N | context is trained on one row per group, N taken from ``model.count_column``.
    """
    ds, context, target, weight = data.ds, data.context, data.target, data.weight
    count_col = cfg.model.count_column if cfg.model.count != "none" else None
    columns = [*context, *target, *weight, GROUP_COLUMN] + ([count_col] if count_col else [])
    splits, records = training_splits(cfg, ds, columns, context)
    for col in context:
        if np.ptp(splits["train"][col]) == 0:
            raise DetlearnError(
                f"{ds.root}: context column '{col}' is constant ({splits['train'][col][0]:g}) "
                "over the training split, so the model cannot learn a dependence on it; "
                "give it the role 'observer' or train on varied values"
            )

    out.mkdir(parents=True, exist_ok=True)
    tensors = {
        name: flow_tensors(
            part, context, target, weight, cfg.training.balance, cfg.training.balance_power
        )
        for name, part in splits.items()
    }
    lower = [ds.columns[t]["lower"] for t in target]
    upper = [ds.columns[t]["upper"] for t in target]
    with seeded(cfg.training.seed):
        flow = ConditionalFlow(
            len(target),
            len(context),
            cfg.model.flow,
            lower,
            upper,
            names=target,
            context_names=context,
        )
    fit(
        flow,
        tensors["train"],
        tensors["val"],
        cfg.training,
        out / "flow",
        resume=resume,
        progress=progress,
    )

    count_info = None
    if count_col:
        counts = {}
        for name, part in splits.items():
            first = first_rows_per_group(part[GROUP_COLUMN])
            n = torch.as_tensor(part[count_col][first], dtype=torch.float32)
            c = torch.as_tensor(np.stack([part[k][first] for k in context], 1), dtype=torch.float32)
            counts[name] = (n, c)
        with seeded(cfg.training.seed + 1):
            count = CountModel(len(context), cfg.model.count_hidden, context_names=context)
        # One row per group is far fewer rows than the flow sees: >= 20 steps per epoch, its
        # own epoch budget, and every group (training.max_rows and max_minutes bound the flow).
        batch = min(cfg.training.batch_size, max(64, len(counts["train"][0]) // 20))
        update = {
            "batch_size": batch,
            "max_epochs": cfg.model.count_max_epochs,
            "patience": cfg.model.count_patience,
            "max_rows": None,
            "max_minutes": None,
            "min_steps": 0,
        }
        fit(
            count,
            counts["train"],
            counts["val"],
            cfg.training.model_copy(update=update),
            out / "count",
            # A run stopped before its count model began resumes the flow and starts this.
            resume=resume and last_checkpoint(out / "count").is_file(),
            progress=progress,
        )
        count_info = {"column": count_col, "model": "negbinom"}

    targets = [
        TargetColumn(name=t, unit=ds.columns[t]["unit"], lower=lo, upper=hi)
        for t, lo, hi in zip(target, lower, upper, strict=True)
    ]
    labels = grid_labels(cfg, np.stack([splits["train"][k] for k in context], 1), context)
    info = RunInfo.describe(
        cfg,
        ds,
        splits["train"],
        context,
        targets,
        context_labels=labels,
        count=count_info,
        **records,
    )
    info.write(out)
    return out


class Surrogate:
    """A trained conditional surrogate loaded from a run directory (physical units in and out).

    Trained on weighted rows where the dataset has a weight column (role ``weight``): the flow's
    loss is the mean of w·NLL with the weights' signs kept (negative NLO weights subtract), rows
    of weight 0 contribute nothing. It samples the weighted distribution; a region where the
    signed weights sum below zero has no density to sample, which the flow cannot represent.

    Example:
        >>> s = Surrogate.load("runs/klm", recipe="klm-timing")               # doctest: +SKIP
        >>> dt = s.sample({"z": [0.0], "theta": [1.4], "p": [2.0]}, 1000)     # doctest: +SKIP
    """

    def __init__(
        self, run_dir: Path, info: RunInfo, flow: ConditionalFlow, count: CountModel | None
    ) -> None:
        self.run_dir, self.info, self.flow, self.count = run_dir, info, flow, count

    @classmethod
    def load(cls, run_dir: str | Path, recipe: str | None = None) -> Surrogate:
        """Load a flow run directory written by :func:`train_flow` (checks:
        :func:`~detlearn.runs.artifact.read_run_info`)."""
        run_dir = Path(run_dir)
        info = read_run_info(run_dir, recipe, family="flow")
        flow = load_model(run_dir / "flow")
        count = load_model(run_dir / "count") if info.count else None
        return cls(run_dir, info, flow, count)

    @property
    def context_names(self) -> list[str]:
        """Names of the context columns, in model order."""
        return self.info.context_names

    @property
    def target_names(self) -> list[str]:
        """Names of the target columns, in model order."""
        return self.info.target_names

    def context_array(self, context: Mapping[str, Any] | np.ndarray) -> np.ndarray:
        """Contexts as a [B, C] float array, checked for names and finiteness.

        Contexts outside the training range raise a :class:`ContextRangeWarning` with the
        fraction of rows outside and the range of every offending column.
        """
        if isinstance(context, Mapping):
            needs = ", ".join(self.context_names)
            missing = [k for k in self.context_names if k not in context]
            if missing:
                raise DetlearnError(f"context: missing column '{missing[0]}' (needs {needs})")
            extra = sorted(set(context) - set(self.context_names))
            if extra:
                raise DetlearnError(f"context: unknown column '{extra[0]}' (needs {needs})")
            arrays = [
                np.atleast_1d(np.asarray(context[k], dtype=np.float64)) for k in self.context_names
            ]
            c = np.stack(np.broadcast_arrays(*arrays), axis=1)
        else:
            c = np.asarray(context, dtype=np.float64).reshape(-1, len(self.context_names))
        for j, name in enumerate(self.context_names):
            bad = int((~np.isfinite(c[:, j])).sum())
            if bad:
                raise DetlearnError(f"context: column '{name}' has {bad} non-finite rows")
        lo, hi = self.info.context_range()
        outside = (c < lo) | (c > hi)
        if outside.any():
            cols = [
                f"{name} in [{lo[j]:.4g}, {hi[j]:.4g}]"
                for j, name in enumerate(self.context_names)
                if outside[:, j].any()
            ]
            warnings.warn(
                f"{outside.any(axis=1).mean():.1%} of contexts lie outside the training range "
                f"({'; '.join(cols)}): the surrogate extrapolates there",
                ContextRangeWarning,
                stacklevel=2,
            )
        elif (hull := self._outside_hull(c)).any():
            warnings.warn(
                f"{hull.mean():.1%} of contexts lie inside the training range of every column "
                f"but outside the convex hull of the {len(self.info.context_labels or ())} "
                "training labels: the surrogate extrapolates there",
                ContextRangeWarning,
                stacklevel=2,
            )
        return c

    @functools.cached_property
    def _hull(self) -> tuple[Delaunay, np.ndarray, np.ndarray] | None:
        """A Delaunay triangulation of the training labels in units of their range (so that
        no column's scale dominates the geometry), with that range's origin and scale; None
        for a continuous context, or labels that span no volume."""
        labels = self.info.context_labels
        if labels is None:
            return None
        lo, hi = self.info.context_range()
        scale = np.where(hi > lo, hi - lo, 1.0)
        try:
            return Delaunay((np.asarray(labels) - lo) / scale), lo, scale
        except QhullError:
            return None

    def _outside_hull(self, c: np.ndarray) -> np.ndarray:
        """Boolean [B]: the row lies outside the convex hull of the run's training labels."""
        if self._hull is None:
            return np.zeros(len(c), dtype=bool)
        hull, lo, scale = self._hull
        return hull.find_simplex((c - lo) / scale, tol=1e-9) < 0

    def _tensor(self, c: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(c, dtype=torch.float32)

    @torch.no_grad()
    def sample(
        self, context: Mapping[str, Any] | np.ndarray, n: int, seed: int | None = None
    ) -> np.ndarray:
        """``n`` samples per context row: [B, n, F] in physical units.

        The conditioner runs once per context row, the cheap inverse once per sample.

        Raises:
            DetlearnError: ``n`` < 1, or more samples than the memory available holds.
        """
        c = self._tensor(self.context_array(context))
        self._check_size(len(c), n, 2 * 4 * len(self.target_names))
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        return self.flow.sample(c, n, generator=gen).numpy()

    def _check_size(self, rows: int, n: int, bytes_per_sample: int) -> None:
        """Refuse ``n`` samples per row of ``rows`` up front when they cannot fit in memory."""
        if n < 1:
            raise DetlearnError(f"samples per context must be >= 1 (got {n})")
        need, available = rows * n * bytes_per_sample, usable_memory()
        if need > available:
            raise DetlearnError(
                f"{rows:,} contexts x {n:,} samples need ~{need / 1e9:.3g} GB of memory, "
                f"{available / 1e9:.3g} GB available: ask for fewer samples (-n)"
            )

    @torch.no_grad()
    def log_prob(self, x: np.ndarray, context: Mapping[str, Any] | np.ndarray) -> np.ndarray:
        """log p(x | c) [B] in nats per unit of x."""
        c = self._tensor(self.context_array(context))
        xt = torch.as_tensor(
            np.asarray(x, dtype=np.float64).reshape(len(c), -1), dtype=torch.float32
        )
        return self.flow.log_prob(xt, c).numpy()

    @torch.no_grad()
    def pit(self, x: np.ndarray, context: Mapping[str, Any] | np.ndarray) -> np.ndarray:
        """Probability integral transform u = F(x | c) [B] of a one-target surrogate."""
        c = self._tensor(self.context_array(context))
        xt = torch.as_tensor(
            np.asarray(x, dtype=np.float64).reshape(len(c), -1), dtype=torch.float32
        )
        return self.flow.pit(xt, c).numpy()

    @torch.no_grad()
    def simulate_events(
        self, context: Mapping[str, Any] | np.ndarray, seed: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A whole fast simulation: N ~ count model, then N samples, per context row.

        Rows are sampled in blocks of similar N (sorted by N), each block drawing its largest
        N per row with the conditioner run once per row, so little is drawn and thrown away.

        Returns ``(counts [B], event_index [sum N], samples [sum N, F])``, sorted by event.
        """
        if self.count is None:
            raise DetlearnError(f"{self.run_dir}: this run has no count model (model.count: none)")
        c = self._tensor(self.context_array(context))
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        counts = self.count.sample(c, generator=gen).numpy().astype(np.int64)
        order = np.argsort(counts, kind="stable")
        events, samples = [np.zeros(0, np.int64)], [np.zeros((0, len(self.target_names)))]
        for start in range(0, len(order), _EVENT_BLOCK):
            rows = order[start : start + _EVENT_BLOCK]
            n_max = int(counts[rows].max())
            if n_max == 0:
                continue
            drawn = self.flow.sample(c[rows], n_max, generator=gen).numpy()
            samples.append(drawn[np.arange(n_max)[None, :] < counts[rows, None]])
            events.append(np.repeat(rows, counts[rows]))
        event = np.concatenate(events)
        by_event = np.argsort(event, kind="stable")
        return counts, event[by_event], np.concatenate(samples)[by_event].astype(np.float32)


def write_samples(
    surrogate: Surrogate,
    context: Mapping[str, Any] | np.ndarray,
    n: int,
    path: str | Path,
    seed: int | None = None,
) -> Path:
    """Sample ``n`` rows per context and write context + target columns to parquet, atomically."""
    c = surrogate.context_array(context)
    columns = len(surrogate.context_names) + len(surrogate.target_names)
    # The samples (float32 noise and output), then every column as float64, then parquet.
    surrogate._check_size(len(c), n, 8 * len(surrogate.target_names) + 2 * 8 * columns)
    with warnings.catch_warnings():
        # context_array above has already warned about these contexts once.
        warnings.simplefilter("ignore", ContextRangeWarning)
        x = surrogate.sample(c, n, seed=seed)
    columns = {name: np.repeat(c[:, j], n) for j, name in enumerate(surrogate.context_names)}
    columns |= {name: x[:, :, j].reshape(-1) for j, name in enumerate(surrogate.target_names)}
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(columns), sink)
    path = Path(path)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())
    return path
