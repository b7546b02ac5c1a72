"""The run config: a YAML file validated by pydantic, with every default in this one place.

A config has one section per stage (``data``, ``split``, ``executor``, ``model``, ``training``,
``evaluation``) plus the recipe-specific ``simulate`` options. A recipe ships its own defaults
(``recipes/<name>/recipe.yaml``); a user's file is merged over them key by key.

Example:
    >>> cfg = RunConfig.model_validate({"data": {"inputs": ["sim/*.root"]}})
    >>> cfg.training.batch_size
    4096
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from detlearn.errors import DetlearnError

__all__ = [
    "ClassifierConfig",
    "ColumnSpec",
    "DataConfig",
    "EvaluationConfig",
    "ExecutorConfig",
    "FlowConfig",
    "HoldoutConfig",
    "ImageConfig",
    "InputSpec",
    "LabelRowsConfig",
    "ModelConfig",
    "RegressorConfig",
    "RunConfig",
    "SlurmConfig",
    "SplitConfig",
    "TrainingConfig",
    "config_from_raw",
    "config_hash",
    "data_hash",
    "deep_merge",
    "dump_commented_yaml",
    "merge_layers",
    "merge_options",
    "read_raw_config",
    "read_yaml",
    "validate_config",
    "validate_options",
]

Role = Literal["context", "target", "label", "weight", "observer", "group"]


class _Strict(BaseModel):
    # NaN and inf are never a meaningful size, rate or bound (an lr of inf trained to NaN and
    # was published as a model).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ColumnSpec(_Strict):
    """One output column of a prepared dataset."""

    expr: str | None = Field(
        None, description="expression over branches (numpy/awkward); null: the column's own name"
    )
    role: Role = Field(
        "observer", description="context | target | label | weight | observer | group"
    )
    unit: str = Field("", description="physical unit (mm, ns, GeV, rad, ...)")
    lower: float | None = Field(None, description="physical lower bound of a target (support)")
    upper: float | None = Field(None, description="physical upper bound of a target (support)")


class InputSpec(_Strict):
    """Input files with columns of constant value (a sample's label, its generated mass)."""

    path: str = Field(description="a file, glob, directory or 'file.root:tree' spec")
    columns: dict[str, float] = Field(
        default_factory=dict,
        description="columns set to this value on every row of these files, e.g. "
        "{label: 1, mass: 10} [the column's unit]",
    )


class DataConfig(_Strict):
    """Which ROOT files to read and how to turn them into rows."""

    inputs: list[str | InputSpec] = Field(
        default_factory=list,
        description="files, globs, directories or 'file.root:tree' specs, each a string or "
        "{path, columns: {name: value}} to give its rows constant columns (label, mass)",
    )
    tree: str | None = Field(None, description="tree name; inferred when a file has exactly one")
    extractor: str | None = Field(
        None, description="recipe extractor name or 'module:function'; null: use `columns`"
    )
    options: dict[str, Any] = Field(default_factory=dict, description="options for the extractor")
    columns: dict[str, ColumnSpec] = Field(
        default_factory=dict,
        description="output columns: name -> {expr, role, unit, bounds}; a recipe's column "
        "given again is changed key by key, 'name: null' removes it",
    )
    selection: str | None = Field(None, description="row selection expression, e.g. 'x > 0'")

    @field_validator("inputs", mode="before")
    @classmethod
    def _one_input(cls, value: Any) -> Any:
        # A single path is one input (iterating a string would read each character as one).
        return [value] if isinstance(value, str | dict) else value

    require: list[str] = Field(
        default_factory=list,
        description="expressions of branches every entry must satisfy, else an error naming "
        "the file (e.g. 'ak.num(raw) == 8')",
    )
    step_size: int = Field(200_000, gt=0, description="entries per work item (one shard each)")
    on_nonfinite: Literal["drop", "error"] = Field(
        "drop", description="rows with NaN/Inf in a column: drop (counted) or error"
    )
    on_error: Literal["stop", "skip"] = Field(
        "stop", description="a bad input file: stop, or skip it and list it under 'failed'"
    )
    # Column name -> where its spec came from (a recipe's defaults, the user's file, --set),
    # filled by config_from_raw for error messages; not part of the config's value.
    _origins: dict[str, str] = PrivateAttr(default_factory=dict)
    # Columns a config layer removed ('name: null'): left out even where an extractor gives them.
    _removed: frozenset[str] = PrivateAttr(frozenset())

    @property
    def removed_columns(self) -> frozenset[str]:
        """Columns of a recipe's defaults that the user's config removed (``name: null``);
        ``prepare`` leaves them out even where the recipe's extractor gives them."""
        return self._removed

    def column_origin(self, name: str) -> str:
        """Where column ``name`` was defined (``"recipe mass-grid's defaults"``, the config
        file, ``"--set"``); empty when unknown (a config built in Python)."""
        return self._origins.get(name, "")

    def column_label(self, name: str, advice: bool = True) -> str:
        """How an error names column ``name``: with where it was defined, and (``advice``) for
        a recipe's column how to replace or remove it.

        Example:
            >>> DataConfig(columns={"x": {}}).column_label("x")
            "column 'x'"
        """
        origin = self.column_origin(name)
        if not origin:
            return f"column '{name}'"
        if advice and origin.startswith("recipe "):
            return (
                f"column '{name}' from {origin}; replace it under data.columns in your config "
                f"or remove it with '{name}: null'"
            )
        return f"column '{name}' from {origin}"


class HoldoutConfig(_Strict):
    """Context points kept out of training and validation, for interpolation tests.

    A row is held out when its ``columns`` equal one of ``points`` (relative tolerance
    ``rtol``). ``points: checkerboard`` takes the distinct values of each column as a grid and
    holds out its interior points with an even index sum, so every held-out point keeps its
    grid neighbours in training.
    """

    columns: list[str] = Field(min_length=1, description="context columns a point is matched on")
    points: list[list[float]] | Literal["checkerboard"] = Field(
        "checkerboard", description="held-out points (one value per column), or 'checkerboard'"
    )
    rtol: float = Field(1e-6, gt=0, description="relative tolerance of the match")

    @model_validator(mode="after")
    def _one_value_per_column(self) -> HoldoutConfig:
        if len(set(self.columns)) != len(self.columns):
            raise ValueError(f"columns must be distinct (got {self.columns})")
        for point in self.points if isinstance(self.points, list) else []:
            if len(point) != len(self.columns):
                raise ValueError(f"point {point} needs one value per column {self.columns}")
        return self


class LabelRowsConfig(_Strict):
    """Labels (distinct values of ``columns``: the points of a grid of conditions) with fewer
    than ``rows`` rows in the dataset, all splits together, are left out of training and
    validation, and reported (a warning, and ``sparse_labels`` in ``run.json``)."""

    columns: list[str] = Field(min_length=1, description="context columns that make a label")
    rows: int = Field(gt=0, description="fewest rows a label needs to be trained on")
    rtol: float = Field(1e-6, gt=0, description="relative tolerance of equal label values")

    @model_validator(mode="after")
    def _distinct_columns(self) -> LabelRowsConfig:
        if len(set(self.columns)) != len(self.columns):
            raise ValueError(f"columns must be distinct (got {self.columns})")
        return self


class SplitConfig(_Strict):
    """Deterministic train/val/test split by a hash of the group id (the event by default)."""

    train: float = Field(0.8, ge=0, le=1, description="fraction of groups for training")
    val: float = Field(0.1, ge=0, le=1, description="fraction of groups for validation")
    test: float = Field(0.1, ge=0, le=1, description="fraction of groups for testing")
    seed: int = Field(0, description="salt of the split hash")
    holdout: HoldoutConfig | None = Field(
        None, description="context points left out of train and val (kept for evaluation)"
    )
    min_label_rows: LabelRowsConfig | None = Field(
        None, description="labels with fewer rows are left out of train and val, and reported"
    )


class SlurmConfig(_Strict):
    """Settings of a dask_jobqueue.SLURMCluster (executor kind 'slurm')."""

    queue: str | None = Field(None, description="SLURM partition")
    account: str | None = Field(None, description="SLURM account")
    cores: int = Field(4, gt=0, description="cores per job")
    processes: int = Field(1, gt=0, description="dask worker processes per job")
    memory: str = Field("8GB", description="memory per job")
    walltime: str = Field("01:00:00", description="wall-time limit per job")
    jobs: int = Field(4, gt=0, description="number of jobs to start")
    job_extra_directives: list[str] = Field(
        default_factory=list, description="extra '#SBATCH' lines, e.g. '--constraint=cpu'"
    )


class ExecutorConfig(_Strict):
    """Where work items run: a local process pool, a dask cluster, or SLURM jobs."""

    kind: Literal["local", "dask", "slurm"] = Field("local", description="local | dask | slurm")
    workers: int = Field(2, gt=0, description="local processes (or LocalCluster workers)")
    scheduler: str | None = Field(None, description="dask scheduler address, tcp://host:port")
    slurm: SlurmConfig = Field(default_factory=SlurmConfig, description="SLURM settings")


#: The widest layer (units or channels) a model may have, and the most hidden layers: a typo or
#: a crafted ``model.json`` (``hidden: [1e6, 1e6]``) must not build a model of 10^12 weights.
MAX_WIDTH = 8192
MAX_LAYERS = 16
#: Hidden-layer sizes, each in 1..MAX_WIDTH, at most MAX_LAYERS of them.
Widths = Annotated[list[Annotated[int, Field(gt=0, le=MAX_WIDTH)]], Field(max_length=MAX_LAYERS)]


class FlowConfig(_Strict):
    """A conditional normalizing flow (zuko)."""

    kind: Literal["nsf", "maf", "realnvp"] = Field("nsf", description="nsf | maf | realnvp")
    transforms: int = Field(3, gt=0, le=64, description="number of flow transforms")
    bins: int = Field(16, gt=1, le=1024, description="spline bins (nsf)")
    hidden: Widths = Field(default_factory=lambda: [128, 128], description="hidden layer sizes")
    passes: int | None = Field(
        None, description="autoregressive passes: null fully autoregressive, 2 coupling"
    )
    log_context: list[str] = Field(
        default_factory=list,
        description=(
            "context columns (> 0) the network sees as log(c): labels spanning decades, "
            "such as generated masses, whose effects scale with c"
        ),
    )
    context_of: dict[str, list[str]] = Field(
        default_factory=dict,
        description=(
            "target -> the context columns its transforms read (default: all), where the "
            "physics says it depends on no other: every label of those others then informs it"
        ),
    )
    relative_to: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "target -> context column (> 0): the flow models the target in units of it, "
            "x / c (bounds scale alike), e.g. a reconstructed mass relative to the generated one"
        ),
    )
    context_noise: dict[str, NonNegativeFloat] = Field(
        default_factory=dict,
        description=(
            "context column -> standard deviation of Gaussian noise added to it in training "
            "only, in the units the network reads (natural log for a log_context column, so "
            "0.1 smears a label by ~10 %): smooths what is learned between the few values of a "
            "grid label so that neighbouring labels pool their data"
        ),
    )


