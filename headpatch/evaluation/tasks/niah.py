"""niah and niah2: an invented fact hidden at a given depth of Paul Graham essays, asked back, answer scored by key
words. The two tasks differ only in their needles (`facts.NEEDLE_SETS`): niah2's were written to replicate niah."""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from statistics import fmean
from typing import Any

from headpatch.evaluation.essay_split import context_essays
from headpatch.evaluation.facts import NEEDLE_SETS, Fact, keyword_score
from headpatch.evaluation.generation import prompt_ids, question_prompt
from headpatch.evaluation.plots import heatmap, save
from headpatch.evaluation.tasks.base import (
    Figures,
    Metric,
    Results,
    Task,
    TaskRun,
    TaskSkipped,
    answer_all,
    item_metric,
    require_tokenizer,
)
from headpatch.loading import LoadedModel
from headpatch.runtime import context_limit

INSTRUCTION = "Answer the question from the document."
_SENTENCE_ENDS = (".", "!", "?")
PROMPT_ROOM = 128  # tokens around the haystack: instruction, the question twice, chat markers (about 90 for SmolLM2)
TITLES = {"niah": "Needle in a haystack", "niah2": "Needle in a haystack, second needle set"}


@dataclass(frozen=True)
class NiahSetting:
    """Needle in a haystack: haystack lengths (tokens) × needle depths (0 = start, 1 = end) × the first `needles` of
    needle set `needle_set`."""

    lengths: tuple[int, ...]
    depths: tuple[float, ...]
    needles: int
    max_new_tokens: int
    batch_tokens: int  # prompts of similar length are answered together, up to this many tokens per batch
    needle_set: int = 1


@dataclass(frozen=True)
class NeedleCase:
    """One prompt of the grid: the haystack of `length` tokens with `needle` at `depth` (reached: `placed_at`)."""

    length: int
    depth: float
    needle: Fact
    context: str
    placed_at: float  # share of haystack tokens before the needle; off `depth` by at most one sentence


def haystack_ids(tokenizer: Any, seed: int) -> list[int]:
    """Token ids of the context essays, joined in a seeded order."""
    essays = list(context_essays().values())
    random.Random(f"headpatch-eval-niah-{seed}").shuffle(essays)
    return list(tokenizer("\n\n".join(essays), add_special_tokens=False)["input_ids"])


def insertion_point(tokenizer: Any, ids: list[int], depth: float) -> int:
    """Where the needle goes: `depth` of the way into `ids`, moved back to the nearest sentence end before it."""
    if depth >= 1.0:
        return len(ids)  # at the very end, as the reference NIAH does; the cut may leave no full sentence there
    at = int(len(ids) * depth)
    while at > 0 and not tokenizer.decode(ids[at - 1:at]).rstrip().endswith(_SENTENCE_ENDS):
        at -= 1
    return at


def place_needle(tokenizer: Any, haystack: list[int], needle: str, length: int, depth: float) -> tuple[str, float]:
    """The haystack cut to `length` tokens with the needle, the needle at `depth`: the text and the depth reached."""
    needle_tokens = len(tokenizer(" " + needle, add_special_tokens=False)["input_ids"])
    if length - needle_tokens > len(haystack):
        raise TaskSkipped(f"the essays hold {len(haystack)} tokens, fewer than a haystack of {length}")
    ids = haystack[: length - needle_tokens]
    at = insertion_point(tokenizer, ids, depth)
    before, after = tokenizer.decode(ids[:at]).rstrip(), tokenizer.decode(ids[at:]).lstrip()
    return " ".join(part for part in (before, needle, after) if part), at / len(ids)


def usable_lengths(setting: NiahSetting, model: Any) -> list[int]:
    """The setting's lengths whose prompts and answers fit the model's context."""
    limit = context_limit(model.config)
    return [n for n in setting.lengths if limit is None or n + PROMPT_ROOM + setting.max_new_tokens <= limit]


