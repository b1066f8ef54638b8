"""The report's figures (matplotlib, off-screen), each returned as PNG bytes.

Inputs are plain data (history samples, arrays), never a Redis client: what to draw is
decided in :mod:`streamlearn.reporting.report`.
"""
from __future__ import annotations

import io
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")  # no display: figures are rendered to bytes

import matplotlib.pyplot as plt  # noqa: E402 - after the backend is chosen
import numpy as np  # noqa: E402

__all__ = ["learning_curve", "over_time", "elbow", "scree", "forecasts", "drift", "HIGHLIGHT"]

HIGHLIGHT = "#d62728"
_LINE = "#1f77b4"


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _figure(title: str, xlabel: str, ylabel: str, size: tuple[float, float] = (5.2, 3.0)):
    fig, ax = plt.subplots(figsize=size)
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return fig, ax


def learning_curve(samples: Sequence[dict[str, Any]]) -> bytes | None:
    """The holdout metric against records applied: one line per packed model, the one the
    metric picks at the end highlighted. None without holdout samples."""
    points = [(s["records_applied"], s["holdout"]) for s in samples if s.get("holdout")]
    if not points:
        return None
    metric, selected = points[-1][1]["metric"], points[-1][1]["selected"]
    n_models = len(points[-1][1]["values"])
    x = np.array([p[0] for p in points], dtype=float)
    values = np.array([[np.nan if v is None else v for v in p[1]["values"]] for p in points], dtype=float)
    fig, ax = _figure(f"learning curve: holdout {metric}", "records applied", metric)
    for m in range(n_models):
        if m != selected:
            ax.plot(x, values[:, m], color="#999999", linewidth=0.8, alpha=0.6)
    ax.plot(x, values[:, selected], color=HIGHLIGHT, linewidth=2.4, marker="o", markersize=3,
            label=f"model {selected} (chosen)")
    if n_models > 1:
        ax.plot([], [], color="#999999", linewidth=0.8, label=f"the other {n_models - 1} packed models")
    ax.legend(fontsize=8)
    return _png(fig)


def over_time(samples: Sequence[dict[str, Any]], title: str, ylabel: str,
              series: dict[str, Sequence[float]], step: bool = False) -> bytes | None:
    """Lines against seconds since the first sample. None with fewer than two samples."""
    if len(samples) < 2:
        return None
    t = np.array([s["t"] for s in samples], dtype=float)
    t -= t[0]
    fig, ax = _figure(title, "seconds since the first sample", ylabel)
    for name, ys in series.items():
        ys = np.asarray(ys, dtype=float)
        if step:
            ax.step(t, ys, where="post", label=name)
        else:
            ax.plot(t, ys, label=name)
    if len(series) > 1:
        ax.legend(fontsize=8, ncol=min(4, len(series)))
    ax.set_ylim(bottom=0)
    return _png(fig)


def elbow(ks: Sequence[int], costs: Sequence[float], chosen: int) -> bytes:
    """k-means: the summary's cost (SSE of the weighted summary points) against k."""
    fig, ax = _figure("k-means: SSE against k (solved from the summary)", "k", "SSE")
    ax.plot(ks, costs, marker="o", color=_LINE)
    if chosen in ks:
        ax.plot([chosen], [costs[list(ks).index(chosen)]], marker="o", markersize=10, color=HIGHLIGHT,
                label=f"k = {chosen} (the job's)")
        ax.legend(fontsize=8)
    return _png(fig)


def scree(ratios: Sequence[float]) -> bytes:
    """PCA: explained variance ratio per component, and cumulated."""
    r = np.asarray(ratios, dtype=float)
    idx = np.arange(1, len(r) + 1)
    fig, ax = _figure("PCA: scree plot", "component", "explained variance ratio")
    ax.bar(idx, r, color=_LINE, label="component")
    ax.plot(idx, np.cumsum(r), color=HIGHLIGHT, marker="o", markersize=3, label="cumulative")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    return _png(fig)


def forecasts(panels: Sequence[dict[str, Any]]) -> bytes | None:
    """DeepAR: per series, the actual values (context and held back) and the forecast of the
    held-back part: median and quantile band. Each panel: ``series``, ``context`` (x, y),
    ``actual`` (x, y), ``x``, ``median``, ``low``, ``high``, ``band`` (label)."""
    if not panels:
        return None
    fig, axes = plt.subplots(len(panels), 1, figsize=(6.4, 2.4 * len(panels)), squeeze=False)
    for ax, p in zip(axes[:, 0], panels):
        ax.plot(*p["context"], color="#444444", linewidth=1, label="actual")
        ax.plot(*p["actual"], color="#444444", linewidth=1, linestyle="--", label="actual (held back)")
        ax.fill_between(p["x"], p["low"], p["high"], color=HIGHLIGHT, alpha=0.25, label=p["band"])
        ax.plot(p["x"], p["median"], color=HIGHLIGHT, linewidth=1.6, label="median forecast")
        ax.set_title(f"series {p['series']}", fontsize=10)
        ax.grid(True, alpha=0.3)
    axes[0, 0].legend(fontsize=7, ncol=2)
    axes[-1, 0].set_xlabel("period")
    fig.tight_layout()
    return _png(fig)


def drift(windows: Sequence[int], ks: dict[str, Sequence[float]], drifted: Sequence[int]) -> bytes | None:
    """Each feature's KS distance against the training profile per monitored window; the
    windows that drifted shaded."""
    if not windows or not ks:
        return None
    fig, ax = _figure("drift of the monitored windows", "window", "KS distance to the training profile")
    for w in drifted:
        ax.axvspan(w - 0.5, w + 0.5, color=HIGHLIGHT, alpha=0.12, linewidth=0)
    for name, ys in ks.items():
        ax.plot(windows, ys, marker="o", markersize=3, label=name)
    ax.legend(fontsize=7, ncol=2)
    return _png(fig)