class RegressorConfig(_Strict):
    """A dense regressor of one target (model family 'regressor')."""

    arch: Literal["model4exp", "mlp"] = Field(
        "model4exp",
        description="model4exp: FACILE's BN-Dense36-BN-Dense11-BN-Dense3-Dense1; mlp: `hidden`",
    )
    hidden: Widths = Field(
        default_factory=lambda: [64, 32], description="hidden layer sizes (arch mlp)"
    )
    batch_norm: bool = Field(True, description="BatchNorm before every hidden layer (arch mlp)")
    activation: Literal["relu", "tanh", "silu"] = Field("relu", description="(arch mlp)")
    loss: Literal["mse", "huber", "relative"] = Field(
        "mse", description="mse | huber | relative (mean squared relative error)"
    )
    huber_delta: float = Field(
        1.0, gt=0, description="Huber transition point, in target standard deviations"
    )


class ImageConfig(_Strict):
    """How hits become an image (``detlearn.data.images.ImageSpec``); lengths in mm."""

    layout: Literal["xyz", "z_split"] = Field(
        "xyz", description="xyz: three projections as channels; z_split: depth slices of (x, y)"
    )
    shape: tuple[int, int] = Field((20, 20), description="image rows and columns (H, W)")
    channels: int = Field(3, gt=0, description="channels (3 for xyz; depth slices for z_split)")
    extent: tuple[tuple[float, float], tuple[float, float], tuple[float, float]] = Field(
        ((-200.0, 200.0), (-200.0, 200.0), (240.0, 770.0)),
        description="(lo, hi) of x, y and z [mm]",
    )
    z_binning: Literal["linear", "log"] = Field(
        "linear", description="depth slices equal in z, or in log(z - z_origin)"
    )
    z_origin: float = Field(0.0, description="origin of log z binning, below the z extent [mm]")
    assignment: Literal["histogram", "lattice"] = Field(
        "histogram", description="energy sum per bin, or the original's nearest lattice point"
    )
    normalization: Literal["none", "offset_max", "sum", "log1p"] = Field(
        "offset_max", description="per event: none, (img + 0.1)/max (the original's), sum, log1p"
    )
    outside: Literal["drop", "clip"] = Field(
        "drop", description="hits outside the extent (always counted): drop, or clip to the edge"
    )