def cases(tokenizer: Any, setting: NiahSetting, lengths: list[int], seed: int) -> list[NeedleCase]:
    """Every (length, depth, needle) prompt of the grid."""
    haystack = haystack_ids(tokenizer, seed)
    grid = []
    for length in lengths:
        for depth in setting.depths:
            for needle in NEEDLE_SETS[setting.needle_set][: setting.needles]:
                context, placed_at = place_needle(tokenizer, haystack, needle.statement, length, depth)
                grid.append(NeedleCase(length, depth, needle, context, placed_at))
    return grid


def content(case: NeedleCase) -> str:
    """The user turn asking the needle's question about its haystack."""
    return question_prompt(INSTRUCTION, f"Document:\n{case.context}", case.needle.question)


def evaluate(loaded: LoadedModel, setting: NiahSetting, run: TaskRun, task: str = "niah") -> dict[str, Any]:
    """Keyword score per (depth, length) cell, the mean over needles; every answer kept."""
    tokenizer = require_tokenizer(loaded, task)
    lengths = usable_lengths(setting, loaded.model)
    if not lengths:
        raise TaskSkipped(f"no haystack length of {list(setting.lengths)} fits the model's context")
    grid_cases = cases(tokenizer, setting, lengths, run.seed)
    prompts = [prompt_ids(tokenizer, content(case)) for case in grid_cases]
    replies = answer_all(loaded, tokenizer, prompts, setting, run, task)
    answers = [
        {"length": case.length, "depth": case.depth, "placed_at": round(case.placed_at, 4),
         "question": case.needle.question, "answer": answer, "score": keyword_score(answer, case.needle.keys),
         "prompt_tokens": len(prompt)}
        for case, prompt, answer in zip(grid_cases, prompts, replies)
    ]
    grid = [[fmean([a["score"] for a in answers if a["length"] == n and a["depth"] == d]) for n in lengths]
            for d in setting.depths]
    return {"lengths": lengths, "lengths_too_long": [n for n in setting.lengths if n not in lengths],
            "depths": list(setting.depths), "grid": grid,
            "mean": fmean([a["score"] for a in answers]), "answers": answers}


def headline(results: Results, task: str = "niah") -> list[Metric]:
    """The mean keyword score over the grid and at the longest length, over the answers (length × depth × needle)."""
    length = next(iter(results.values()))["lengths"][-1]
    return [
        item_metric(task, "keyword score, mean over the grid", results, lambda r: [a["score"] for a in r["answers"]]),
        item_metric(task, f"keyword score at {length} tokens", results,
                    lambda r: [a["score"] for a in r["answers"] if a["length"] == length]),
    ]


def figures(results: Results, out: Path, task: str = "niah") -> Figures:
    """A heatmap per model and, for two models on the same grid, patched − base."""
    shown = []
    for role, result in results.items():
        figure = heatmap(result["grid"], result["lengths"], result["depths"], f"{task}: {role}", False)
        shown.append((f"{TITLES[task]}, {role}", save(figure, out, f"{task}_{role}.png")))
    base, patched = results.get("base"), results.get("patched")
    if base and patched and base["lengths"] == patched["lengths"]:
        grid = [[p - b for p, b in zip(prow, brow)] for prow, brow in zip(patched["grid"], base["grid"])]
        figure = heatmap(grid, base["lengths"], base["depths"], f"{task}: patched − base", True)
        shown.append((f"{TITLES[task]}, patched − base", save(figure, out, f"{task}_difference.png")))
    return shown


def _task(name: str, needle_set: int) -> Task[NiahSetting]:
    return Task(
        name=name, title=TITLES[name],
        quick=NiahSetting(lengths=(256, 1024), depths=(0.0, 0.5, 1.0), needles=4, max_new_tokens=32,
                          batch_tokens=4096, needle_set=needle_set),
        # 4 lengths × 5 depths × 15 needles = 300 paired answers, sized as mdqa's
        full=NiahSetting(lengths=(512, 1024, 2048, 4096), depths=(0.0, 0.25, 0.5, 0.75, 1.0), needles=15,
                         max_new_tokens=32, batch_tokens=4096, needle_set=needle_set),
        run=partial(evaluate, task=name), headline=partial(headline, task=name), figures=partial(figures, task=name),
        default=needle_set == 1,  # niah2 replicates niah: asked for by name, so a default report's cost is unchanged
    )


TASK = _task("niah", 1)
TASK_2 = _task("niah2", 2)
