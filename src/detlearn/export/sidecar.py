"""The sidecar: one typed JSON record beside every exported ONNX graph, for every family.

A host that loads ``<name>.onnx`` reads ``<name>.json`` (:class:`Sidecar`) to learn what to
feed it and what comes out: the graph's inputs and outputs in order (name, shape with the
dynamic ``batch`` axis first, dtype, unit, columns), the training range of every context
column (where the model does not extrapolate), the physical support of every target, the
constants the graph applies itself, a classifier's pre-step, the run's provenance (recipe,
detlearn version, config hash) and the measured onnxruntime-vs-PyTorch parity. Every exporter
writes it through :func:`write_sidecar`; :func:`read_sidecar` refuses, in one line naming the
file, a sidecar that is not exactly this record (an unknown key, a wrong type or shape, NaN).

Example:
    >>> sidecar = read_sidecar("runs/klm/export/sample.json")        # doctest: +SKIP
    >>> list(sidecar.inputs), sidecar.parity.max_abs                 # doctest: +SKIP
    (['noise', 'context'], 2.4e-07)
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from detlearn._files import atomic_write_json, read_json_object
from detlearn.config import ImageConfig, config_hash
from detlearn.errors import DetlearnError
from detlearn.runs.artifact import RunInfo

__all__ = [
    "SIDECAR_FORMAT",
    "Bounds",
    "Column",
    "Parity",
    "Preprocessing",
    "Range",
    "Sidecar",
    "Standardization",
    "TensorSpec",
    "export_summary",
    "read_sidecar",
    "run_fields",
    "write_sidecar",
]

SIDECAR_FORMAT = 1


class _Record(BaseModel):
    # A sidecar is read by hosts in other languages: no key they do not know, no NaN or inf
    # (not JSON), no value silently coerced from another type.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)


class Column(_Record):
    """One column of a 2-D input or output: its name and physical unit."""

    name: str
    unit: str | None = None


class TensorSpec(_Record):
    """A graph input or output.

    ``shape`` starts with the dynamic axis ``"batch"``, the other axes fixed sizes; ``columns``
    (a 2-D tensor of named quantities) lists its columns in order.
    """

    shape: list[Annotated[int, Field(gt=0)] | Literal["batch"]] = Field(min_length=1)
    dtype: Literal["float32"]
    unit: str | None = None
    columns: list[Column] | None = None
    note: str | None = None

    @model_validator(mode="after")
    def _batch_first(self) -> TensorSpec:
        if self.shape[0] != "batch" or "batch" in self.shape[1:]:
            raise ValueError(f"shape {self.shape}: the first axis, only, is 'batch'")
        if self.columns is not None and self.shape[1:] != [len(self.columns)]:
            raise ValueError(f"shape {self.shape} does not hold {len(self.columns)} columns")
        return self


class Range(_Record):
    """The range [min, max] a context column spanned in training."""

    min: float
    max: float

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if not self.min <= self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self


class Bounds(_Record):
    """A target's physical support (lower, upper), None where unbounded; the model's values
    lie strictly inside it."""

    lower: float | None = None
    upper: float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Bounds:
        if self.lower is not None and self.upper is not None and not self.lower < self.upper:
            raise ValueError(f"lower bound {self.lower} is not below upper {self.upper}")
        return self


class Standardization(_Record):
    """Constants the graph applies itself, per column of one of its inputs or outputs:
    ``(v - center) / scale``, where v is the column as the notes say (a host passes and gets
    physical units and never applies them).

    ``log_columns``: columns standardized as log(v); ``relative_to``: target -> the context
    column it is measured in units of; ``center_folded`` (a regressor's inputs): the centring
    is folded into the first Gemm's bias rather than kept as a Sub node.
    """

    center: list[float]
    scale: list[Annotated[float, Field(gt=0)]]
    log_columns: list[str] = []
    relative_to: dict[str, str] = {}
    center_folded: bool | None = None
    note: str | None = None

    @model_validator(mode="after")
    def _paired(self) -> Standardization:
        if len(self.center) != len(self.scale):
            raise ValueError(f"{len(self.center)} centers for {len(self.scale)} scales")
        return self


class Preprocessing(_Record):
    """A classifier's pre-step, run by the host: how an event's hits become the graph's inputs
    (``detlearn.runs.classification.network_inputs``)."""

    arch: Literal["cnn", "point_cloud"]
    hits: list[str]
    image: ImageConfig | None = None
    max_hits: int | None = None
    signal_masses: list[float] = []


class Parity(_Record):
    """The onnxruntime-vs-PyTorch check on ``rows`` held-out input rows: the largest
    absolute and relative difference, and the largest in units of the ``criterion``'s
    tolerance (faithful: <= 1)."""

    max_abs: float = Field(ge=0)
    max_rel: float = Field(ge=0)
    max_scaled: float = Field(ge=0, le=1)
    rows: int = Field(gt=0)
    criterion: str


class Sidecar(_Record):
    """The contents of ``<graph>.json`` beside ``<graph>.onnx`` (module docstring).

    ``inputs`` and ``outputs`` are in the graph's order. ``context_ranges`` and ``support`` are
    keyed by column name, ``normalization`` by input or output name.
    """

    format: Literal[1] = SIDECAR_FORMAT
    model: str = Field(pattern=r"^[^/\\]+\.onnx$")
    opset: int = Field(ge=17)
    description: str
    inputs: dict[str, TensorSpec] = Field(min_length=1)
    outputs: dict[str, TensorSpec] = Field(min_length=1)
    context_ranges: dict[str, Range] = {}
    support: dict[str, Bounds] = {}
    normalization: dict[str, Standardization] = {}
    preprocessing: Preprocessing | None = None
    recipe: str | None
    detlearn_version: str
    config_hash: str = Field(pattern=r"^[0-9a-f]{16}$")
    parity: Parity

    @model_validator(mode="after")
    def _normalizes_its_tensors(self) -> Sidecar:
        unknown = set(self.normalization) - set(self.inputs) - set(self.outputs)
        if unknown:
            raise ValueError(f"normalization of '{min(unknown)}', not an input or output")
        return self


def run_fields(info: RunInfo, support: bool = True) -> dict[str, Any]:
    """The :class:`Sidecar` fields every graph of a run shares: provenance, the training range
    of every context column and (``support``) every target's support."""
    return {
        "recipe": info.recipe,
        "detlearn_version": info.detlearn_version,
        "config_hash": config_hash(info.config),
        "context_ranges": {c.name: Range(min=c.min, max=c.max) for c in info.context},
        "support": (
            {t.name: Bounds(lower=t.lower, upper=t.upper) for t in info.target} if support else {}
        ),
    }


def write_sidecar(out: Path, sidecar: Sidecar) -> Path:
    """Write ``sidecar`` beside its graph (``out/<model stem>.json``), atomically; returns
    its path."""
    path = out / Path(sidecar.model).with_suffix(".json")
    atomic_write_json(path, sidecar.model_dump(mode="json"))
    return path


def read_sidecar(path: str | Path) -> Sidecar:
    """A sidecar file, checked: an unknown or missing key, a wrong type or shape, NaN or inf
    is a one-line :class:`DetlearnError` naming the file and the key."""
    path = Path(path)
    read_json_object(path)  # unreadable, not JSON (NaN, inf), not an object: named errors
    try:
        # JSON mode: arrays are tuples where the schema says so (an image's shape), and
        # strict: a number is not a string, nor a string a number.
        return Sidecar.model_validate_json(path.read_bytes(), strict=True)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise DetlearnError(f"{path}: key '{key}': {first['msg']}") from None


def export_summary(sidecars: list[Sidecar]) -> dict[str, Any]:
    """What a family's exporter returns: the main (first) graph's sidecar as a dict, its
    parity also as ``parity_max_abs``, ``parity_max_rel``, ``parity_max_scaled`` and
    ``parity_rows`` (what ``detlearn export`` prints), and ``graphs``: every written graph's
    file name -> its sidecar."""
    main = sidecars[0]
    return {
        **main.model_dump(mode="json"),
        "parity_max_abs": main.parity.max_abs,
        "parity_max_rel": main.parity.max_rel,
        "parity_max_scaled": main.parity.max_scaled,
        "parity_rows": main.parity.rows,
        "graphs": {s.model: s.model_dump(mode="json") for s in sidecars},
    }