class ClassifierConfig(_Strict):
    """A signal/background classifier of per-event hits (model family 'classifier')."""

    arch: Literal["cnn", "point_cloud", "bdt"] = Field(
        "cnn",
        description="cnn: a ConvNet on hit images; point_cloud: EdgeConv over the hardest hits; "
        "bdt: gradient-boosted trees on LDMX-BDT-style features",
    )
    hits: list[str] = Field(
        default_factory=lambda: ["x", "y", "z", "E", "layer"],
        description="the dataset's per-hit list columns: x, y, z [mm], energy [MeV], layer",
    )
    mass_parameterized: bool = Field(
        False,
        description="the signal mass as an extra input; each background event gets a random "
        "mass from the signal masses, so mass is no shortcut",
    )
    mass_column: str = Field("mass", description="column of the signal mass [MeV]")
    image: ImageConfig = Field(default_factory=ImageConfig, description="hit images (cnn)")
    conv_channels: Widths = Field(
        default_factory=lambda: [32, 64], description="channels of each conv + max-pool block"
    )
    kernel: int = Field(5, gt=0, le=31, description="convolution kernel size (odd: 'same' padding)")
    dense: Widths = Field(
        default_factory=lambda: [500], description="hidden sizes of the dense head"
    )
    dropout: float = Field(0.5, ge=0, lt=1, description="dropout before the dense head")
    max_hits: int = Field(
        64, gt=0, le=4096, description="point_cloud: the hardest hits kept per event"
    )
    neighbours: int = Field(8, gt=0, le=256, description="point_cloud: k nearest hits of each hit")
    edge_channels: Widths = Field(
        default_factory=lambda: [32, 64], description="point_cloud: EdgeConv block widths"
    )
    bdt_max_iter: int = Field(300, gt=0, description="bdt: boosting iterations")
    bdt_learning_rate: float = Field(0.1, gt=0, le=1, description="bdt: learning rate")
    bdt_max_leaf_nodes: int = Field(31, gt=1, description="bdt: leaves per tree")


