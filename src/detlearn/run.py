"""A trained run directory, and the public API to make and use one.

Layout of a run directory::

    run.json            what was trained: recipe, version, columns with units and ranges, config
    flow/               the conditional flow: model.safetensors + model.json, history.csv, loss.png
    count/              (optional) the count model N | context, same layout
    regressor/          (model.family regressor, instead of flow/) the regressor, same layout

Nothing in a run directory is a pickle: weights are safetensors, the rest JSON/CSV/PNG.

Example:
    >>> run_dir = train(cfg, "dataset/", "runs/klm")                        # doctest: +SKIP
    >>> s = Surrogate.load("runs/klm")                                       # doctest: +SKIP
    >>> s.sample({"z": [0.0], "theta": [1.4], "p": [2.0]}, 100_000).shape    # doctest: +SKIP
    (1, 100000, 1)
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detlearn import __version__
from detlearn.config import LabelRowsConfig, RunConfig, data_hash
from detlearn.errors import DetlearnError, DetlearnWarning
from detlearn.io.dataset import GROUP_COLUMN, Dataset, atomic_write_json, read_json_object

__all__ = [
    "ContextRangeWarning",
    "DatasetConfigWarning",
    "Regression",
    "SparseLabelWarning",
    "Surrogate",
    "load_run_split",
    "read_run_info",
    "train",
    "write_samples",
]

RUN_FILE = "run.json"
RUN_FORMAT = 1


class ContextRangeWarning(DetlearnWarning):
    """Contexts outside the range seen in training (the model extrapolates there)."""


class DatasetConfigWarning(DetlearnWarning):
    """A dataset prepared from another ``data`` config than the run's (its columns apply)."""


