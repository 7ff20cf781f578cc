"""Drawing helpers the tasks' report figures share: a score heatmap, score lines by model, saving a figure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure  # the object API needs no display backend and keeps no global state

_DPI = 120


def save(figure: Figure, out: Path, name: str) -> str:
    """Write `figure` as `out`/`name` and return the file name the report links to."""
    figure.savefig(out / name, dpi=_DPI, bbox_inches="tight")
    return name


def heatmap(grid: list[list[float]], lengths: list[int], depths: list[float], title: str, difference: bool) -> Figure:
    """Keyword scores by needle depth (rows) and context length (columns), each cell labelled; `difference` draws
    patched − base on a diverging scale from −1 to 1 instead of scores from 0 to 1."""
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


def lines(series: dict[str, tuple[list[Any], list[float]]], title: str, xlabel: str, ylabel: str) -> Figure:
    """One line of scores between 0 and 1 per model: `series` maps a role to its x labels and values."""
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