class ModelConfig(_Strict):
    """The model family and its settings."""

    family: Literal["flow", "classifier", "regressor"] = Field("flow", description="model family")
    flow: FlowConfig = Field(default_factory=FlowConfig, description="flow settings")
    regressor: RegressorConfig = Field(
        default_factory=RegressorConfig, description="regressor settings"
    )
    classifier: ClassifierConfig = Field(
        default_factory=ClassifierConfig, description="classifier settings"
    )
    count: Literal["none", "negbinom"] = Field(
        "none", description="also learn a per-group count N | context (negative binomial)"
    )
    count_column: str = Field("n_photons", description="column holding each group's count N")
    count_hidden: Widths = Field(
        default_factory=lambda: [64, 64], description="hidden layer sizes of the count model"
    )
    count_max_epochs: int = Field(
        300,
        gt=0,
        description="epochs bound of the count model (one row per group: small, cheap epochs)",
    )
    count_patience: int = Field(
        20, ge=1, description="count model early stopping: epochs without val improvement"
    )


class TrainingConfig(_Strict):
    """Lightning training settings."""

    batch_size: int = Field(4096, gt=0, description="rows per optimizer step")
    lr: float = Field(3e-3, gt=0, description="peak learning rate (AdamW)")
    weight_decay: float = Field(1e-5, ge=0, description="AdamW weight decay")
    max_epochs: int = Field(30, gt=0, description="upper bound on epochs")
    min_steps: int = Field(
        0,
        ge=0,
        description="make at least this many optimizer steps: where max_epochs of the training "
        "rows fall short (a small data set), max_epochs and patience grow by the same factor; "
        "a max_epochs given in a later config layer (your file over the recipe's defaults, "
        "--set over your file) is kept as given",
    )
    max_minutes: float | None = Field(
        None, gt=0, description="wall-clock limit of training, minutes"
    )
    patience: int = Field(5, ge=1, description="early stopping: epochs without val improvement")
    schedule: Literal["cosine", "none"] = Field("cosine", description="LR schedule")
    max_rows: int | None = Field(None, gt=0, description="use at most this many training rows")
    balance: list[str] = Field(
        default_factory=list,
        description="context columns whose distinct value combinations (grid labels) weigh "
        "equally in the loss: a row weighs 1 / (rows sharing its values), times its own weight",
    )
    balance_power: float = Field(
        1.0,
        ge=0,
        le=1,
        description="with balance: a row weighs (rows sharing its values)^-power; 1 makes every "
        "label weigh alike, lower values keep more of the rows' statistical weight",
    )
    seed: int = Field(0, description="seed of initialization and shuffling")
    accelerator: str = Field("auto", description="Lightning accelerator: auto | cpu | gpu")
    # Why min_steps was set aside (an explicit max_epochs from a later config layer); filled
    # by config_from_raw, printed when training starts.
    _epochs_note: str = PrivateAttr("")

    @property
    def epochs_note(self) -> str:
        """Why ``min_steps`` is 0 although a lower config layer set it: the user's own
        ``max_epochs`` won (empty otherwise)."""
        return self._epochs_note


