"""The self-contained ``report.html`` of a run, and its ``metrics.json``.

:func:`write_report` collects metrics, tables and figures into ``report.html`` (images embedded
as base64, plain CSS, no external assets: it can be mailed or attached to a logbook) and
``metrics.json``, both written atomically.
"""

from __future__ import annotations

import base64
import html
import math
import mimetypes
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from detlearn._files import atomic_write_bytes, atomic_write_json
from detlearn.errors import DetlearnError
from detlearn.evaluation.metrics import Score, to_jsonable

__all__ = ["Section", "write_report"]


@dataclass(frozen=True)
class Section:
    """A titled part of a report: its metrics, tables and figures (a family's generic
    evaluation, placed after a recipe's own suite)."""

    title: str
    metrics: Mapping[str, Any]
    tables: Sequence[tuple[str, Sequence[Mapping[str, Any]]]] = ()
    figures: Sequence[tuple[str, Path]] = ()


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
    sections: Sequence[Section] = (),
    reference: str | None = None,
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
        sections: further titled parts after these (e.g. the family's generic evaluation).
        reference: one line saying what the model was compared with, shown under the title.

    Returns:
        The path of ``report.html``. ``metrics.json`` holds ``title``, ``metrics`` (as given,
        Scores as dicts, NaN as null), ``checks`` (per target: op, threshold, value, pass),
        ``passed`` (all targets met; null without targets), ``tables`` (title, rows) and
        ``figures`` (captions, file names), ``sections`` (title, metrics, tables, figures) and
        ``reference``.
    """
    out_dir = Path(out_dir)
    entries = {name: _metric_entry(v) for name, v in metrics.items()}
    checks: dict[str, dict[str, Any]] = {}
    for name, target in (targets or {}).items():
        if name not in entries:
            raise DetlearnError(f"target for unknown metric '{name}' (have: {', '.join(entries)})")
        checks[name] = _check(entries[name].get("value"), target)

    images = _images(figures)

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="note">Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by detlearn. '
        "Baseline: the same metric for two independent simulated samples of equal size; "
        "ratio = value / baseline (≈ 1: as close to simulation as simulation is to itself).</p>",
    ]
    if reference:
        parts.append(f"<p><b>Reference:</b> {html.escape(reference)}</p>")
    passed = all(c["pass"] for c in checks.values()) if checks else None
    if passed is not None:
        verdict = "pass" if passed else "fail"
        n_pass = sum(c["pass"] for c in checks.values())
        parts.append(f'<p>Targets: <span class="{verdict}">{n_pass} / {len(checks)} met</span></p>')
    parts += _body(entries, checks, tables, images)
    for section in sections:
        section_images = _images(section.figures)
        parts.append(f"<h1>{html.escape(section.title)}</h1>")
        parts += _body(
            {name: _metric_entry(v) for name, v in section.metrics.items()},
            {},
            section.tables,
            section_images,
        )
    parts.append("</body></html>\n")

    atomic_write_json(
        out_dir / "metrics.json",
        to_jsonable(
            {
                "title": title,
                "reference": reference,
                "metrics": metrics,
                "checks": checks,
                "passed": passed,
                "tables": [{"title": t, "rows": list(rows)} for t, rows in tables],
                "figures": [{"caption": c, "file": img.name} for c, img, _, _ in images],
                "sections": [
                    {
                        "title": sec.title,
                        "metrics": sec.metrics,
                        "tables": [{"title": t, "rows": list(rows)} for t, rows in sec.tables],
                        "figures": [{"caption": c, "file": Path(f).name} for c, f in sec.figures],
                    }
                    for sec in sections
                ],
            }
        ),
    )
    report = out_dir / "report.html"
    atomic_write_bytes(report, "\n".join(parts).encode("utf-8"))
    return report


def _images(figures: Sequence[tuple[str, str | Path]]) -> list[tuple[str, Path, str, str]]:
    """(caption, path, mime type, base64 data) of each figure, to embed."""
    images = []
    for caption, img in figures:
        img = Path(img)
        if not img.is_file():
            raise DetlearnError(f"report figure not found: {img}")
        mime = mimetypes.guess_type(img.name)[0] or "image/png"
        images.append((caption, img, mime, base64.b64encode(img.read_bytes()).decode("ascii")))
    return images


def _body(
    entries: Mapping[str, Mapping[str, Any]],
    checks: Mapping[str, Mapping[str, Any]],
    tables: Sequence[tuple[str, Sequence[Mapping[str, Any]]]],
    images: Sequence[tuple[str, Path, str, str]],
) -> list[str]:
    """The HTML of a metrics table (with each target's verdict), tables and figures."""
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
    parts = [
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
    return parts
