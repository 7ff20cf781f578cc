"""The report directory: results.json (every number), report.md (a table at a glance, the figures) and the PNGs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from headpatch.evaluation.registry import TASKS
from headpatch.evaluation.tasks.base import Figures
from headpatch.io.atomic import check_output_dir, staged_output

RESULTS = "results.json"  # every report holds it: --overwrite replaces only a directory that does


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _signed(value: float, relative: bool) -> str:
    return f"{100 * value:+.2f}%" if relative else f"{value:+.3f}"


def _change(row: dict[str, Any]) -> str:
    change = row.get("change")
    if change is None:
        return "–"
    paired, relative = row.get("paired"), row["relative"]
    interval = f" [{_signed(paired['low'], relative)}, {_signed(paired['high'], relative)}]" if paired else ""
    return _signed(change, relative) + interval


def _evidence(row: dict[str, Any]) -> list[str]:
    """Items, better/worse counts, the exact test, the detectable change and the verdict of a paired row."""
    paired = row.get("paired")
    if paired is None:
        return ["–"] * 4
    detectable = "–" if paired["detectable"] is None else _signed(paired["detectable"], row["relative"]).lstrip("+")
    return [f"{paired['items']} ({paired['better']}↑ {paired['worse']}↓)", f"{paired['p_value']:.3g}", detectable,
            paired["verdict"]]


def _table(results: dict[str, Any]) -> str:
    roles = list(results["models"])
    compared = len(roles) > 1
    extra = ["change [95% CI]", "items (better↑ worse↓)", "p", "detectable", "verdict"] if compared else []
    header = ["task", "metric", *roles, *extra]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in results["summary"]:
        cells = [row["task"], row["metric"], *(_number(row["values"].get(role)) for role in roles)]
        lines.append("| " + " | ".join(cells + ([_change(row), *_evidence(row)] if compared else [])) + " |")
    return "\n".join(lines)


STATISTICS_NOTE = (
    "Every change is patched − base on the same items (perplexity: relative). The interval is a 95% percentile "
    "bootstrap over items (10,000 resamples); p is the exact two-sided sign test over the items whose outcome differs "
    "(McNemar's exact test for right/wrong answers); *detectable* is the change these items would detect with 80% "
    "power at α = 0.05, from the spread of the per-item differences. A verdict other than \"no clear change\" means "
    "the interval excludes zero and p < 0.05; the worst-position row is a minimum over positions and has no interval."
)


def _skipped(results: dict[str, Any]) -> list[str]:
    return [f"{name} skipped: {task['skipped']}" for name, task in results["tasks"].items() if "skipped" in task]


def _setting_line(results: dict[str, Any]) -> str:
    run = results["run"]
    setting = "quick" if run["quick"] else "full"
    replaced = f" (own settings for {', '.join(run['settings_replaced'])})" if run["settings_replaced"] else ""
    return f"{setting} setting{replaced}, seed {run['seed']}, {run['dtype']} on {run['device']}"


def _models_line(results: dict[str, Any]) -> str:
    return "; ".join(f"{role} `{m['name']}`" for role, m in results["models"].items())


def summary_markdown(results: dict[str, Any]) -> str:
    """The headline table with one line on what was compared and how to read it, for a model card."""
    notes = " ".join(f"{line}." for line in _skipped(results))
    statistics = f" {STATISTICS_NOTE}" if len(results["models"]) > 1 else ""
    footer = f"`headpatch eval`, {_setting_line(results)}: {_models_line(results)}.{statistics} {notes}".rstrip()
    return f"{_table(results)}\n\n{footer}\n"


def _model_lines(results: dict[str, Any]) -> list[str]:
    lines = []
    for role, model in results["models"].items():
        digest = model["weights"]["sha256"]
        template = "yes" if model["chat_template"] else "no"
        lines.append(f"- **{role}**: `{model['name']}` ({model['location']}), weights sha256 "
                     f"`{digest[:16] if digest else 'unknown'}`, chat template: {template}")
    for note in results["comparison"]["notes"]:
        lines.append(f"- note: {note}")
    return lines


def report_markdown(results: dict[str, Any], figures: Figures) -> str:
    """The whole report.md: what was compared, the table, the figures, each task's setting and the time taken."""
    versions = ", ".join(f"{name} {version}" for name, version in results["versions"].items())
    parts = [
        "# headpatch evaluation", "",
        f"{_setting_line(results)}; {versions}.", "",
        *_model_lines(results), "",
        _table(results), "",
        *[f"- {line}" for line in _skipped(results)], *([""] if _skipped(results) else []),
        STATISTICS_NOTE + " Every number, answer and setting is in `results.json`.", "",
    ]
    for caption, name in figures:
        parts += [f"![{caption}]({name})", ""]
    parts += ["## Settings", ""]
    for name, task in results["tasks"].items():
        setting = ", ".join(f"{key} {json.dumps(value)}" for key, value in task["setting"].items())
        seconds = ", ".join(f"{role} {s:.0f} s" for role, s in results["seconds"]["tasks"].get(name, {}).items())
        parts.append(f"- **{TASKS[name].title}** ({name}): {setting}" + (f"; {seconds}" if seconds else ""))
    parts += ["", f"Total wall time {results['seconds']['total']:.0f} s.", ""]
    return "\n".join(parts)


def draw_figures(results: dict[str, Any], out: Path) -> Figures:
    """Every figure of the tasks that ran (and were not skipped), written into `out`."""
    shown: Figures = []
    for name, task in results["tasks"].items():
        draw = TASKS[name].figures
        if draw is not None and "models" in task:
            shown += draw(task["models"], out)
    return shown


def write_report(results: dict[str, Any], out_dir: str | Path, overwrite: bool = False) -> Path:
    """Write results.json, report.md and the figures into `out_dir` atomically; refuse a non-empty one unless
    `overwrite` and it holds an earlier report."""
    out = Path(out_dir).resolve()
    check_output_dir(out, overwrite, marker=RESULTS)
    with staged_output(out, overwrite, marker=RESULTS) as staging:
        (staging / RESULTS).write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        figures = draw_figures(results, staging)
        (staging / "report.md").write_text(report_markdown(results, figures), encoding="utf-8")
    return out
