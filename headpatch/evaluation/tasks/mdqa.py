"""mdqa: multi-document QA in the lost-in-the-middle layout, the planted fact's passage moved through every position."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean
from typing import Any

from headpatch.essays import passages, plant
from headpatch.evaluation.essay_split import context_essays
from headpatch.evaluation.facts import MDQA_FACTS, Fact, keyword_score, mentions_any
from headpatch.evaluation.generation import prompt_ids, question_prompt
from headpatch.evaluation.plots import lines, save
from headpatch.evaluation.tasks.base import (
    Figures,
    Metric,
    Results,
    Task,
    TaskRun,
    answer_all,
    item_metric,
    require_tokenizer,
)
from headpatch.loading import LoadedModel

INSTRUCTION = ("Answer the question using only the documents below (some of which are irrelevant), "
               "even where they contradict what you know.")


@dataclass(frozen=True)
class MdqaSetting:
    """Lost in the middle: `passages` essay chunks of about `passage_words` words, the first `facts` planted facts."""

    passages: int
    passage_words: int
    facts: int
    max_new_tokens: int
    batch_tokens: int  # prompts of similar length are answered together, up to this many tokens per batch


@dataclass(frozen=True)
class MdqaCase:
    """One prompt: `documents` in order, the one at `position` holding `fact`."""

    fact: Fact
    position: int
    documents: tuple[str, ...]


def cases(setting: MdqaSetting, seed: int) -> list[MdqaCase]:
    """For each fact, one gold passage and fixed distractors; the gold passage takes every position in turn."""
    pool = passages(list(context_essays().values()), setting.passage_words)
    rng = random.Random(f"headpatch-eval-mdqa-{seed}")
    result = []
    for fact in MDQA_FACTS[: setting.facts]:
        gold, *distractors = rng.sample(pool, setting.passages)
        gold = plant(gold, fact.statement, rng)
        for position in range(setting.passages):
            documents = (*distractors[:position], gold, *distractors[position:])
            result.append(MdqaCase(fact, position, documents))
    return result


def content(case: MdqaCase) -> str:
    """The user turn: the question, the numbered documents, the question again."""
    documents = "\n\n".join(f"Document [{i + 1}] {text}" for i, text in enumerate(case.documents))
    return question_prompt(INSTRUCTION, documents, case.fact.question)


def evaluate(loaded: LoadedModel, setting: MdqaSetting, run: TaskRun) -> dict[str, Any]:
    """Accuracy per gold position (mean over facts), per kind of fact, and how often a counterfactual got the
    common-knowledge answer instead of the document's."""
    tokenizer = require_tokenizer(loaded, "mdqa")
    all_cases = cases(setting, run.seed)
    prompts = [prompt_ids(tokenizer, content(case)) for case in all_cases]
    replies = answer_all(loaded, tokenizer, prompts, setting, run, "mdqa")
    answers = [
        {"position": case.position, "kind": case.fact.kind, "question": case.fact.question, "answer": answer,
         "correct": keyword_score(answer, case.fact.keys),
         "memory": mentions_any(answer, case.fact.memory) if case.fact.memory else None,
         "prompt_tokens": len(prompt)}
        for case, prompt, answer in zip(all_cases, prompts, replies)
    ]
    by_position = [fmean([a["correct"] for a in answers if a["position"] == p]) for p in range(setting.passages)]
    kinds = sorted({a["kind"] for a in answers})
    counterfactual = [a for a in answers if a["memory"] is not None]
    return {
        "by_position": by_position,
        "by_kind": {kind: fmean([a["correct"] for a in answers if a["kind"] == kind]) for kind in kinds},
        "mean": fmean(by_position),
        "worst_position": min(by_position),
        "memory_rate": fmean([float(a["memory"]) for a in counterfactual]) if counterfactual else None,
        "answers": answers,
    }


def headline(results: Results) -> list[Metric]:
    """Mean and worst-position accuracy, accuracy per kind of fact, and the memory-answer rate on counterfactuals;
    every row but the worst position over the answers themselves (fact × position items)."""
    rows = [
        item_metric("mdqa", "accuracy, mean over positions", results, lambda r: [a["correct"] for a in r["answers"]]),
        Metric("mdqa", "accuracy, worst position", {r: v["worst_position"] for r, v in results.items()}),
    ]
    for kind in next(iter(results.values()))["by_kind"]:
        rows.append(item_metric("mdqa", f"accuracy, {kind} facts", results,
                                lambda r, kind=kind: [a["correct"] for a in r["answers"] if a["kind"] == kind]))
    if all(v["memory_rate"] is not None for v in results.values()):
        rows.append(item_metric("mdqa", "counterfactuals answered from memory (lower is better)", results,
                                lambda r: [a["memory"] for a in r["answers"] if a["memory"] is not None],
                                higher_is_better=False))
    return rows


def figures(results: Results, out: Path) -> Figures:
    """Accuracy by the gold passage's position, one line per model."""
    series = {role: (list(range(1, len(r["by_position"]) + 1)), r["by_position"]) for role, r in results.items()}
    figure = lines(series, "multi-document QA: accuracy by gold position", "position of the gold passage", "accuracy")
    return [("Multi-document QA, accuracy by gold position", save(figure, out, "mdqa_positions.png"))]


TASK = Task(
    name="mdqa", title="Multi-document QA (lost in the middle)",
    quick=MdqaSetting(passages=5, passage_words=70, facts=4, max_new_tokens=32, batch_tokens=4096),
    # 30 facts × 10 positions = 300 paired answers: a 5-point change is detectable (80% power) while up to about
    # 9% of the answers differ between the models (see headpatch.stats)
    full=MdqaSetting(passages=10, passage_words=70, facts=30, max_new_tokens=32, batch_tokens=8192),
    run=evaluate, headline=headline, figures=figures,
)
