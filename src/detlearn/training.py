r"""Training with Lightning: one LightningModule for every likelihood model, and :func:`fit`.

Any model with a ``loss(batch) -> Tensor`` method (a mean negative log-likelihood for the
:class:`~detlearn.models.ConditionalFlow` and the :class:`~detlearn.models.CountModel`, a
regression loss for the :class:`~detlearn.models.Regressor`, which names it in
``loss_label``), a ``batch_keys`` tuple naming its batch columns,
``fit_normalization(*columns)``, and ``spec()`` trains the same way:

- AdamW; the learning rate rises linearly over the first 2 % of optimizer steps, then follows
  a cosine down to lr / 100, stepped per batch; gradients are clipped to norm 5.
- Early stopping on ``val_loss``; checkpoints ``run_dir/checkpoints/best.ckpt`` and
  ``last.ckpt`` (Lightning's own, kept only for ``resume`` and read with ``weights_only=True``),
  each written to a temp file beside it and renamed. Epoch k's shuffle, dropout and training
  noise depend on the seed and k alone, so a run killed and resumed ends with the same
  weights as one never stopped, also from a run folder moved or copied since (its paths are
  read relative to the folder).
- ``run_dir/history.csv`` (one row per epoch: epoch, train_loss, val_loss, lr, elapsed_s) and
  ``run_dir/loss.png``; the best weights in ``run_dir/model.safetensors`` + ``model.json``.
- Under ``torchrun`` (``WORLD_SIZE > 1``) the same call trains with DDP (gloo on CPU, nccl on
  GPU); only global rank 0 writes the final artifacts.

Example:
    >>> from detlearn.config import FlowConfig, TrainingConfig
    >>> from detlearn.models import ConditionalFlow
    >>> flow = ConditionalFlow(1, 1, FlowConfig(hidden=[32]), lower=[0.0])
    >>> train = {"target": x_train, "context": c_train}  # doctest: +SKIP
    >>> result = fit(flow, train, val, TrainingConfig(), "runs/a")  # doctest: +SKIP
    >>> result.best_val_loss  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import logging
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins import TorchCheckpointIO
from lightning.pytorch.strategies import DDPStrategy
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

from detlearn._files import atomic_path
from detlearn._progress import interactive, plain_line
from detlearn._threads import adapt, usable_memory
from detlearn.config import TrainingConfig
from detlearn.errors import DetlearnError
from detlearn.models import WEIGHTS_FILE, save_model
from detlearn.plots.loss import plot_loss

__all__ = [
    "BYTES_PER_ACTIVATION",
    "BYTES_PER_PARAMETER",
    "DensityModule",
    "FitResult",
    "ModelSize",
    "check_training_memory",
    "epochs_line",
    "fit",
    "last_checkpoint",
    "lr_factor",
    "meta_parameters",
    "steps_per_epoch",
    "stretched",
    "training_bytes",
    "unit_mean_weights",
]

Arrays = Mapping[str, np.ndarray] | Sequence[np.ndarray]

HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss", "lr", "elapsed_s")
_WARMUP_FRACTION = 0.02
_FINAL_LR_FRACTION = 0.01
_CLIP_NORM = 5.0
_NLL_LABEL = "loss (mean NLL) [nats]"


def lr_factor(step: int, total: int, schedule: str = "cosine") -> float:
    r"""Multiplier of the peak learning rate at optimizer step ``step`` of ``total``.

    Linear warm-up over the first ``w = max(1, round(0.02 total))`` steps, then

    .. math:: f = 0.01 + 0.99 \cdot \tfrac12 \left(1 + \cos \pi \tfrac{s - w}{T - w}\right).

    ``schedule="none"`` keeps the rate constant.

    Example:
        >>> lr_factor(0, 1000), lr_factor(20, 1000), lr_factor(1000, 1000)
        (0.05, 1.0, 0.01)
    """
    if schedule == "none":
        return 1.0
    warmup = max(1, round(_WARMUP_FRACTION * total))
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return _FINAL_LR_FRACTION + (1 - _FINAL_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * progress))


class DensityModule(L.LightningModule):
    """Trains ``model`` by minimizing ``model.loss(batch)`` (mean NLL [nats] or regression loss).

    Logs per epoch ``train_loss``, ``val_loss``, ``lr`` and ``elapsed`` (seconds of training,
    counted across resumes).
    """

    def __init__(self, model: torch.nn.Module, cfg: TrainingConfig) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg
        self._elapsed_before = 0.0
        self._started = time.perf_counter()

    def _elapsed(self) -> float:
        return self._elapsed_before + time.perf_counter() - self._started

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.model.loss(batch)
        # on_step=False: with DDP the mean is reduced across ranks once, at epoch end.
        self.log(
            "train_loss",
            loss,
            on_step=False,
            on_epoch=True,
            batch_size=len(batch[0]),
            sync_dist=True,
        )
        return loss

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        loss = self.model.loss(batch)
        self.log("val_loss", loss, on_epoch=True, batch_size=len(batch[0]), sync_dist=True)

    def on_fit_start(self) -> None:
        self._started = time.perf_counter()

    def on_train_batch_start(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        # Dropout and training noise (a flow's context_noise) draw from torch's generator:
        # seeded per epoch, a resumed epoch k draws as the uninterrupted run's epoch k. Seeded
        # at the first batch: the epoch's data loader iterator draws a seed from the same
        # generator, after on_train_epoch_start in one case and before it in the other (a
        # seed there left the resumed run's noise one draw off).
        if batch_idx == 0:
            torch.manual_seed(_epoch_seed(self.cfg.seed, self.current_epoch, "noise"))

    def on_train_epoch_end(self) -> None:
        lr = self.trainer.optimizers[0].param_groups[0]["lr"]
        self.log("lr", lr, sync_dist=True)
        self.log("elapsed", self._elapsed(), sync_dist=True)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["detlearn_elapsed_s"] = self._elapsed()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._elapsed_before = float(checkpoint.get("detlearn_elapsed_s", 0.0))

    def configure_optimizers(self) -> dict[str, Any]:
        opt = torch.optim.AdamW(
            self.model.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay
        )
        total = int(self.trainer.estimated_stepping_batches)
        schedule = self.cfg.schedule

        def factor(step: int) -> float:
            return lr_factor(step, total, schedule)

        # A plain function keeps the scheduler's state_dict free of pickled objects.
        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


@dataclass(frozen=True)
class FitResult:
    """What :func:`fit` produced.

    Attributes:
        best_val_loss: lowest validation loss (mean NLL, nats) over all epochs.
        epochs: epochs completed in total (including those before a resume).
        wall_seconds: wall-clock time of this call.
        weights: the best weights, ``run_dir/model.safetensors`` (beside ``model.json``).
        history: ``run_dir/history.csv``.
    """

    best_val_loss: float
    epochs: int
    wall_seconds: float
    weights: Path
    history: Path


#: Training memory per parameter [bytes]: the float32 weight, its gradient and AdamW's two
#: moments.
BYTES_PER_PARAMETER = 16
#: Training memory per activation of a batch row [bytes]: a float32 layer output the backward
#: pass keeps, and its gradient.
BYTES_PER_ACTIVATION = 8


@dataclass(frozen=True)
class ModelSize:
    """What sets a model's training memory, known before it is built.

    Attributes:
        parameters: trainable parameters.
        activations: floats one batch row leaves in the layers' outputs (kept for the
            backward pass).
        keys: the config keys that set them, named when training would not fit.
    """

    parameters: int
    activations: int
    keys: tuple[str, ...]


def meta_parameters(build: Callable[[], torch.nn.Module]) -> int:
    """Trainable parameters of the model ``build()`` makes, built on torch's meta device: shapes
    only, no memory, no initialization. (zuko's masked networks cannot be built there: they
    compute their masks from data.)

    Example:
        >>> meta_parameters(lambda: torch.nn.Linear(3, 8))  # 3 * 8 weights + 8 biases
        32
    """
    with torch.device("meta"):
        model = build()
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def training_bytes(sizes: Sequence[ModelSize], batch_size: int) -> int:
    """Memory [bytes] training ``sizes`` takes at ``batch_size`` rows: parameters × 16 bytes
    (:data:`BYTES_PER_PARAMETER`) plus batch rows × activations × 8 bytes
    (:data:`BYTES_PER_ACTIVATION`); the data set itself not included.

    Example:
        >>> training_bytes([ModelSize(1000, 10, ())], batch_size=100)
        24000
    """
    return sum(
        s.parameters * BYTES_PER_PARAMETER + batch_size * s.activations * BYTES_PER_ACTIVATION
        for s in sizes
    )


def check_training_memory(sizes: Sequence[ModelSize], batch_size: int) -> None:
    """A one-line :class:`DetlearnError` when training the models ``sizes`` at ``batch_size``
    rows would take more memory (:func:`training_bytes`) than this process may still use
    (:func:`~detlearn._threads.usable_memory`), naming the config keys to lower."""
    need = training_bytes(sizes, batch_size)
    available = usable_memory()
    if need <= available:
        return
    keys = dict.fromkeys(k for s in sizes for k in s.keys)
    parameters = sum(s.parameters for s in sizes)
    raise DetlearnError(
        f"training needs ~{need / 1e9:.3g} GB of memory ({parameters:,} parameters, "
        f"{batch_size:,} rows a batch), {available / 1e9:.3g} GB available: lower "
        f"{', '.join([*keys, 'training.batch_size'])}"
    )


def _tensors(data: Arrays, keys: Sequence[str], which: str) -> list[torch.Tensor]:
    """The batch columns of ``data`` as float32 tensors, in the model's ``batch_keys`` order.

    A mapping may add a ``"weight"`` column, a sequence a last column after ``keys``: signed
    per-row weights of the loss (see :func:`unit_mean_weights`).
    """
    if isinstance(data, Mapping):
        missing = [k for k in keys if k not in data]
        if missing:
            raise DetlearnError(f"{which} data: missing column(s) {missing}; expected {list(keys)}")
        arrays = [data[k] for k in keys] + ([data["weight"]] if "weight" in data else [])
    else:
        arrays = list(data)
    lengths = {len(a) for a in arrays}
    if len(lengths) != 1:
        raise DetlearnError(f"{which} data: columns have different lengths {sorted(lengths)}")
    if lengths == {0}:
        raise DetlearnError(f"{which} data: no rows")
    if len(arrays) > len(keys):
        keep, weight = unit_mean_weights(np.asarray(arrays[-1]), which)
        arrays = [np.asarray(a)[keep] for a in arrays[:-1]] + [weight]
    return [torch.as_tensor(np.asarray(a), dtype=torch.float32) for a in arrays]


def unit_mean_weights(weight: np.ndarray, which: str) -> tuple[np.ndarray, np.ndarray]:
    r"""The rows of nonzero weight, and their weights scaled to mean 1.

    Every model's weighted loss is the batch mean of :math:`w_i \ell_i`; with the weights of
    the whole split scaled to mean 1 that is, over the split, :math:`\sum_i w_i \ell_i /
    \sum_i w_i`, and each batch's mean is its unbiased estimate. Signed weights (NLO
    generators) keep their sign: dividing each batch by its own :math:`\sum w` instead (a
    ratio estimate) would flip a batch's gradient where its weights happen to sum to ≤ 0.
    Rows of weight 0 add nothing to the loss and are left out (the normalization is not fitted
    on them).

    Raises:
        DetlearnError: non-finite weights, or weights whose sum is not positive.

    Example:
        >>> keep, w = unit_mean_weights(np.array([2.0, 0.0, -1.0, 5.0]), "train")
        >>> keep.tolist(), w.tolist()
        ([True, False, True, True], [1.0, -0.5, 2.5])
    """
    w = np.asarray(weight, dtype=np.float64).reshape(len(weight))
    if not np.isfinite(w).all():
        raise DetlearnError(f"{which} data: {int(np.sum(~np.isfinite(w)))} non-finite weights")
    keep = w != 0
    total = float(w.sum())
    if not total > 0:
        raise DetlearnError(
            f"{which} data: the weights sum to {total:g} over {len(w):,} rows "
            f"({int(np.sum(w < 0)):,} negative, {int(np.sum(~keep)):,} zero); the weighted loss "
            "Σ w·ℓ / Σ w needs a positive sum"
        )
    return keep, w[keep] * (np.count_nonzero(keep) / total)


class _Columns(TensorDataset):
    """A TensorDataset that hands out a whole batch with one indexing per column.

    The DataLoader's default fetch indexes every row separately and stacks the rows again,
    which costs more than a small model's step; ``__getitems__`` (used by the DataLoader for
    map-style datasets) gathers the batch's rows in one go, and :func:`_as_is` collates
    nothing. Shuffling and distributed samplers work as for any map-style dataset.
    """

    def __getitems__(self, indices: list[int]) -> list[torch.Tensor]:
        index = torch.as_tensor(indices)
        return [t[index] for t in self.tensors]


def _as_is(batch: list[torch.Tensor]) -> list[torch.Tensor]:
    return batch


class _EpochShuffle(RandomSampler):
    """A random order of the rows that depends on ``seed`` and the epoch alone.

    A plain shuffling DataLoader draws each epoch's order from one generator: a resumed run,
    whose generator starts afresh, replayed epoch 0's orders. Lightning calls ``set_epoch``
    before every epoch (a resumed one too), so resumed epoch k shuffles as the run's epoch k.
    Under DDP Lightning puts its DistributedSampler (seeded, ``set_epoch`` too) in its place.
    """

    def __init__(self, data: TensorDataset, seed: int) -> None:
        super().__init__(data, generator=torch.Generator())
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Reseed the order for ``epoch`` (counted from 0)."""
        self.generator.manual_seed(_epoch_seed(self.seed, epoch, "shuffle"))


