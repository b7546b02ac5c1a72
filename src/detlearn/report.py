"""Plots (matplotlib + mplhep, HEP style) and the self-contained ``report.html`` of a run.

Every plot function writes one PNG and returns its path. Figures are built on
``matplotlib.figure.Figure`` directly, never through pyplot, so nothing here touches the global
backend or leaks open figures, and it works headless. The style is mplhep's CMS style with a
"detlearn Simulation" label and no luminosity; comparisons always show the second simulated
sample (sim2) as the reference for how much two simulations differ by chance.

:func:`write_report` collects metrics, tables and figures into ``report.html`` (images embedded
as base64, plain CSS, no external assets: it can be mailed or attached to a logbook) and
``metrics.json``, both written atomically.
"""

from __future__ import annotations

import base64
import csv
import functools
import html
import math
import mimetypes
import operator
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import matplotlib.style
import mplhep
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.gridspec import GridSpec, SubplotSpec

from detlearn.errors import DetlearnError
from detlearn.evaluation.density import context_bin_masks
from detlearn.evaluation.metrics import Score, to_jsonable
from detlearn.io.dataset import atomic_write_bytes, atomic_write_json

__all__ = [
    "plot_binned_overlays",
    "plot_hist_compare",
    "plot_loss",
    "plot_metric_vs_bin",
    "plot_pit",
    "write_report",
]

# CMS's house style is sized for a single 10-inch panel; grids of small panels need smaller text.
_STYLE = [mplhep.styles.CMS, {"font.size": 14, "axes.labelsize": 14, "legend.fontsize": 11}]
_SIM, _MODEL, _SIM2 = "#3f90da", "#bd1f01", "#717581"
_F = TypeVar("_F", bound=Callable[..., Any])


def _styled(fn: _F) -> _F:
    """Run a plot function inside the HEP style context (rcParams restored afterwards)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with matplotlib.style.context(_STYLE):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _label(ax: Axes) -> None:
    """The experiment-style label above the axes: bold "detlearn", italic "Simulation"."""
    # A plain title rather than mplhep.label.exp_label: its offsets are fixed when it is called
    # and drift once a layout engine moves the axes.
    ax.set_title(r"$\bf{detlearn}$ $\it{Simulation}$", loc="left", fontsize=14)


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def _ratio_grid(fig: Figure, nrows: int, ncols: int) -> GridSpec:
    """An outer grid for main+ratio cells, with margins in inches (no layout engine).

    Constrained layout would pad between a main panel and its ratio panel; fixed margins let
    the two touch.
    """
    w, h = fig.get_size_inches()
    return fig.add_gridspec(
        nrows, ncols, left=0.9 / w, right=1 - 0.2 / w, bottom=0.6 / h, top=1 - 0.45 / h,
        wspace=0.3, hspace=0.3,
    )  # fmt: skip


def _ratio_axes(fig: Figure, cell: SubplotSpec) -> tuple[Axes, Axes]:
    """A main panel above a ratio panel sharing its x axis, in a gridspec cell."""
    sub = cell.subgridspec(2, 1, height_ratios=[3, 1], hspace=0.0)
    ax = fig.add_subplot(sub[0])
    rax = fig.add_subplot(sub[1], sharex=ax)
    ax.tick_params(labelbottom=False)
    return ax, rax


def _ratio(
    num: np.ndarray, den: np.ndarray, n_num: float, n_den: float
) -> tuple[np.ndarray, np.ndarray]:
    """Ratio of two normalized histograms and its error from Poisson errors on both counts.

    r = (num / n_num) / (den / n_den), σ_r = r·sqrt(1/num + 1/den); NaN where a count is 0.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where((num > 0) & (den > 0), (num / n_num) / (den / n_den), np.nan)
        return r, r * np.sqrt(1.0 / num + 1.0 / den)


