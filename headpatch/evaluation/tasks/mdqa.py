"""mdqa: multi-document QA in the lost-in-the-middle layout, the planted fact's passage moved through every position."""

from __future__ import annotations

import random
from dataclasses import dataclass
from statistics import fmean
from typing import Any

from headpatch.evaluation.facts import MDQA_FACTS, Fact, keyword_score, mentions_any
from headpatch.evaluation.generation import prompt_ids, question_prompt
from headpatch.evaluation.settings import MdqaSetting
from headpatch.evaluation.tasks.base import Metric, TaskRun, answer_all, require_tokenizer
from headpatch.evaluation.text import context_essays, passages, sentences
from headpatch.loading import LoadedModel

INSTRUCTION = ("Answer the question using only the documents below (some of which are irrelevant), "
               "even where they contradict what you know.")


@dataclass(frozen=True)
class MdqaCase:
    """One prompt: `documents` in order, the one at `position` holding `fact`."""

    fact: Fact
    position: int
    documents: tuple[str, ...]


def plant(passage: str, statement: str, rng: random.Random) -> str:
    """The passage with `statement` inserted between two of its sentences (or at either end)."""
    parts = sentences(passage)
    at = rng.randint(0, len(parts))
    return " ".join(parts[:at] + [statement] + parts[at:])


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


def headline(results: dict[str, dict[str, Any]]) -> list[Metric]:
    """Mean and worst-position accuracy, accuracy per kind of fact, and the memory-answer rate on counterfactuals."""
    rows = [
        Metric("mdqa", "accuracy, mean over positions", {r: v["mean"] for r, v in results.items()}),
        Metric("mdqa", "accuracy, worst position", {r: v["worst_position"] for r, v in results.items()}),
    ]
    for kind in next(iter(results.values()))["by_kind"]:
        rows.append(Metric("mdqa", f"accuracy, {kind} facts", {r: v["by_kind"][kind] for r, v in results.items()}))
    if all(v["memory_rate"] is not None for v in results.values()):
        rows.append(Metric("mdqa", "counterfactuals answered from memory (lower is better)",
                           {r: v["memory_rate"] for r, v in results.items()}, higher_is_better=False))
    return rows