class SparseLabelWarning(DetlearnWarning):
    """Labels left out of training for having fewer rows than ``split.min_label_rows``."""


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """torch's global generator seeded for the block (a model's initial weights), then restored.

    The weights are drawn before Lightning seeds the training, so without this they would
    depend on whatever used the generator before, and two trainings in one process differ.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _first_rows_per_group(groups: np.ndarray) -> np.ndarray:
    _, first = np.unique(groups, return_index=True)
    return np.sort(first)


def _training_splits(
    cfg: RunConfig, ds: Dataset, columns: list[str], context: list[str]
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Any]]:
    """The train and val splits of ``ds`` (``columns`` loaded), less sparse labels and
    held-out points.

    Checks that both splits have rows and finite ``context`` columns; applies
    ``split.min_label_rows``, then ``split.holdout`` (a checkerboard over the labels that
    remain). Returns the splits and the records for ``run.json``: ``sparse_labels`` and
    ``holdout`` (None where not configured).
    """
    from detlearn.data.holdout import holdout_mask, resolve_points

    dataset = ds.root
    spec = cfg.split.holdout
    for key, rule in (("holdout", spec), ("min_label_rows", cfg.split.min_label_rows)):
        for col in rule.columns if rule is not None else []:
            if col not in context:
                raise DetlearnError(
                    f"split.{key}: column '{col}' is not a context column of {dataset} "
                    f"(context: {', '.join(context)})"
                )
    fractions = cfg.split.model_dump(mode="json")
    splits = {s: ds.load(columns, split=s, fractions=fractions) for s in ("train", "val")}
    for name, part in splits.items():
        if len(part[GROUP_COLUMN]) == 0:
            raise DetlearnError(f"{dataset}: the '{name}' split is empty; prepare more events")
        for col in context:
            bad = int((~np.isfinite(part[col])).sum())
            if bad:
                raise DetlearnError(f"{dataset}: context column '{col}' has {bad} non-finite rows")
    records: dict[str, Any] = {"sparse_labels": None, "holdout": None}
    if cfg.split.min_label_rows is not None:
        splits, records["sparse_labels"] = _drop_sparse_labels(ds, splits, cfg.split.min_label_rows)
    if spec is None:
        return splits, records
    values = {s: np.stack([part[c] for c in spec.columns], 1) for s, part in splits.items()}
    points = resolve_points(spec, np.concatenate(list(values.values())))
    held = {s: holdout_mask(v, points, spec.rtol) for s, v in values.items()}
    for point in points:
        if not any(holdout_mask(v, point, spec.rtol).any() for v in values.values()):
            raise DetlearnError(
                f"split.holdout: point {dict(zip(spec.columns, point.tolist(), strict=True))} "
                f"matches no train or val row of {dataset}"
            )
    splits = {s: {k: v[~held[s]] for k, v in part.items()} for s, part in splits.items()}
    for name, part in splits.items():
        if len(part[GROUP_COLUMN]) == 0:
            raise DetlearnError(f"split.holdout leaves the '{name}' split of {dataset} empty")
    records["holdout"] = {
        "columns": spec.columns,
        "points": points.tolist(),
        "rtol": spec.rtol,
        "rows_held_out": {s: int(h.sum()) for s, h in held.items()},
    }
    return splits, records


def _drop_sparse_labels(
    ds: Dataset, splits: dict[str, dict[str, np.ndarray]], rule: LabelRowsConfig
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Any]]:
    """``splits`` less the rows of labels with fewer than ``rule.rows`` rows in the whole
    dataset (a :class:`SparseLabelWarning` names them), and the record for ``run.json``."""
    from detlearn.data.holdout import holdout_mask, sparse_labels

    everything = ds.load(rule.columns)
    labels, rows = sparse_labels(
        np.stack([everything[c] for c in rule.columns], 1), rule.rows, rule.rtol
    )
    record = {
        "columns": rule.columns,
        "min_rows": rule.rows,
        "labels": labels.tolist(),
        "rows": rows.tolist(),
    }
    if not len(labels):
        return splits, record
    kept = {}
    for name, part in splits.items():
        sparse = holdout_mask(np.stack([part[c] for c in rule.columns], 1), labels, rule.rtol)
        kept[name] = {k: v[~sparse] for k, v in part.items()}
        if not len(kept[name][GROUP_COLUMN]):
            raise DetlearnError(
                f"split.min_label_rows leaves the '{name}' split of {ds.root} empty: "
                f"{len(labels)} label(s) of {rule.columns} have fewer than {rule.rows} rows, "
                f"the most {rows.max()}"
            )
    shown = ", ".join(
        f"({', '.join(f'{v:g}' for v in label)}): {n}"
        for label, n in zip(labels.tolist()[:5], rows[:5].tolist(), strict=True)
    )
    more = f" and {len(labels) - 5} more" if len(labels) > 5 else ""
    warnings.warn(
        SparseLabelWarning(
            f"{ds.root}: {len(labels)} label(s) of {rule.columns} with fewer than {rule.rows} "
            f"rows left out of training (rows per label): {shown}{more}"
        ),
        stacklevel=3,
    )
    return kept, record


def _run_info(
    cfg: RunConfig,
    ds: Dataset,
    train_part: Mapping[str, np.ndarray],
    context: list[str],
    target: list[dict[str, Any]],
    **extra: Any,
) -> dict[str, Any]:
    """The ``run.json`` record shared by every model family."""
    return {
        "format": RUN_FORMAT,
        "detlearn_version": __version__,
        "recipe": cfg.recipe,
        "family": cfg.model.family,
        "dataset": str(ds.root.resolve()),
        "context": [
            {
                "name": k,
                "unit": ds.columns[k]["unit"],
                "min": float(train_part[k].min()),
                "max": float(train_part[k].max()),
            }
            for k in context
        ],
        "target": target,
        "context_labels": _grid_labels(cfg, np.stack([train_part[k] for k in context], 1), context),
        **extra,
        "config": cfg.model_dump(mode="json"),
    }


#: More distinct training contexts than this are a continuous context, not a grid of labels.
MAX_LABELS = 10_000


def _grid_labels(cfg: RunConfig, c: np.ndarray, context: list[str]) -> list[list[float]] | None:
    """The distinct training contexts [L, C] of a grid of labels (generated masses, beam
    energies...), kept so that :meth:`Surrogate.context_array` can tell a label outside their
    convex hull; None unless the split treats every context column as a label
    (``split.holdout`` or ``split.min_label_rows`` on all of them), there are two or more, and
    at most :data:`MAX_LABELS` distinct ones."""
    rules = [r for r in (cfg.split.holdout, cfg.split.min_label_rows) if r is not None]
    if c.shape[1] < 2 or not any(set(r.columns) == set(context) for r in rules):
        return None
    labels = np.unique(c, axis=0)
    return labels.tolist() if len(labels) <= MAX_LABELS else None


def train(
    cfg: RunConfig,
    dataset: str | Path,
    out: str | Path,
    resume: bool = False,
    progress: bool = True,
) -> Path:
    """Train the model of ``cfg`` on a prepared dataset; returns the run directory.

    ``model.family: flow``: context columns (role ``context``) condition the flow over the
    target columns (role ``target``, with their physical bounds as support). Rows with weight 0
    (role ``weight``) are left out of the flow and the loss is weighted. With
    ``model.count: negbinom`` a count model N | context is trained on one row per group, N
    taken from ``model.count_column``.

    ``model.family: regressor``: a :class:`~detlearn.models.Regressor` of the one target
    column from the context columns (its inputs), scaling fitted on the training split.
    """
    from detlearn.models.counts import CountModel
    from detlearn.models.flows import ConditionalFlow
    from detlearn.training import fit, last_checkpoint

    if cfg.model.family == "classifier":
        raise DetlearnError("model.family 'classifier' is not trainable by this command yet")
    ds = Dataset.open(dataset)
    if ds.manifest.get("config_hash") != data_hash(cfg.data):
        warnings.warn(
            DatasetConfigWarning(
                f"{dataset}: prepared from another data config than this run's (columns, "
                "roles, selection or reading options differ); training uses the dataset's "
                "columns and roles: run detlearn prepare with this config to apply its own"
            ),
            stacklevel=2,
        )
    if cfg.recipe and ds.manifest.get("recipe") not in (None, cfg.recipe):
        raise DetlearnError(
            f"{dataset}: dataset was prepared for recipe '{ds.manifest['recipe']}', "
            f"the config is for '{cfg.recipe}'"
        )
    context, target, weight = ds.names("context"), ds.names("target"), ds.names("weight")
    if not context or not target:
        raise DetlearnError(
            f"{dataset}: a {cfg.model.family} needs columns with role 'context' and 'target' "
            f"(found context {context}, target {target})"
        )
    for col in cfg.training.balance:
        if col not in context or cfg.model.family != "flow":
            raise DetlearnError(
                f"training.balance: '{col}' is not a context column of a flow "
                f"(model.family {cfg.model.family}; context: {', '.join(context)})"
            )
    if cfg.model.family == "regressor":
        return _train_regressor(cfg, ds, Path(out), context, target, weight, resume, progress)
    count_col = cfg.model.count_column if cfg.model.count != "none" else None
    columns = [*context, *target, *weight, GROUP_COLUMN] + ([count_col] if count_col else [])
    splits, records = _training_splits(cfg, ds, columns, context)
    for col in context:
        if np.ptp(splits["train"][col]) == 0:
            raise DetlearnError(
                f"{dataset}: context column '{col}' is constant ({splits['train'][col][0]:g}) "
                "over the training split, so the model cannot learn a dependence on it; "
                "give it the role 'observer' or train on varied values"
            )

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {
        name: _flow_tensors(
            part, context, target, weight, cfg.training.balance, cfg.training.balance_power
        )
        for name, part in splits.items()
    }
    lower = [ds.columns[t]["lower"] for t in target]
    upper = [ds.columns[t]["upper"] for t in target]
    with _seeded(cfg.training.seed):
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
            first = _first_rows_per_group(part[GROUP_COLUMN])
            n = torch.as_tensor(part[count_col][first], dtype=torch.float32)
            c = torch.as_tensor(np.stack([part[k][first] for k in context], 1), dtype=torch.float32)
            counts[name] = (n, c)
        with _seeded(cfg.training.seed + 1):
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
        {"name": t, "unit": ds.columns[t]["unit"], "lower": lo, "upper": hi}
        for t, lo, hi in zip(target, lower, upper, strict=True)
    ]
    info = _run_info(cfg, ds, splits["train"], context, targets, count=count_info, **records)
    atomic_write_json(out / RUN_FILE, info)
    return out


def _train_regressor(
    cfg: RunConfig,
    ds: Dataset,
    out: Path,
    inputs: list[str],
    target: list[str],
    weight: list[str],
    resume: bool,
    progress: bool,
) -> Path:
    """The regressor branch of :func:`train`: ``out/regressor/`` + ``out/run.json``."""
    from detlearn.models.regressors import Regressor
    from detlearn.training import fit

    if len(target) != 1:
        raise DetlearnError(
            f"{ds.root}: a regressor predicts one target column, the dataset has {target}"
        )
    splits, records = _training_splits(cfg, ds, [*inputs, *target, *weight, GROUP_COLUMN], inputs)
    tensors = {}
    for name, part in splits.items():
        batch = {
            "inputs": np.stack([part[k] for k in inputs], 1),
            "target": part[target[0]],
        }
        if weight:
            batch["weight"] = part[weight[0]]
        tensors[name] = batch
    out.mkdir(parents=True, exist_ok=True)
    with _seeded(cfg.training.seed):
        model = Regressor(len(inputs), cfg.model.regressor, inputs, target[0])
    fit(model, tensors["train"], tensors["val"], cfg.training, out / "regressor", resume, progress)
    unit = ds.columns[target[0]]["unit"]
    info = _run_info(
        cfg,
        ds,
        splits["train"],
        inputs,
        [{"name": target[0], "unit": unit, "lower": None, "upper": None}],
        **records,
    )
    atomic_write_json(out / RUN_FILE, info)
    return out


def _flow_tensors(
    part: Mapping[str, np.ndarray],
    context: list[str],
    target: list[str],
    weight: list[str],
    balance: list[str],
    power: float = 1.0,
) -> tuple[torch.Tensor, ...]:
    """(target, context[, weight]) tensors of one split; rows of weight 0 dropped.

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
    keep = w > 0 if w is not None else np.ones(len(part[context[0]]), dtype=bool)
    x = torch.as_tensor(np.stack([part[k][keep] for k in target], 1), dtype=torch.float32)
    c = torch.as_tensor(np.stack([part[k][keep] for k in context], 1), dtype=torch.float32)
    if w is not None:
        return x, c, torch.as_tensor(w[keep], dtype=torch.float32)
    return x, c