def _compare_panel(
    ax: Axes,
    rax: Axes,
    edges: np.ndarray,
    samples: Sequence[np.ndarray],
    labels: Sequence[str],
    xlabel: str,
    logy: bool = False,
) -> None:
    """Normalized histograms of 2 or 3 samples (reference first) and their ratio to the first.

    Each histogram is normalized to its sample's total size (density per x unit), so entries
    outside the plotted range still count and the areas stay comparable.
    """
    widths = np.diff(edges)
    counts = [np.histogram(s, edges)[0].astype(np.float64) for s in samples]
    styles = [
        {"histtype": "fill", "color": _SIM, "alpha": 0.35},
        {"histtype": "step", "color": _MODEL, "linewidth": 1.8},
        {"histtype": "step", "color": _SIM2, "linewidth": 0.9},
    ]
    for s, c, lab, st in zip(samples, counts, labels, styles, strict=False):
        mplhep.histplot(c / (len(s) * widths), edges, ax=ax, label=lab, **st)
    ax.set_ylabel("density")
    if logy:
        ax.set_yscale("log")
    else:
        ax.set_ylim(0, 1.3 * ax.get_ylim()[1])  # headroom for the legend
    ax.legend(loc="upper right")
    centers = 0.5 * (edges[1:] + edges[:-1])
    r, err = _ratio(counts[1], counts[0], len(samples[1]), len(samples[0]))
    rax.errorbar(centers, r, yerr=err, fmt="o", ms=3, color=_MODEL, elinewidth=1)
    if len(samples) > 2:
        r2, _ = _ratio(counts[2], counts[0], len(samples[2]), len(samples[0]))
        rax.stairs(r2, edges, color=_SIM2, linewidth=0.9)
    rax.axhline(1.0, color="black", linewidth=0.8)
    rax.set_ylim(0.5, 1.5)
    rax.set_yticks([0.75, 1.0, 1.25])  # none at the edges, where the main panel's labels sit
    rax.set_ylabel(f"/ {labels[0]}", fontsize=11)
    rax.set_xlabel(xlabel)
    rax.set_xlim(edges[0], edges[-1])


def _range_edges(samples: Sequence[np.ndarray], bins: int) -> np.ndarray:
    """Equal-width edges over the central 99.8 % of the pooled samples (outliers off-plot)."""
    lo, hi = np.quantile(np.concatenate(samples), [0.001, 0.999])
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, bins + 1)