class EvaluationConfig(_Strict):
    """What `detlearn evaluate` computes."""

    samples_per_row: int = Field(1, gt=0, description="surrogate samples per test row")
    max_rows: int = Field(200_000, gt=0, description="test rows used by the evaluation")
    options: dict[str, Any] = Field(default_factory=dict, description="recipe-specific options")


class RunConfig(_Strict):
    """A whole run: data preparation, model, training and evaluation."""

    recipe: str | None = Field(None, description="recipe name (klm-timing, mass-grid, ...)")
    simulate: dict[str, Any] = Field(
        default_factory=dict, description="options of the recipe's built-in simulator"
    )
    data: DataConfig = Field(default_factory=DataConfig, description="ROOT inputs -> rows")
    split: SplitConfig = Field(default_factory=SplitConfig, description="train/val/test split")
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig, description="executor")
    model: ModelConfig = Field(default_factory=ModelConfig, description="model")
    training: TrainingConfig = Field(default_factory=TrainingConfig, description="training")
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig, description="evaluation")


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Return ``base`` updated by ``override``, merging nested dicts key by key."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _model_at(loc: tuple[Any, ...], annotation: Any = RunConfig) -> type[BaseModel] | None:
    """The pydantic model class that owns the field path ``loc`` below ``annotation`` (None
    for free dicts): through ``X | None`` and the values of ``dict[str, X]`` (a column's
    name in ``data.columns``) or items of ``list[X]``.

    Example:
        >>> _model_at(("data", "columns", "x")).__name__, _model_at(("split", "holdout")).__name__
        ('ColumnSpec', 'HoldoutConfig')
    """
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if not loc or loc[0] not in annotation.model_fields:
            return annotation
        return _model_at(loc[1:], annotation.model_fields[loc[0]].annotation)
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (dict, list) and loc:
        return _model_at(loc[1:], args[-1])
    # A union (X | None): the member that is a model.
    members = [_model_at(loc, a) for a in args] if origin in (Union, UnionType) else []
    return next((m for m in members if m is not None), None)


def _explain(error: ValidationError, source: str) -> str:
    first = error.errors()[0]
    loc = tuple(first["loc"])
    dotted = ".".join(str(p) for p in loc)
    if first["type"] == "extra_forbidden":
        owner = _model_at(loc[:-1])
        valid = list(owner.model_fields) if owner is not None else []
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(valid)}"
        return f"{source}: unknown key '{dotted}'{hint}"
    return f"{source}: key '{dotted}': {first['msg']} (got {first.get('input')!r})"


def validate_config(raw: dict[str, Any], source: str = "config") -> RunConfig:
    """Validate a config dict; a bad key raises a one-line :class:`DetlearnError`."""
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        raise DetlearnError(_explain(err, source)) from None


M = TypeVar("M", bound=BaseModel)


