"""Plots and the self-contained report: files written, HTML well formed, JSON round-trips."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from detlearn.errors import DetlearnError
from detlearn.evaluation.metrics import Score, to_jsonable
from detlearn.plots import (
    plot_binned_overlays,
    plot_hist_compare,
    plot_loss,
    plot_metric_vs_bin,
    plot_pit,
)
from detlearn.report import write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
VOID = {"meta", "img", "br", "hr", "link", "input"}


def _is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == PNG_MAGIC


@pytest.fixture
def samples():
    rng = np.random.default_rng(3)
    n = 1500
    z = rng.uniform(0, 100, n)
    ctx = np.column_stack([z, rng.uniform(0.2, 1.2, n)])
    sim, model, sim2 = z / 20 + rng.gamma(3.0, 1.5, (3, n))
    return sim, ctx, model, sim2


ROWS = [
    {"variable": "z", "bin": 0, "lo": 0.0, "hi": 50.0, "w1": 0.2, "w1_baseline": 0.1},
    {"variable": "z", "bin": 1, "lo": 50.0, "hi": 100.0, "w1": None, "w1_baseline": None},
    {"variable": "theta", "bin": 0, "lo": 0.2, "hi": 1.2, "w1": 0.1, "w1_baseline": 0.12},
]


def test_binned_overlays_one_png_per_context_variable(tmp_path, samples):
    sim, ctx, model, sim2 = samples
    # The last z bin is empty: its panel stays blank instead of failing.
    bins = {"z": [0, 25, 50, 75, 100, 150], "theta": [0.2, 0.7, 1.2]}
    paths = plot_binned_overlays(sim, ctx, model, sim2, ["z", "theta"], bins, tmp_path, ncols=3)
    assert [p.name for p in paths] == ["overlay_z.png", "overlay_theta.png"]
    assert all(_is_png(p) for p in paths)
    with pytest.raises(DetlearnError, match="no context named 'p'"):
        plot_binned_overlays(sim, ctx, model, sim2, ["z", "theta"], {"p": [0, 1]}, tmp_path)


def test_metric_pit_and_hist_plots(tmp_path):
    rng = np.random.default_rng(0)
    written = [
        plot_metric_vs_bin(ROWS, "w1", tmp_path / "w1.png", unit="ns", tolerance=2.0),
        plot_pit(rng.uniform(0, 1, 2000), tmp_path / "pit.png"),
        plot_hist_compare(
            rng.poisson(20, 2000), rng.poisson(21, 2000), ("sim", "model"),
            tmp_path / "sub" / "counts.png", bins=np.arange(0, 45) - 0.5,
            xlabel="photons per hit", logy=True,
        ),
        plot_hist_compare(rng.exponential(1, 500), rng.exponential(1, 500), ("a", "b"),
                          tmp_path / "t.png"),
    ]  # fmt: skip
    assert all(_is_png(p) for p in written)
    with pytest.raises(DetlearnError, match="no rows"):
        plot_metric_vs_bin([], "w1", tmp_path / "none.png")


def test_loss_from_sparse_lightning_csv(tmp_path):
    csv = tmp_path / "metrics.csv"
    csv.write_text(
        "epoch,step,train_loss_step,train_loss_epoch,val_loss\n"
        "0,10,1.5,,\n0,20,1.2,1.3,\n0,20,,,1.25\n1,30,1.0,1.05,\n1,30,,,1.1\n"
    )
    assert _is_png(plot_loss(csv, tmp_path / "loss.png"))
    bad = tmp_path / "bad.csv"
    bad.write_text("step,acc\n1,0.5\n")
    with pytest.raises(DetlearnError, match="epoch"):
        plot_loss(bad, tmp_path / "x.png")
    with pytest.raises(DetlearnError, match="cannot read"):
        plot_loss(tmp_path / "missing.csv", tmp_path / "x.png")


class _Collector(HTMLParser):
    """Checks that every non-void tag is closed in order; collects img sources and text."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.images: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack.pop() == tag, f"unbalanced </{tag}>"

    def handle_data(self, data):
        self.text.append(data)


def test_write_report_is_self_contained_and_metrics_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    fig = plot_pit(rng.uniform(0, 1, 500), tmp_path / "figs" / "pit.png")
    metrics = {
        "c2st_auc": Score("c2st_auc", 0.52, 0.50, error=0.005),
        "kl_mean": Score("kl_mean", 0.011, None, "nats", 0.001),
        "w1_pass_fraction": 0.9,
        "chi2_ndf": {"value": float("nan"), "baseline": 1.0},
    }
    out = tmp_path / "run"
    report = write_report(
        out, "KLM <timing> & co", metrics, tables=[("per-bin", ROWS)],
        figures=[("PIT histogram", fig)],
        targets={"kl_mean": ("<=", 0.02), "w1_pass_fraction": (">=", 0.95)},
    )  # fmt: skip
    assert report == out / "report.html"
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "report.html"]

    page = report.read_text()
    parser = _Collector()
    parser.feed(page)
    parser.close()
    assert parser.stack == []
    assert page.startswith("<!DOCTYPE html>") and "http" not in page  # no external assets
    text = " ".join(parser.text)
    for name in (*metrics, "per-bin", "PIT histogram", "KLM <timing> & co"):
        assert name in text
    assert "1 / 2 met" in text
    (src,) = parser.images
    assert src.startswith("data:image/png;base64,")
    assert base64.b64decode(src.split(",", 1)[1]) == fig.read_bytes()

    saved = json.loads((out / "metrics.json").read_text())
    assert saved["metrics"] == to_jsonable(metrics)
    assert saved["metrics"]["chi2_ndf"]["value"] is None
    assert saved["checks"]["kl_mean"]["pass"] is True
    assert saved["checks"]["w1_pass_fraction"]["pass"] is False
    assert saved["passed"] is False
    assert saved["tables"] == [{"title": "per-bin", "rows": ROWS}]
    assert saved["figures"] == [{"caption": "PIT histogram", "file": "pit.png"}]


def test_write_report_overwrites_and_rejects_bad_input(tmp_path):
    write_report(tmp_path, "first", {"a": 1.0})
    write_report(tmp_path, "second", {"a": 2.0}, targets={"a": (">", 1.0)})
    assert json.loads((tmp_path / "metrics.json").read_text())["passed"] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "report.html"]
    with pytest.raises(DetlearnError, match="unknown metric 'b'"):
        write_report(tmp_path, "t", {"a": 1.0}, targets={"b": ("<", 1.0)})
    with pytest.raises(DetlearnError, match="operator '=='"):
        write_report(tmp_path, "t", {"a": 1.0}, targets={"a": ("==", 1.0)})
    with pytest.raises(DetlearnError, match="figure not found"):
        write_report(tmp_path, "t", {"a": 1.0}, figures=[("x", tmp_path / "nope.png")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "report.html"]