@_styled
def plot_binned_overlays(
    target_sim: np.ndarray,
    context_sim: np.ndarray,
    target_model: np.ndarray,
    target_sim2: np.ndarray,
    context_names: Sequence[str],
    bins: Mapping[str, Sequence[float] | np.ndarray],
    out_dir: str | Path,
    *,
    unit: str = "ns",
    target_label: str = r"$\Delta t$",
    hist_bins: int = 40,
    ncols: int = 4,
) -> list[Path]:
    """Overlays of sim, model and sim2 in each context bin, one PNG per context variable.

    The arrays are those of :func:`~detlearn.evaluation.density.validate_conditional`. Each
    panel shows normalized histograms (sim filled, model as a thick line, sim2 as a thin line)
    and a ratio panel: model / sim with Poisson error bars, sim2 / sim as a thin line.

    Returns:
        The paths ``out_dir/overlay_<variable>.png``, in the order of ``bins``.
    """
    out_dir = Path(out_dir)
    sim = np.asarray(target_sim, dtype=np.float64).ravel()
    ctx = np.asarray(context_sim, dtype=np.float64).reshape(sim.size, -1)
    model = np.asarray(target_model, dtype=np.float64).ravel()
    sim2 = np.asarray(target_sim2, dtype=np.float64).ravel()
    xlabel = f"{target_label} [{unit}]" if unit else target_label
    paths = []
    for name, edges in bins.items():
        if name not in context_names:
            raise DetlearnError(f"plot_binned_overlays: no context named '{name}'")
        col = ctx[:, list(context_names).index(name)]
        masks = context_bin_masks(col, edges)
        nrows = math.ceil(len(masks) / ncols)
        cols = min(ncols, len(masks))
        fig = Figure(figsize=(4.6 * cols, 4.8 * nrows))
        grid = _ratio_grid(fig, nrows, cols)
        for i, mask in enumerate(masks):
            ax, rax = _ratio_axes(fig, grid[i // cols, i % cols])
            if i == 0:
                _label(ax)
            title = rf"{name} $\in$ [{edges[i]:.3g}, {edges[i + 1]:.3g}]"
            ax.set_title(title, loc="right", fontsize=11)
            if mask.sum() == 0:
                continue
            s = (sim[mask], model[mask], sim2[mask])
            _compare_panel(
                ax, rax, _range_edges(s[:2], hist_bins), s, ("sim", "model", "sim2"), xlabel
            )
        paths.append(_save(fig, out_dir / f"overlay_{name}.png"))
    return paths


def _num(v: Any) -> float:
    return np.nan if v is None else float(v)


@_styled
def plot_metric_vs_bin(
    rows: Sequence[Mapping[str, Any]],
    metric: str,
    path: str | Path,
    *,
    unit: str = "",
    tolerance: float | None = None,
) -> Path:
    """A per-bin metric (model vs sim) beside its baseline (sim2 vs sim), one panel per variable.

    ``rows`` are :class:`~detlearn.evaluation.density.ValidationResult` rows (keys
    ``variable``, ``lo``, ``hi``, ``<metric>`` and optionally ``<metric>_baseline``). With a
    ``tolerance``, tolerance × baseline is drawn as a dashed line (e.g. 2 for W1).
    """
    variables = list(dict.fromkeys(r["variable"] for r in rows))
    if not variables:
        raise DetlearnError("plot_metric_vs_bin: no rows")
    fig = Figure(figsize=(5.0 * len(variables), 4.5), layout="constrained")
    axes = fig.subplots(1, len(variables), squeeze=False)[0]
    for ax, var in zip(axes, variables, strict=True):
        sel = [r for r in rows if r["variable"] == var]
        lo = np.array([r["lo"] for r in sel], dtype=np.float64)
        hi = np.array([r["hi"] for r in sel], dtype=np.float64)
        x, xerr = 0.5 * (lo + hi), 0.5 * (hi - lo)
        ax.errorbar(x, [_num(r.get(metric)) for r in sel], xerr=xerr, fmt="o", color=_MODEL,
                    label="model vs sim")  # fmt: skip
        values = [_num(r.get(metric)) for r in sel]
        if any(f"{metric}_baseline" in r for r in sel):
            base = np.array([_num(r.get(f"{metric}_baseline")) for r in sel])
            ax.errorbar(x, base, xerr=xerr, fmt="s", mfc="none", color=_SIM2, label="sim2 vs sim")
            if tolerance is not None:
                ax.hlines(tolerance * base, lo, hi, colors=_SIM2, linestyles="dashed",
                          label=f"{tolerance:g} × baseline")  # fmt: skip
                values += list(tolerance * base)
        ax.set_xlabel(var)
        ax.set_ylabel(f"{metric} [{unit}]" if unit else metric)
        top = np.nanmax(values) if np.any(np.isfinite(values)) else 1.0
        ax.set_ylim(0, 1.35 * top if top > 0 else 1.0)
        ax.legend(loc="upper right")
        _label(ax)
    return _save(fig, path)


@_styled
def plot_pit(u: np.ndarray, path: str | Path, *, bins: int = 20) -> Path:
    """Histogram of PIT values u = F_model(t_sim | c) against the uniform expectation.

    The band is the ±1σ binomial spread of a bin's count for a perfectly calibrated model.
    A ∪ shape means the model is too narrow, ∩ too wide, a slope a bias.
    """
    u = np.asarray(u, dtype=np.float64).ravel()
    edges = np.linspace(0.0, 1.0, bins + 1)
    counts = np.histogram(u, edges)[0]
    expected = u.size / bins
    sigma = math.sqrt(expected * (1.0 - 1.0 / bins))
    fig = Figure(figsize=(6.0, 5.0), layout="constrained")
    ax = fig.subplots()
    ax.fill_between(
        [0, 1],
        expected - sigma,
        expected + sigma,
        color=_SIM2,
        alpha=0.3,
        label=r"uniform $\pm 1\sigma$",
    )
    mplhep.histplot(counts, edges, ax=ax, color=_MODEL, label="PIT of sim under model")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.4 * max(counts.max(), expected + sigma))
    ax.set_xlabel("u = F_model(t | c)")
    ax.set_ylabel("events")
    ax.legend(loc="upper right")
    _label(ax)
    return _save(fig, path)


@_styled
def plot_loss(history_csv: str | Path, path: str | Path) -> Path:
    """Training and validation loss per epoch from a Lightning ``CSVLogger`` metrics file.

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
    ax.set_ylabel("loss")
    ax.legend(loc="upper right")
    _label(ax)
    return _save(fig, path)


@_styled
def plot_hist_compare(
    a: np.ndarray,
    b: np.ndarray,
    labels: tuple[str, str],
    path: str | Path,
    bins: int | Sequence[float] | np.ndarray = 50,
    xlabel: str = "",
    *,
    logy: bool = False,
) -> Path:
    """Normalized histograms of two samples (e.g. photon counts, first-photon times), with b / a.

    Args:
        a, b: the reference (simulation) and the compared sample.
        labels: their legend labels.
        bins: number of equal-width bins over the central 99.8 % of both, or explicit edges
            (use integer-aligned edges for counts).
        xlabel: x-axis label, with its unit.
        logy: logarithmic y axis.
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    edges = _range_edges((a, b), bins) if np.ndim(bins) == 0 else np.asarray(bins, dtype=np.float64)
    fig = Figure(figsize=(6.5, 6.0))
    ax, rax = _ratio_axes(fig, _ratio_grid(fig, 1, 1)[0])
    _compare_panel(ax, rax, edges, (a, b), labels, xlabel, logy)
    _label(ax)
    return _save(fig, path)


_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    "<": operator.lt,
    ">=": operator.ge,
    ">": operator.gt,
}