def _epoch_seed(seed: int, epoch: int, stream: str) -> int:
    """A seed for one random ``stream`` of one epoch, from the run's seed and the epoch alone."""
    key = [seed % 2**64, epoch, *stream.encode()]
    return int(np.random.SeedSequence(key).generate_state(1, np.uint64)[0] >> 1)


class _RunFolderCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, its saved paths read relative to its own folder.

    A checkpoint records its folder and best checkpoint as absolute paths; resuming a run
    folder moved or copied since, Lightning forgot the best score so far (warning) and kept
    the original folder's best checkpoint, from which the final weights would be loaded.
    """

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("dirpath")
        if saved and self.dirpath and saved != self.dirpath:
            here = Path(self.dirpath)

            def moved(path: Any) -> Any:
                if isinstance(path, str) and path and Path(path).is_relative_to(saved):
                    return str(here / Path(path).relative_to(saved))
                return path

            state_dict = {
                **state_dict,
                "dirpath": self.dirpath,
                **{
                    key: moved(state_dict.get(key))
                    for key in ("best_model_path", "kth_best_model_path", "last_model_path")
                },
                "best_k_models": {
                    moved(k): v for k, v in (state_dict.get("best_k_models") or {}).items()
                },
            }
        super().load_state_dict(state_dict)


class _AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temp file beside their final name, then renamed.

    Lightning's own write goes through a temp file in the system's temp folder and then a
    move, which, across file systems, is a copy that a kill or a full disk leaves half-done
    under the final name.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        """Write ``checkpoint`` to ``path`` (a local file) atomically."""
        # Through a Python file: its writes raise on a full disk (torch's own file writer
        # did not always), and atomic_path then names the file.
        with atomic_path(path) as tmp, tmp.open("wb") as f:
            torch.save(checkpoint, f)


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence Lightning's informational banners (accelerator, seed, tips) for the block."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            # Expected when resuming: the checkpoints we resume from are in that directory.
            warnings.filterwarnings("ignore", "Checkpoint directory .* exists and is not empty")
            # Lightning 2.6 still uses torch's deprecated pytree LeafSpec; not actionable here.
            warnings.filterwarnings("ignore", ".*LeafSpec.*", FutureWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


@contextmanager
def _restore_determinism(enabled: bool) -> Iterator[None]:
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled)


# Multiply-adds per optimizer step below which one intra-op thread is used: the work is too
# small to split, and waiting threads on busy cores made such steps up to 100x slower.
_SMALL_STEP_MACS = 5e7


@contextmanager
def _step_threads(model: torch.nn.Module, batch_size: int) -> Iterator[list[Callback]]:
    """One torch thread while training a model whose step is small, else threads fitted to
    the free CPUs before each batch (:func:`detlearn._threads.adapt`); yields the callbacks
    that do it, and restores the count afterwards."""
    before = torch.get_num_threads()
    small = sum(p.numel() for p in model.parameters()) * batch_size < _SMALL_STEP_MACS
    if small:
        torch.set_num_threads(1)
    try:
        yield [] if small else [_AdaptThreads()]
    finally:
        torch.set_num_threads(before)


class _AdaptThreads(Callback):
    """Fits torch's threads to the CPUs free now before each training and validation batch."""

    def on_train_batch_start(self, *args: Any) -> None:
        adapt()

    def on_validation_batch_start(self, *args: Any) -> None:
        adapt()


