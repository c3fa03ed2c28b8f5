"""Plots of a search, as PNG files: plain data in, one file out, no Trainer, no W&B.

Every function takes what the search already writes as JSON (``search_history.json``, the rows
of ``scored.json``, ``best_arch.json``, ``metrics.csv`` rows) and writes one PNG, so the same
pictures can be drawn during a run (by ``callbacks.tracking.SearchTrackingCallback``), from a
finished run directory (by ``lightning_metanas.report``), or in a test.

A *row* is a dict with at least ``arch`` ({"ops": [...], "widths": [...]}) and ``score``, and
optionally ``predicted`` (the predictor's estimate, or None), ``params`` and ``flops``: a row
of ``scored.json`` (``search_files.py``).

Figures are built with ``matplotlib.figure.Figure`` and the Agg canvas directly, never pyplot:
nothing global (backend, current figure) changes, and nothing needs a display.

Why one module of ~320 lines: every figure of the search shares the figure helpers and the
file names the report and the trackers look up.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
from matplotlib.ticker import EngFormatter, MaxNLocator, NullFormatter

from lightning_metanas.metrics import kendall_tau
from lightning_metanas.search_space import Architecture

# File names, shared by the tracking callback and the report.
SEARCH_CURVE = "search_curve.png"
PREDICTED_VS_MEASURED = "predicted_vs_measured.png"
ACCURACY_VS_SIZE = "accuracy_vs_{size}.png"  # size: params or flops
BEST_ARCH_PNG = "best_arch.png"
TRAINING_CURVES = "training_curves.png"

_OP_COLOURS = {
    "conv": "#4C72B0",
    "sep_conv": "#55A868",
    "dil_conv": "#8172B2",
    "max_pool": "#C44E52",
    "avg_pool": "#DD8452",
    "skip": "#937860",
}


def _figure(width: float = 6.4, height: float = 4.2) -> Figure:
    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", bbox_inches="tight")
    return path


def _empty(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def input_shape(image_size: Optional[int], channels: Optional[int] = None) -> Optional[str]:
    """How the architecture drawing labels its input: ``1x28x28`` (``28x28`` when the channel
    count is unknown; None when the size is)."""
    if not image_size:
        return None
    return f"{channels}x{image_size}x{image_size}" if channels else f"{image_size}x{image_size}"


# -- small computations (also used by the report and the tracking) --------------------------
def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points (size, score) that no other point beats: none is at most as
    large and strictly better, or strictly smaller and at least as good. Smaller size and
    higher score are better. Sorted by size."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front: list[int] = []
    best = -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def predicted_pairs(rows: Iterable[Mapping[str, Any]]) -> list[tuple[float, float]]:
    """(predicted, measured) of every row the predictor made a prediction for."""
    return [
        (float(r["predicted"]), float(r["score"]))
        for r in rows
        if r.get("predicted") is not None and r.get("score") is not None
    ]


# -- plots ----------------------------------------------------------------------------------
def plot_search_curve(history: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Best and mean population score per generation (from ``search_history.json``), with the
    predictor's rank correlation on a second axis when it has one."""
    fig = _figure()
    ax = fig.add_subplot()
    if not history:
        _empty(ax, "no generation yet")
    else:
        gens = [h["generation"] for h in history]
        ax.plot(gens, [h["best_score"] for h in history], "o-", color="#4C72B0", label="best score")
        ax.plot(gens, [h["mean_score"] for h in history], "s--", color="#DD8452", label="mean score")
        accuracies = [(h["generation"], h["best_accuracy"]) for h in history if h.get("best_accuracy") is not None]
        if accuracies:
            ax.plot(*zip(*accuracies), "d:", color="#55A868", label="best's query accuracy")
        ax.set_xlabel("generation")
        ax.set_ylabel("score (query accuracy x size prior)")
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        taus = [(h["generation"], h["predictor_tau"]) for h in history if h.get("predictor_tau") is not None]
        if taus:
            ax2 = ax.twinx()
            ax2.plot(*zip(*taus), "^:", color="0.45", label="predictor Kendall tau")
            ax2.set_ylabel("predictor Kendall tau")
            ax2.set_ylim(-1.05, 1.05)
            h2, l2 = ax2.get_legend_handles_labels()
            handles, labels = handles + h2, labels + l2
        ax.legend(handles, labels, loc="best", fontsize="small", framealpha=0.7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("Search curve")
    return _save(fig, path)


def plot_predicted_vs_measured(rows: Iterable[Mapping[str, Any]], path: str | Path) -> Path:
    """The predictor's estimate of each architecture it screened against the score it then
    measured, with the diagonal and Kendall's tau."""
    pairs = predicted_pairs(rows)
    fig = _figure()
    ax = fig.add_subplot()
    if not pairs:
        _empty(ax, "no predictions yet\n(the predictor starts once the archive is large enough)")
        ax.set_title("Predictor: predicted vs measured")
        return _save(fig, path)
    xs, ys = zip(*pairs)
    ax.scatter(xs, ys, s=28, color="#4C72B0", alpha=0.8, edgecolor="white", linewidth=0.5)
    lo, hi = min(xs + ys), max(xs + ys)
    pad = 0.05 * (hi - lo or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "--", color="0.5", linewidth=1, label="y = x")
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlabel("predicted score")
    ax.set_ylabel("measured score")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize="small")
    tau = kendall_tau(xs, ys)
    title = f"Predictor: predicted vs measured (n={len(pairs)}"
    ax.set_title(title + (f", tau={tau:.2f})" if tau is not None else ")"))
    return _save(fig, path)