_CSS = """
body { font-family: Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f0f0f0; } td.name { text-align: left; }
.pass { color: #1a7f37; font-weight: bold; } .fail { color: #cf222e; font-weight: bold; }
figure { margin: 1.5em 0; } img { max-width: 100%; }
figcaption { font-size: 0.9em; color: #555; }
.note { color: #555; font-size: 0.9em; }
"""


def _metric_entry(value: Any) -> dict[str, Any]:
    """A metric as {value, baseline, ratio, unit, error}: from a Score, a dict or a number."""
    if isinstance(value, Score):
        return value.to_dict()
    if isinstance(value, Mapping):
        return dict(to_jsonable(value))
    return {"value": to_jsonable(value)}


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    if isinstance(v, bool):
        return "✓" if v else "✗"
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def _check(value: Any, target: tuple[str, float]) -> dict[str, Any]:
    op, threshold = target
    if op not in _OPS:
        raise DetlearnError(f"target operator '{op}' unknown (use {', '.join(_OPS)})")
    ok = isinstance(value, (int, float)) and math.isfinite(value) and _OPS[op](value, threshold)
    return {"op": op, "threshold": float(threshold), "value": value, "pass": bool(ok)}


def _table_html(rows: Sequence[Mapping[str, Any]]) -> str:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_fmt(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def write_report(
    out_dir: str | Path,
    title: str,
    metrics: Mapping[str, Any],
    tables: Sequence[tuple[str, Sequence[Mapping[str, Any]]]] = (),
    figures: Sequence[tuple[str, str | Path]] = (),
    targets: Mapping[str, tuple[str, float]] | None = None,
) -> Path:
    """Write ``out_dir/report.html`` (self-contained) and ``out_dir/metrics.json``, atomically.

    Args:
        out_dir: output folder (created).
        title: report title.
        metrics: name → :class:`~detlearn.evaluation.metrics.Score`, a dict with ``value``
            (and optionally ``baseline``, ``ratio``, ``unit``, ``error``) or a number.
        tables: (title, rows) pairs, e.g. ``("per-bin", result.rows)``.
        figures: (caption, image path) pairs; the images are embedded as base64.
        targets: name → (operator, threshold), e.g. ``{"kl_mean": ("<=", 0.02)}``; operators
            ``<=``, ``<``, ``>=``, ``>`` apply to the metric's value and show as pass/fail.

    Returns:
        The path of ``report.html``. ``metrics.json`` holds ``title``, ``metrics`` (as given,
        Scores as dicts, NaN as null), ``checks`` (per target: op, threshold, value, pass),
        ``passed`` (all targets met; null without targets), ``tables`` (title, rows) and
        ``figures`` (captions, file names).
    """
    out_dir = Path(out_dir)
    entries = {name: _metric_entry(v) for name, v in metrics.items()}
    checks: dict[str, dict[str, Any]] = {}
    for name, target in (targets or {}).items():
        if name not in entries:
            raise DetlearnError(f"target for unknown metric '{name}' (have: {', '.join(entries)})")
        checks[name] = _check(entries[name].get("value"), target)

    images = []
    for caption, img in figures:
        img = Path(img)
        if not img.is_file():
            raise DetlearnError(f"report figure not found: {img}")
        mime = mimetypes.guess_type(img.name)[0] or "image/png"
        images.append((caption, img, mime, base64.b64encode(img.read_bytes()).decode("ascii")))

    metric_rows = []
    for name, e in entries.items():
        status = ""
        if name in checks:
            c = checks[name]
            verdict = "pass" if c["pass"] else "fail"
            status = (
                f"{html.escape(c['op'])} {c['threshold']:g} "
                f'<span class="{verdict}">{verdict}</span>'
            )
        cells = [_fmt(e.get(k)) for k in ("value", "error", "baseline", "ratio", "unit")]
        metric_rows.append(
            f'<tr><td class="name">{html.escape(name)}</td>'
            + "".join(f"<td>{c}</td>" for c in cells)
            + f"<td>{status}</td></tr>"
        )
    passed = all(c["pass"] for c in checks.values()) if checks else None
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="note">Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by detlearn. '
        "Baseline: the same metric for two independent simulated samples of equal size; "
        "ratio = value / baseline (≈ 1: as close to simulation as simulation is to itself).</p>",
    ]
    if passed is not None:
        verdict = "pass" if passed else "fail"
        n_pass = sum(c["pass"] for c in checks.values())
        parts.append(f'<p>Targets: <span class="{verdict}">{n_pass} / {len(checks)} met</span></p>')
    parts += [
        "<h2>Metrics</h2><table><tr><th>metric</th><th>value</th><th>± error</th>"
        "<th>baseline (sim vs sim)</th><th>ratio</th><th>unit</th><th>target</th></tr>",
        *metric_rows,
        "</table>",
    ]
    for table_title, rows in tables:
        parts += [f"<h2>{html.escape(table_title)}</h2>", _table_html(rows)]
    if images:
        parts.append("<h2>Figures</h2>")
    for caption, _, mime, data in images:
        parts.append(
            f'<figure><img src="data:{mime};base64,{data}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    parts.append("</body></html>\n")

    atomic_write_json(
        out_dir / "metrics.json",
        to_jsonable(
            {
                "title": title,
                "metrics": metrics,
                "checks": checks,
                "passed": passed,
                "tables": [{"title": t, "rows": list(rows)} for t, rows in tables],
                "figures": [{"caption": c, "file": img.name} for c, img, _, _ in images],
            }
        ),
    )
    report = out_dir / "report.html"
    atomic_write_bytes(report, "\n".join(parts).encode("utf-8"))
    return report