class _EpochLines(Callback):
    """One plain progress line per epoch, for logs where a progress bar would be noise."""

    def __init__(self, name: str) -> None:
        self.name, self.start = name, time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        values = "  ".join(
            f"{key} {float(metrics[key]):.5g}"
            for key in ("train_loss", "val_loss")
            if key in metrics
        )
        plain_line(
            f"{self.name}: epoch {trainer.current_epoch + 1}/{trainer.max_epochs}  {values}  "
            f"{time.perf_counter() - self.start:.0f} s"
        )


def stretched(cfg: TrainingConfig, rows: int, world: int = 1) -> TrainingConfig:
    """``cfg`` with ``max_epochs`` and ``patience`` grown by one factor so that the run makes at
    least ``cfg.min_steps`` optimizer steps over ``rows`` training rows (``world`` processes
    sharing each epoch); unchanged where ``max_epochs`` already does.

    Example:
        >>> cfg = TrainingConfig(batch_size=1000, max_epochs=10, patience=5, min_steps=400)
        >>> s = stretched(cfg, rows=20_000)  # 20 steps per epoch
        >>> s.max_epochs, s.patience
        (20, 10)
        >>> stretched(cfg, rows=100_000).max_epochs  # 100 steps per epoch: 1000 already
        10
    """
    per_epoch = steps_per_epoch(rows, cfg.batch_size, world)
    factor = cfg.min_steps / (per_epoch * cfg.max_epochs)
    if factor <= 1:
        return cfg
    return cfg.model_copy(
        update={
            "max_epochs": math.ceil(cfg.max_epochs * factor),
            "patience": math.ceil(cfg.patience * factor),
        }
    )