def validate_options(model: type[M], options: Mapping[str, Any] | None, source: str) -> M:
    """Validate a free options mapping (e.g. a recipe's ``simulate`` section) into ``model``.

    A bad key gives a one-line :class:`DetlearnError` naming it and its nearest valid spelling.

    Example:
        >>> validate_options(SlurmConfig, {"coers": 4}, "executor.slurm")
        Traceback (most recent call last):
        ...
        detlearn.errors.DetlearnError: executor.slurm: unknown option 'coers'; did you mean 'cores'?
    """
    try:
        return model.model_validate(dict(options or {}))
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "options"
        if first["type"] == "extra_forbidden":
            close = difflib.get_close_matches(key, list(model.model_fields), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise DetlearnError(f"{source}: unknown option '{key}'{hint}") from None
        raise DetlearnError(
            f"{source}: option '{key}': {first['msg']} (got {first.get('input')!r})"
        ) from None


def merge_options(
    defaults: Mapping[str, Any], given: Mapping[str, Any] | None, source: str
) -> dict[str, Any]:
    """``defaults`` updated by ``given`` (a free options mapping, e.g. ``evaluation.options``).

    A key that is not in ``defaults`` gives a one-line :class:`DetlearnError` naming it and its
    nearest valid spelling.

    Example:
        >>> merge_options({"samples": 10}, {"smaples": 5}, "options")
        Traceback (most recent call last):
        ...
        detlearn.errors.DetlearnError: options: unknown option 'smaples'; did you mean 'samples'?
    """
    given = dict(given or {})
    for key in given:
        if key not in defaults:
            close = difflib.get_close_matches(key, list(defaults), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; valid: {', '.join(defaults)}"
            raise DetlearnError(f"{source}: unknown option '{key}'{hint}")
    return {**defaults, **given}


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error (PyYAML
    keeps the last silently, so a second ``training:`` section would drop the first)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # '<<: *defaults': its keys may be given again here, overriding them
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, Hashable):
                if key in seen:
                    raise _DuplicateKey(f"line {key_node.start_mark.line + 1}: key '{key}' twice")
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


class _DuplicateKey(yaml.YAMLError):
    pass


def read_yaml(path: Path) -> Any:
    """The YAML document in ``path``; a key repeated in one mapping is an error.

    Raises:
        DetlearnError: naming the file (and the line of a repeated key) if it is not valid YAML.
    """
    try:
        # _UniqueKeyLoader is a SafeLoader: no Python objects are built.
        document = yaml.load(path.read_bytes().decode("utf-8"), Loader=_UniqueKeyLoader)
    except _DuplicateKey as err:
        raise DetlearnError(f"{path}: {err}") from None
    except yaml.YAMLError as err:
        raise DetlearnError(f"{path}: not valid YAML ({err.__class__.__name__})") from None
    except UnicodeDecodeError:
        raise DetlearnError(f"{path}: not valid YAML (not UTF-8 text)") from None
    except RecursionError:
        raise DetlearnError(f"{path}: nested too deeply to be a config") from None
    _check_size(document, path)
    return document


#: The most values a config may expand to: aliases share objects, and printing or hashing a
#: few nested aliases (a "billion laughs") expands them exponentially.
MAX_CONFIG_VALUES = 100_000


def _check_size(document: Any, path: Path) -> None:
    """A one-line error when ``document`` expands to more than :data:`MAX_CONFIG_VALUES`
    values or nests deeper than 64 levels (counted without recursion, stopping at the limit)."""
    count, stack = 0, [(document, 0)]
    while stack:
        value, depth = stack.pop()
        count += 1
        if count > MAX_CONFIG_VALUES or depth > 64:
            raise DetlearnError(
                f"{path}: the config expands to more than {MAX_CONFIG_VALUES:,} values or 64 "
                "levels (YAML aliases that repeat each other?)"
            )
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)