def load_run_split(
    info: Mapping[str, Any], columns: Sequence[str], split: str, max_rows: int | None = None
) -> dict[str, np.ndarray]:
    """Columns of a run's dataset in one split, cut with the run's own ``split`` fractions (those
    it was trained with), not the ones the dataset was prepared with. ``info``: its run.json."""
    return Dataset.open(info["dataset"]).load(
        columns, split=split, max_rows=max_rows, fractions=info["config"]["split"]
    )


def read_run_info(
    run_dir: str | Path, recipe: str | None = None, family: str | None = None
) -> dict[str, Any]:
    """The ``run.json`` of a run directory, checked for format, ``recipe`` and model ``family``.

    A directory that is not a run, was trained for another recipe or model family, or was
    written by an incompatible detlearn version gives a one-line :class:`DetlearnError`.
    """
    run_dir = Path(run_dir)
    path = run_dir / RUN_FILE
    if not path.is_file():
        raise DetlearnError(f"{run_dir}: not a detlearn run directory (no {RUN_FILE})")
    info = read_json_object(path)
    if info.get("format") != RUN_FORMAT:
        raise DetlearnError(
            f"{run_dir}: run format {info.get('format')} written by detlearn "
            f"{info.get('detlearn_version')} is not readable by detlearn {__version__} "
            f"(format {RUN_FORMAT}); retrain it"
        )
    if recipe is not None and info.get("recipe") != recipe:
        raise DetlearnError(
            f"{run_dir}: run was trained for recipe '{info.get('recipe')}', not '{recipe}'"
        )
    if family is not None and info.get("family", "flow") != family:
        raise DetlearnError(
            f"{run_dir}: run holds a {info.get('family')}, not a {family} "
            f"(load it with {'Regression' if info.get('family') == 'regressor' else 'Surrogate'})"
        )
    return info