def steps_per_epoch(rows: int, batch_size: int, world: int = 1) -> int:
    """Optimizer steps per epoch over ``rows`` training rows, ``world`` processes sharing it.

    Example:
        >>> steps_per_epoch(20_001, 1000), steps_per_epoch(20_001, 1000, world=2)
        (21, 11)
    """
    return max(1, math.ceil(rows / (batch_size * world)))


def epochs_line(asked: TrainingConfig, used: TrainingConfig, rows: int, world: int = 1) -> str:
    """The line :func:`fit` prints when training starts: the effective ``max_epochs``,
    ``patience`` and steps per epoch of ``used`` (``asked`` after :func:`stretched`), and why
    the epochs were stretched or not.

    Example:
        >>> cfg = TrainingConfig(batch_size=1000, max_epochs=10, patience=5, min_steps=400)
        >>> epochs_line(cfg, stretched(cfg, 20_000), 20_000)
        'max_epochs 20, patience 10, 20 steps per epoch (400 at most); stretched from...'
    """
    per_epoch = steps_per_epoch(rows, used.batch_size, world)
    head = (
        f"max_epochs {used.max_epochs}, patience {used.patience}, {per_epoch:,} steps per epoch "
        f"({per_epoch * used.max_epochs:,} at most)"
    )
    if used.max_epochs != asked.max_epochs:
        why = (
            f"stretched from max_epochs {asked.max_epochs} to make training.min_steps "
            f"{asked.min_steps:,}"
        )
    elif asked.epochs_note:
        why = f"not stretched: {asked.epochs_note}"
    elif asked.min_steps:
        why = f"not stretched: max_epochs makes training.min_steps {asked.min_steps:,} already"
    else:
        why = "not stretched (training.min_steps 0)"
    return f"{head}; {why}"