def plot_accuracy_vs_size(
    rows: Sequence[Mapping[str, Any]],
    path: str | Path,
    size: str = "params",
    best: Optional[Mapping[str, Sequence]] = None,
) -> Path:
    """Score against size (``params`` or ``flops``) of every architecture scored, the Pareto
    front (smaller and better) highlighted, the population and the best architecture marked."""
    fig = _figure()
    ax = fig.add_subplot()
    rows = [r for r in rows if r.get(size) is not None and r.get("score") is not None]
    if not rows:
        _empty(ax, "nothing scored yet")
        ax.set_title(f"Accuracy vs {size}")
        return _save(fig, path)
    points = [(float(r[size]), float(r["score"])) for r in rows]
    in_pop = [bool(r.get("in_population")) for r in rows]
    others = [p for p, flag in zip(points, in_pop) if not flag]
    members = [p for p, flag in zip(points, in_pop) if flag]
    if others:
        ax.scatter(*zip(*others), s=22, color="0.65", alpha=0.8, label="archive")
    if members:
        ax.scatter(*zip(*members), s=30, color="#4C72B0", alpha=0.9, label="population")
    front = [points[i] for i in pareto_front(points)]
    ax.step(*zip(*front), where="post", color="#C44E52", linewidth=1.4, alpha=0.8)
    ax.scatter(*zip(*front), s=60, facecolor="none", edgecolor="#C44E52", linewidth=1.5,
               label=f"Pareto front ({len(front)})")
    if best is not None:
        for r, p in zip(rows, points):
            if Architecture.of(r["arch"]) == Architecture.of(best):
                ax.scatter([p[0]], [p[1]], marker="*", s=220, color="#FFB000", edgecolor="black",
                           linewidth=0.6, zorder=5, label="best")
                break
    sizes = [p[0] for p in points]
    if min(sizes) > 0 and max(sizes) / min(sizes) > 20:
        ax.set_xscale("log")
    # 2.5M, not 2500000: long tick labels ran into each other on the FLOPs axis
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel({"params": "parameters", "flops": "multiply-accumulates per image"}.get(size, size))
    ax.set_ylabel("score")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small", framealpha=0.7)
    ax.set_title(f"Accuracy vs {size} ({len(points)} architectures)")
    return _save(fig, path)


def _op_colour(op: str) -> str:
    for prefix in sorted(_OP_COLOURS, key=len, reverse=True):
        if op.startswith(prefix):
            return _OP_COLOURS[prefix]
    return "#64B5CD"