def read_raw_config(path: str | Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The YAML run config in ``path`` as a mapping, with ``overrides`` merged over it."""
    path = Path(path)
    if not path.is_file():
        raise DetlearnError(f"{path}: config file not found")
    raw = read_yaml(path) or {}
    if not isinstance(raw, dict):
        raise DetlearnError(f"{path}: a config must be a mapping of sections")
    return deep_merge(raw, overrides) if overrides else raw


#: A config layer: its name in messages (``"recipe mass-grid's defaults"``, the file, ``--set``)
#: and its keys.
Layer = tuple[str, Mapping[str, Any]]
#: The path of a key below the top of a config, e.g. ``("training", "max_epochs")``.
KeyPath = tuple[str, ...]
_COLUMNS: KeyPath = ("data", "columns")


def merge_layers(layers: Sequence[Layer]) -> tuple[dict[str, Any], dict[KeyPath, int]]:
    """Merge config layers, lowest first, key by key (as :func:`deep_merge`); a column set to
    null (``data.columns: {phi: null}``) removes that column of a lower layer.

    Returns:
        The merged mapping, and for each key path the index of the layer that set it last.

    Raises:
        DetlearnError: a null column that no lower layer defines (a misspelled name).

    Example:
        >>> merged, origin = merge_layers([
        ...     ("recipe", {"data": {"columns": {"phi": {"role": "target"}, "m": {}}}}),
        ...     ("run.yaml", {"data": {"columns": {"phi": None}}, "training": {"lr": 0.1}})])
        >>> merged["data"]["columns"], origin[("training", "lr")], origin[("data", "columns", "m")]
        ({'m': {}}, 1, 0)
    """
    merged: dict[str, Any] = {}
    origin: dict[KeyPath, int] = {}
    for index, (name, layer) in enumerate(layers):
        merged = _merge_layer(merged, layer, index, name, origin, ())
    return merged, origin


def _merge_layer(
    base: Mapping[str, Any],
    override: Mapping[str, Any],
    index: int,
    name: str,
    origin: dict[KeyPath, int],
    at: KeyPath,
) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        here = (*at, key)
        if value is None and at == _COLUMNS:
            if key not in out:
                have = ", ".join(map(str, out)) or "none"
                raise DetlearnError(
                    f"{name}: data.columns.{key}: null removes a column defined by the recipe's "
                    f"defaults, but there is no column '{key}' (columns: {have})"
                )
            del out[key]
            _forget(origin, here)
        else:
            below = out.get(key)
            if not (isinstance(value, Mapping) and isinstance(below, Mapping)):
                _forget(origin, here)
                below = {}
            origin[here] = index
            # A mapping is merged into a copy: the layers are left as they were.
            out[key] = (
                _merge_layer(below, value, index, name, origin, here)
                if isinstance(value, Mapping)
                else value
            )
    return out


def _forget(origin: dict[KeyPath, int], at: KeyPath) -> None:
    for path in [p for p in origin if p[: len(at)] == at]:
        del origin[path]


def config_from_raw(
    raw: dict[str, Any],
    path: str | Path,
    defaults: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
) -> RunConfig:
    """Validate ``raw`` (read from ``path``) merged over ``defaults`` (a recipe's config), with
    ``overrides`` (``--set``) merged over both, by :func:`merge_layers`.

    Relative input paths are resolved against the config file's folder in the file, against
    the current directory in ``overrides`` (``--set``, typed there). Each column remembers
    the layer it came from (:meth:`DataConfig.column_origin`, for error messages). A
    ``training.max_epochs`` set in a higher layer than ``training.min_steps`` wins: min_steps
    is set to 0 there, so the user's ``max_epochs: 2`` is not stretched to make a recipe's
    ``min_steps`` (:attr:`TrainingConfig.epochs_note` says so).
    """
    path = Path(path)
    recipe = deep_merge(raw, overrides or {}).get("recipe")
    layers: list[Layer] = [
        (f"recipe {recipe}'s defaults", defaults or {}),
        (str(path), _with_inputs_resolved(raw, path.parent)),
        ("--set", _with_inputs_resolved(overrides or {}, Path.cwd())),
    ]
    merged, origin = merge_layers(layers)
    names = [name for name, _ in layers]
    note = _explicit_epochs(merged, origin, names)
    merged.setdefault("data", {})
    try:
        cfg = RunConfig.model_validate(merged)
    except ValidationError as err:
        # Named after the layer that set the offending key: the file, --set, or the recipe.
        loc = tuple(str(p) for p in err.errors()[0]["loc"])
        layer = next((origin[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in origin), 1)
        raise DetlearnError(_explain(err, names[layer])) from None
    cfg.data._origins = {
        col: names[origin.get((*_COLUMNS, col, "expr"), origin.get((*_COLUMNS, col), 1))]
        for col in cfg.data.columns
    }
    cfg.training._epochs_note = note
    removed = {
        name
        for _, layer in layers
        for name, spec in _columns_of(layer).items()
        if spec is None and name not in cfg.data.columns
    }
    cfg.data._removed = frozenset(removed)
    return cfg


def _columns_of(layer: Mapping[str, Any]) -> Mapping[str, Any]:
    data = layer.get("data")
    columns = data.get("columns") if isinstance(data, Mapping) else None
    return columns if isinstance(columns, Mapping) else {}


def _explicit_epochs(
    merged: dict[str, Any], origin: Mapping[KeyPath, int], names: list[str]
) -> str:
    """Set ``training.min_steps`` to 0 in ``merged`` where ``training.max_epochs`` comes from a
    higher layer; returns the note saying so (empty when nothing was set aside)."""
    training = merged.get("training")
    epochs = origin.get(("training", "max_epochs"))
    steps = origin.get(("training", "min_steps"))
    if not isinstance(training, dict) or epochs is None or steps is None or epochs <= steps:
        return ""
    if not training.get("min_steps"):
        return ""
    merged["training"] = {**training, "min_steps": 0}
    return (
        f"training.max_epochs {training.get('max_epochs')} from {names[epochs]} wins over "
        f"training.min_steps {training['min_steps']} from {names[steps]}"
    )


def _with_inputs_resolved(layer: dict[str, Any], folder: Path) -> dict[str, Any]:
    """``layer`` with the relative paths of its ``data.inputs`` (one string or a list)
    resolved against ``folder``."""
    data = layer.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("inputs"), (str, list)):
        return layer
    inputs = data["inputs"]
    resolved: Any = (
        _relative_to(inputs, folder)
        if isinstance(inputs, str)
        else [_relative_to(item, folder) for item in inputs]
    )
    return {**layer, "data": {**data, "inputs": resolved}}


def _relative_to(item: Any, folder: Path) -> Any:
    """An input spec (a string or a ``{path: ...}`` mapping) with a relative path resolved
    against the config's ``folder``."""
    spec = item.get("path") if isinstance(item, dict) else item
    if not isinstance(spec, str) or Path(spec.split(":")[0]).is_absolute() or "://" in spec:
        return item
    resolved = str(folder / spec)
    return {**item, "path": resolved} if isinstance(item, dict) else resolved


def config_hash(section: BaseModel) -> str:
    """A short stable hash of a config section (what decides whether a shard is reusable)."""
    payload = json.dumps(section.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def data_hash(data: DataConfig) -> str:
    """The hash of what in ``data`` decides a dataset's rows: all but ``inputs`` (each shard
    records its own source file, so adding files reuses the others' shards) and ``on_error``."""
    return config_hash(data.model_copy(update={"inputs": [], "on_error": "stop"}))


def dump_commented_yaml(
    model: BaseModel, indent: int = 0, expand: Mapping[str, BaseModel] | None = None
) -> str:
    """YAML text of a config with each key's description as a trailing comment.

    ``expand``: top-level free sections written as the given model instead, every key with its
    comment (a recipe's ``simulate`` options as its simulator's config). The keys of a section
    that is unset (``split.holdout: null``), of an empty mapping of sections (no
    ``data.columns`` yet) and of a list's sections (``data.inputs`` as ``{path, columns}``)
    follow it as comments, so that every key is shown with its meaning.
    """
    lines: list[str] = []
    pad = "  " * indent
    for name, field in type(model).model_fields.items():
        value = (expand or {}).get(name, getattr(model, name))
        comment = f"  # {field.description}" if field.description else ""
        hint = _commented_keys(field.annotation, value, pad)
        if hint:
            dumped = yaml.safe_dump(_plain(value), default_flow_style=True, width=10_000)
            lines.append(f"{pad}{name}: {dumped.strip().removesuffix('...').strip()}{comment}")
            lines.extend(hint)
        elif isinstance(value, BaseModel):
            lines.append(f"{pad}{name}:{comment}")
            lines.append(dump_commented_yaml(value, indent + 1))
        elif (
            isinstance(value, dict)
            and value
            and all(isinstance(v, BaseModel) for v in value.values())
        ):
            lines.append(f"{pad}{name}:{comment}")
            for key, sub in value.items():
                lines.append(f"{pad}  {key}:")
                lines.append(dump_commented_yaml(sub, indent + 2))
        else:
            dumped = yaml.safe_dump(_plain(value), default_flow_style=True, width=10_000)
            dumped = dumped.strip().removesuffix("...").strip()
            lines.append(f"{pad}{name}: {dumped}{comment}")
    return "\n".join(line for line in lines if line)


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models among the members of a union annotation (``X | None``)."""
    members = get_args(annotation) if get_origin(annotation) in (Union, UnionType) else ()
    candidates = members or (annotation,)
    return [m for m in candidates if isinstance(m, type) and issubclass(m, BaseModel)]


def _commented_keys(annotation: Any, value: Any, pad: str) -> list[str]:
    """Comment lines with the keys of the sections a field may hold but does not show: an
    unset ``X | None``, an empty ``dict[str, X]``, a ``list[str | X]`` without an ``X``."""
    origin, args = get_origin(annotation), get_args(annotation)
    if value is None:
        models, lead = _models_in(annotation), "  "
    elif origin is dict and not value:
        models, lead = _models_in(args[-1]), "  NAME:\n    "
    elif origin is list and not any(isinstance(v, BaseModel) for v in value):
        models, lead = _models_in(args[0]), "  - "
    else:
        return []
    if not models:
        return []
    keys = [
        f"{key}: {_shown_default(field)}"
        + (f"  # {field.description}" if field.description else "")
        for key, field in models[0].model_fields.items()
    ]
    first, _, rest = lead.rpartition("\n")
    indent = " " * len(rest)
    head = [f"{pad}#{first}"] if first else []
    return head + [f"{pad}#{rest if i == 0 else indent}{k}" for i, k in enumerate(keys)]


def _shown_default(field: Any) -> str:
    """A field's default as YAML, or ``...`` for a required one."""
    if field.is_required():
        return "..."
    default = field.get_default(call_default_factory=True)
    dumped = yaml.safe_dump(_plain(default), default_flow_style=True, width=10_000)
    return dumped.strip().removesuffix("...").strip()


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