class Surrogate:
    """A trained conditional surrogate loaded from a run directory (physical units in and out).

    Example:
        >>> s = Surrogate.load("runs/klm", recipe="klm-timing")               # doctest: +SKIP
        >>> dt = s.sample({"z": [0.0], "theta": [1.4], "p": [2.0]}, 1000)     # doctest: +SKIP
    """

    def __init__(self, run_dir: Path, info: dict[str, Any], flow: Any, count: Any | None) -> None:
        self.run_dir, self.info, self.flow, self.count = run_dir, info, flow, count

    @classmethod
    def load(cls, run_dir: str | Path, recipe: str | None = None) -> Surrogate:
        """Load a flow run directory written by :func:`train` (checks: :func:`read_run_info`)."""
        from detlearn.models import load_model

        run_dir = Path(run_dir)
        info = read_run_info(run_dir, recipe, family="flow")
        flow = load_model(run_dir / "flow")
        count = load_model(run_dir / "count") if info.get("count") else None
        return cls(run_dir, info, flow, count)

    @property
    def context_names(self) -> list[str]:
        """Names of the context columns, in model order."""
        return [c["name"] for c in self.info["context"]]

    @property
    def target_names(self) -> list[str]:
        """Names of the target columns, in model order."""
        return [t["name"] for t in self.info["target"]]

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
        lo = np.array([k["min"] for k in self.info["context"]])
        hi = np.array([k["max"] for k in self.info["context"]])
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
                f"but outside the convex hull of the {len(self.info['context_labels'])} "
                "training labels: the surrogate extrapolates there",
                ContextRangeWarning,
                stacklevel=2,
            )
        return c

    @functools.cached_property
    def _hull(self) -> tuple[Any, np.ndarray, np.ndarray] | None:
        """A Delaunay triangulation of the training labels in units of their range (so that
        no column's scale dominates the geometry), with that range's origin and scale; None
        for a continuous context, or labels that span no volume."""
        from scipy.spatial import Delaunay, QhullError

        labels = self.info.get("context_labels")
        if labels is None:
            return None
        lo = np.array([k["min"] for k in self.info["context"]])
        hi = np.array([k["max"] for k in self.info["context"]])
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
        """
        c = self._tensor(self.context_array(context))
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        return self.flow.sample(c, n, generator=gen).numpy()

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

        Returns ``(counts [B], event_index [sum N], samples [sum N, F])``.
        """
        if self.count is None:
            raise DetlearnError(f"{self.run_dir}: this run has no count model (model.count: none)")
        c = self._tensor(self.context_array(context))
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        counts = self.count.sample(c, generator=gen).numpy().astype(np.int64)
        n_max = int(counts.max()) if len(counts) else 0
        samples = self.flow.sample(c, max(n_max, 1), generator=gen).numpy()
        keep = np.arange(max(n_max, 1))[None, :] < counts[:, None]
        event = np.repeat(np.arange(len(counts)), counts)
        return counts, event, samples[keep]