def plot_architecture(
    arch: Mapping[str, Sequence],
    path: str | Path,
    title: Optional[str] = None,
    ways: Optional[int] = None,
    input_shape: Optional[str] = None,
) -> Path:
    """One box per layer (operation and channel width; the box's height grows with the width),
    between the input and the classification head, left to right."""
    ops, widths = list(arch["ops"]), list(arch["widths"])
    n = len(ops)
    fig = _figure(max(6.0, 1.75 * (n + 2)), 2.8)
    ax = fig.add_axes((0, 0, 1, 0.86 if title else 1))
    ax.set_xlim(0, n + 2)
    ax.set_ylim(0, 1)
    ax.axis("off")
    widest = max(widths) if widths else 1
    boxes = [("input", input_shape or "", "#BBBBBB", 0.5)]
    boxes += [(op, f"{w} ch", _op_colour(op), 0.35 + 0.45 * w / widest) for op, w in zip(ops, widths)]
    boxes.append(("head", f"linear, {ways}-way" if ways else "linear", "#BBBBBB", 0.5))
    for i, (name, detail, colour, height) in enumerate(boxes):
        x, y = i + 0.12, 0.5 - height / 2
        ax.add_patch(FancyBboxPatch((x, y), 0.76, height, boxstyle="round,pad=0.02,rounding_size=0.06",
                                    facecolor=colour, edgecolor="black", linewidth=0.8, alpha=0.9))
        text = "white" if colour != "#BBBBBB" else "black"
        ax.text(i + 0.5, 0.5 + (0.06 if detail else 0), name, ha="center", va="center",
                fontsize=9, color=text, weight="bold")
        if detail:
            ax.text(i + 0.5, 0.44, detail, ha="center", va="center", fontsize=8, color=text)
        if 0 < i <= n:
            ax.text(i + 0.5, y - 0.07, f"layer {i}", ha="center", va="center", fontsize=7, color="0.35")
        if i > 0:
            ax.add_patch(FancyArrowPatch((i - 0.12, 0.5), (i + 0.12, 0.5), arrowstyle="-|>",
                                         mutation_scale=12, color="black", linewidth=1))
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_training_curves(rows: Sequence[Mapping[str, str]], path: str | Path) -> Path:
    """Training loss/accuracy and validation accuracy per epoch, from ``metrics.csv`` rows
    (CSVLogger: one row per logging step, empty cells where a metric was not logged)."""

    def series(key: str) -> tuple[list[float], list[float]]:
        xs, ys = [], []
        for r in rows:
            value = r.get(key)
            if value not in (None, ""):
                x = r.get("step") or r.get("epoch") or len(xs)
                xs.append(float(x))
                ys.append(float(value))
        return xs, ys

    fig = _figure(9.0, 3.6)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    drawn = False
    for key, ax, style in (("train/loss", left, "-"), ("train/acc", right, "-"), ("val/acc", right, "o-")):
        xs, ys = series(key)
        for suffix in ("_step", "_epoch"):  # names Lightning uses when both are logged
            if not xs:
                xs, ys = series(key + suffix)
        if xs:
            ax.plot(xs, ys, style, label=key, alpha=0.85, markersize=4)
            drawn = True
    # the search's phases, from its own rows: warm-up until the first generation, the search,
    # then (when generations stopped before the run) the best architecture trained alone
    generations = [float(r["step"]) for r in rows if r.get("search/generation") not in (None, "") and r.get("step")]
    last = max((float(r["step"]) for r in rows if r.get("step")), default=0.0)
    for ax in (left, right) if drawn and generations else ():
        start, end = min(generations), max(generations)
        if start > 0:
            ax.axvspan(0, start, color="0.9", zorder=0, label="warm-up")
        ax.axvline(start, color="#C44E52", linestyle="--", linewidth=1, label="search")
        if end < last:
            ax.axvline(end, color="#55A868", linestyle=":", linewidth=1.5, label="best alone")
    for ax, label in ((left, "meta-train loss"), (right, "accuracy")):
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    if not drawn:
        _empty(left, "no metrics logged")
    fig.suptitle("Meta-training")
    return _save(fig, path)


def write_search_plots(
    directory: str | Path,
    history: Sequence[Mapping[str, Any]],
    rows: Sequence[Mapping[str, Any]],
    best: Optional[Mapping[str, Sequence]] = None,
    ways: Optional[int] = None,
    input_shape: Optional[str] = None,
    sizes: Sequence[str] = ("params", "flops"),
) -> dict[str, Path]:
    """Every search plot into ``directory``; returns name -> path (names: ``search_curve``,
    ``predicted_vs_measured``, ``accuracy_vs_params``, ``accuracy_vs_flops``, ``best_arch``)."""
    directory = Path(directory)
    out = {
        "search_curve": plot_search_curve(history, directory / SEARCH_CURVE),
        "predicted_vs_measured": plot_predicted_vs_measured(rows, directory / PREDICTED_VS_MEASURED),
    }
    for size in sizes:
        out[f"accuracy_vs_{size}"] = plot_accuracy_vs_size(
            rows, directory / ACCURACY_VS_SIZE.format(size=size), size=size, best=best
        )
    if best is not None:
        score = next((r["score"] for r in rows if Architecture.of(r["arch"]) == Architecture.of(best)), None)
        title = "Best architecture" + (f" (score {score:.3f})" if score is not None else "")
        out["best_arch"] = plot_architecture(best, directory / BEST_ARCH_PNG, title=title, ways=ways,
                                             input_shape=input_shape)
    return out
