"""The report's figures: NIAH heatmaps and their difference, MDQA accuracy by position, copy accuracy by length."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure  # the object API needs no display backend and keeps no global state

Figures = list[tuple[str, str]]  # (caption, file name) pairs, in the order the report shows them
_DPI = 120


def _save(figure: Figure, out: Path, name: str) -> str:
    figure.savefig(out / name, dpi=_DPI, bbox_inches="tight")
    return name


def _heatmap(grid: list[list[float]], lengths: list[int], depths: list[float], title: str, difference: bool) -> Figure:
    figure = Figure(figsize=(1.3 * len(lengths) + 2.5, 0.55 * len(depths) + 2))
    axes = figure.subplots()
    low, high, cmap = (-1.0, 1.0, "RdBu") if difference else (0.0, 1.0, "viridis")
    image = axes.imshow(grid, vmin=low, vmax=high, cmap=cmap, aspect="auto")
    axes.set_xticks(range(len(lengths)), [str(n) for n in lengths])
    axes.set_yticks(range(len(depths)), [f"{100 * d:.0f}%" for d in depths])
    axes.set_xlabel("context length (tokens)")
    axes.set_ylabel("needle depth")
    axes.set_title(title)
    for row, values in enumerate(grid):
        for column, value in enumerate(values):
            dark = abs(value) > 0.6 if difference else value < 0.5
            axes.text(column, row, f"{value:+.2f}" if difference else f"{value:.2f}", ha="center", va="center",
                      color="white" if dark else "black", fontsize=9)
    figure.colorbar(image, ax=axes, label="patched − base" if difference else "keyword score")
    return figure


def niah_figures(task: dict[str, Any], out: Path) -> Figures:
    """A heatmap per model and, for two models on the same grid, patched − base."""
    models = task["models"]
    shown = []
    for role, result in models.items():
        figure = _heatmap(result["grid"], result["lengths"], result["depths"], f"needle in a haystack: {role}", False)
        shown.append((f"Needle in a haystack, {role}", _save(figure, out, f"niah_{role}.png")))
    base, patched = models.get("base"), models.get("patched")
    if base and patched and base["lengths"] == patched["lengths"]:
        grid = [[p - b for p, b in zip(prow, brow)] for prow, brow in zip(patched["grid"], base["grid"])]
        figure = _heatmap(grid, base["lengths"], base["depths"], "needle in a haystack: patched − base", True)
        shown.append(("Needle in a haystack, patched − base", _save(figure, out, "niah_difference.png")))
    return shown


def _lines(series: dict[str, tuple[list[Any], list[float]]], title: str, xlabel: str, ylabel: str) -> Figure:
    figure = Figure(figsize=(6, 3.6))
    axes = figure.subplots()
    for role, (xs, ys) in series.items():
        axes.plot(range(len(xs)), ys, marker="o", label=role)
        axes.set_xticks(range(len(xs)), [str(x) for x in xs])
    axes.set_ylim(-0.02, 1.02)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    return figure


def mdqa_figure(task: dict[str, Any], out: Path) -> Figures:
    """Accuracy by the gold passage's position, one line per model."""
    series = {role: (list(range(1, len(r["by_position"]) + 1)), r["by_position"]) for role, r in task["models"].items()}
    figure = _lines(series, "multi-document QA: accuracy by gold position", "position of the gold passage", "accuracy")
    return [("Multi-document QA, accuracy by gold position", _save(figure, out, "mdqa_positions.png"))]


def copy_figure(task: dict[str, Any], out: Path) -> Figures:
    """Copy accuracy by length, one line per model."""
    series = {role: (list(r["accuracy"]), list(r["accuracy"].values())) for role, r in task["models"].items()}
    figure = _lines(series, "proxy copy task: held-out accuracy", "n (random tokens, repeated once)", "accuracy")
    return [("Proxy copy task, accuracy by length", _save(figure, out, "copy_accuracy.png"))]


FIGURES: dict[str, Callable[[dict[str, Any], Path], Figures]] = {
    "copy": copy_figure, "niah": niah_figures, "mdqa": mdqa_figure,
}


def draw_figures(results: dict[str, Any], out: Path) -> Figures:
    """Every figure of the tasks that ran, written into `out`."""
    shown: Figures = []
    for name, task in results["tasks"].items():
        if name in FIGURES and "models" in task:
            shown += FIGURES[name](task, out)
    return shown