def write_samples(
    surrogate: Surrogate,
    context: Mapping[str, Any] | np.ndarray,
    n: int,
    path: str | Path,
    seed: int | None = None,
) -> Path:
    """Sample ``n`` rows per context and write context + target columns to parquet, atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from detlearn.io.dataset import atomic_write_bytes

    c = surrogate.context_array(context)
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


class Regression:
    """A trained regressor loaded from a run directory (physical units in and out).

    Example:
        >>> r = Regression.load("runs/hcal", recipe="hcal-energy")         # doctest: +SKIP
        >>> energy = r.predict(inputs)       # inputs [N, 36] or {name: column}  # doctest: +SKIP
    """

    def __init__(self, run_dir: Path, info: dict[str, Any], model: Any) -> None:
        self.run_dir, self.info, self.model = run_dir, info, model

    @classmethod
    def load(cls, run_dir: str | Path, recipe: str | None = None) -> Regression:
        """Load a regressor run directory written by :func:`train`."""
        from detlearn.models import load_model

        run_dir = Path(run_dir)
        info = read_run_info(run_dir, recipe, family="regressor")
        return cls(run_dir, info, load_model(run_dir / "regressor"))

    @property
    def input_names(self) -> list[str]:
        """Names of the input columns, in model order."""
        return [c["name"] for c in self.info["context"]]

    @property
    def target_name(self) -> str:
        """Name of the predicted column."""
        return str(self.info["target"][0]["name"])

    @torch.no_grad()
    def predict(
        self, inputs: Mapping[str, np.ndarray] | np.ndarray, batch_size: int = 1 << 16
    ) -> np.ndarray:
        """Predictions [N] in target units for inputs [N, F] (or a mapping name -> column)."""
        if isinstance(inputs, Mapping):
            missing = [k for k in self.input_names if k not in inputs]
            if missing:
                raise DetlearnError(
                    f"inputs: missing column '{missing[0]}' (needs {', '.join(self.input_names)})"
                )
            x = np.stack([np.asarray(inputs[k], dtype=np.float32) for k in self.input_names], 1)
        else:
            x = np.asarray(inputs, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != len(self.input_names):
            raise DetlearnError(
                f"inputs: expected shape [N, {len(self.input_names)}], got {list(x.shape)}"
            )
        t = torch.from_numpy(np.ascontiguousarray(x))
        parts = [self.model(t[i : i + batch_size]) for i in range(0, len(t), batch_size)]
        return torch.cat(parts).numpy() if parts else np.zeros(0, dtype=np.float32)