def _world_size() -> int:
    devices, nodes = _distributed()
    return devices * nodes


def _distributed() -> tuple[int, int]:
    """(devices per node, nodes) from torchrun's environment; (1, 1) outside torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    return local, max(1, world // local)


def _uses_cuda(accelerator: str) -> bool:
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def last_checkpoint(run_dir: str | Path) -> Path:
    """The checkpoint :func:`fit` resumes from: ``run_dir/checkpoints/last.ckpt``."""
    return Path(run_dir) / "checkpoints" / "last.ckpt"


def fit(
    model: torch.nn.Module,
    train: Arrays,
    val: Arrays,
    cfg: TrainingConfig,
    run_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    *,
    normalize: bool = True,
) -> FitResult:
    """Train ``model`` on in-memory arrays and leave its best weights in ``run_dir``.

    Arguments:
        model: a model following the convention in the module docstring.
        train: the training columns, a mapping keyed by ``model.batch_keys`` (plus optional
            ``"weight"``) or a tuple in that order, shaped as the model's ``loss`` expects
            (flow: target [N, F], context [N, C]; counts: count [N], context [N, C]). Signed
            weights are kept, rows of weight 0 left out, and each split's weights scaled to
            mean 1 (:func:`unit_mean_weights`).
        val: the validation columns, same layout.
        cfg: training settings (batch size, lr, epochs, patience, max_rows, max_minutes, seed).
        run_dir: output directory. A fresh fit (``resume=False``) replaces its
            ``checkpoints/`` and ``logs/`` folders.
        resume: continue from ``run_dir/checkpoints/last.ckpt`` up to ``cfg.max_epochs``
            epochs in total (optimizer, scheduler, early-stopping state included).
        progress: show a rich progress bar (or one plain line per epoch in a log), after one
            line with the effective epochs and steps (:func:`epochs_line`).
        normalize: on a fresh fit, call ``model.fit_normalization`` on the training columns
            (the normalization is part of the weights, so a resume keeps the saved one).

    Returns:
        A :class:`FitResult`; ``model`` holds the best weights afterwards.
    """
    run_dir = Path(run_dir)
    keys = model.batch_keys
    train_t, val_t = _tensors(train, keys, "train"), _tensors(val, keys, "val")
    if cfg.max_rows is not None and len(train_t[0]) > cfg.max_rows:
        # A random subset: files are often ordered by condition, so a head would be biased.
        rng = np.random.default_rng(cfg.seed)
        keep = torch.as_tensor(np.sort(rng.choice(len(train_t[0]), cfg.max_rows, replace=False)))
        train_t = [t[keep] for t in train_t]

    asked, rows, world = cfg, len(train_t[0]), _world_size()
    cfg = stretched(asked, rows, world)
    ckpt_dir, log_dir = run_dir / "checkpoints", run_dir / "logs"
    last = last_checkpoint(run_dir)
    is_rank_zero = int(os.environ.get("RANK", "0")) == 0
    if progress and is_rank_zero:
        plain_line(f"{run_dir.name}: {epochs_line(asked, cfg, rows, world)}")
    if resume and not last.is_file():
        raise DetlearnError(f"{last}: no checkpoint to resume from")
    if not resume:
        if is_rank_zero:
            for stale in (ckpt_dir, log_dir):
                shutil.rmtree(stale, ignore_errors=True)
        if normalize:
            model.fit_normalization(*train_t[: len(keys)])

    started = time.perf_counter()
    # Lightning switches deterministic algorithms on process-wide; give the caller theirs back.
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    with (
        _quiet(),
        _restore_determinism(was_deterministic),
        _step_threads(model, cfg.batch_size) as threads,
    ):
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        train_set = _Columns(*train_t)
        train_loader = DataLoader(
            train_set,
            batch_size=cfg.batch_size,
            sampler=_EpochShuffle(train_set, cfg.seed),
            collate_fn=_as_is,
        )
        val_loader = DataLoader(_Columns(*val_t), batch_size=4 * cfg.batch_size, collate_fn=_as_is)
        checkpoint = _RunFolderCheckpoint(
            dirpath=ckpt_dir,
            filename="best",
            monitor="val_loss",
            mode="min",
            save_top_k=1,
            save_last=True,
            enable_version_counter=False,
        )
        callbacks: list[Callback] = [
            EarlyStopping(monitor="val_loss", mode="min", patience=cfg.patience),
            checkpoint,
            *threads,
        ]
        bar = progress and interactive()
        if bar:
            callbacks.append(RichProgressBar())
        elif progress:
            callbacks.append(_EpochLines(run_dir.name))
        devices, nodes = _distributed()
        cuda = _uses_cuda(cfg.accelerator)
        trainer = L.Trainer(
            accelerator=cfg.accelerator,
            devices=devices,
            num_nodes=nodes,
            strategy=(
                DDPStrategy(process_group_backend="nccl" if cuda else "gloo")
                if devices * nodes > 1
                else "auto"
            ),
            max_epochs=cfg.max_epochs,
            max_time=timedelta(minutes=cfg.max_minutes) if cfg.max_minutes else None,
            gradient_clip_val=_CLIP_NORM,
            gradient_clip_algorithm="norm",
            callbacks=callbacks,
            logger=CSVLogger(run_dir, name="logs", flush_logs_every_n_steps=1),
            log_every_n_steps=1,
            enable_progress_bar=bar,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            # Deterministic CUDA kernels need CUBLAS_WORKSPACE_CONFIG and cost speed; CPU
            # kernels are deterministic at no cost.
            deterministic=not cuda,
            default_root_dir=run_dir,
            plugins=[_AtomicCheckpointIO()],
        )
        module = DensityModule(model, cfg)
        trainer.fit(
            module,
            train_loader,
            val_loader,
            ckpt_path=last if resume else None,
            weights_only=True,
        )
    wall = time.perf_counter() - started

    best = checkpoint.best_model_path
    best_loss = checkpoint.best_model_score
    if not best:
        raise DetlearnError(
            f"{run_dir}: training stopped before its first epoch ended (training.max_minutes "
            f"{cfg.max_minutes}); nothing was learned, so no model is saved"
        )
    if best_loss is None or not math.isfinite(float(best_loss)):
        raise DetlearnError(
            f"{run_dir}: training diverged (validation loss {best_loss} from the first epoch "
            f"on); no model is saved: lower training.lr (now {cfg.lr:g})"
        )
    state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    if not all(torch.isfinite(p).all() for p in model.state_dict().values()):
        raise DetlearnError(f"{run_dir}: the best weights hold NaN or inf; no model is saved")
    history = run_dir / "history.csv"
    if trainer.is_global_zero:
        save_model(model, run_dir)
        if _write_history(log_dir, history):
            plot_loss(history, run_dir / "loss.png", getattr(model, "loss_label", _NLL_LABEL))
    trainer.strategy.barrier("detlearn-artifacts")
    return FitResult(
        best_val_loss=float(best_loss) if best_loss is not None else math.nan,
        epochs=trainer.current_epoch,
        wall_seconds=wall,
        weights=run_dir / WEIGHTS_FILE,
        history=history,
    )


def _read_epochs(metrics: Path) -> dict[int, dict[str, str]]:
    """Lightning's metrics.csv (one row per log call) folded into one row per epoch."""
    rows: dict[int, dict[str, str]] = {}
    with metrics.open(newline="") as f:
        for record in csv.DictReader(f):
            if not record.get("epoch"):
                continue
            row = rows.setdefault(int(float(record["epoch"])), {})
            row.update({k: v for k, v in record.items() if v not in ("", None)})
    return rows


def _write_history(log_dir: Path, path: Path) -> list[dict[str, float]]:
    """Merge every logged version (one per fit/resume) into ``history.csv``; returns the rows.

    A resumed run restarts at the epoch after its checkpoint, so its rows replace any rows
    the interrupted run logged from that epoch on.
    """
    versions = sorted(
        log_dir.glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1])
    )
    merged: dict[int, dict[str, str]] = {}
    for metrics in versions:
        epochs = _read_epochs(metrics)
        if epochs:
            start = min(epochs)
            merged = {e: r for e, r in merged.items() if e < start} | epochs
    names = {"elapsed_s": "elapsed"}
    rows = [
        {
            col: float(merged[e].get(names.get(col, col), "nan")) if col != "epoch" else e
            for col in HISTORY_COLUMNS
        }
        for e in sorted(merged)
    ]
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=HISTORY_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return rows
