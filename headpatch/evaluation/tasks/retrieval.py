"""retrieval: Recall@1 and MRR of a checkpoint's QR heads on held-out built-in examples and on the paraphrase set."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from headpatch.evaluation.tasks.base import Metric, Results, Task, TaskRun, TaskSkipped, item_metric, require_tokenizer
from headpatch.loading import LoadedModel
from headpatch.qrhead.builtin import builtin_examples
from headpatch.qrhead.data import Example
from headpatch.qrhead.evaluate import recall_at_k, reciprocal_rank, summarize
from headpatch.qrhead.paraphrase import paraphrase_examples
from headpatch.qrhead.retriever import QRRetriever, shipped_qr_heads


@dataclass(frozen=True)
class RetrievalSetting:
    """QR-head reranking of `examples` held-out built-in examples of `docs` passages each, and of the first
    `paraphrase` examples of the paraphrase set (10 passages each; 0 leaves it out)."""

    examples: int
    docs: int
    batch_size: int
    paraphrase: int = 0


# The two sets, as the report names them: the built-in eval split, whose questions repeat a word of the gold
# passage, and the paraphrase set, whose questions share none.
BUILTIN, PARAPHRASE = "built-in set", "paraphrase set"


def heads_for(run: TaskRun) -> tuple[list[str], str]:
    """The heads to score with and the role whose config holds them: the model's own, else another model's of the
    run, so that a base without QR heads is measured with the heads its patched checkpoint ships."""
    for role in (run.role, *[r for r in run.models if r != run.role]):
        heads = list(shipped_qr_heads(run.models[role].model.config))
        if heads:
            return heads, role
    raise TaskSkipped("no model of the run has QR heads in config.json (headpatch.qrhead.heads); "
                      "export with --qrhead-data to add them")


def _ranked(retriever: QRRetriever, examples: list[Example], setting: RetrievalSetting,
            run: TaskRun) -> dict[str, Any]:
    scores = retriever.score_many([e.question for e in examples], [e.documents for e in examples],
                                  setting.batch_size, run.show_progress)
    golds = [e.gold_positions() for e in examples]
    metrics = summarize(scores, golds)
    return {"recall@1": metrics["recall@1"], "mrr": metrics["mrr"],
            "chance_recall@1": sum(1 / len(e.documents) for e in examples) / len(examples),
            "per_example": {"recall@1": [recall_at_k(s, g, 1) for s, g in zip(scores, golds)],
                            "reciprocal_rank": [reciprocal_rank(s, g) for s, g in zip(scores, golds)]}}


def evaluate(loaded: LoadedModel, setting: RetrievalSetting, run: TaskRun) -> dict[str, Any]:
    """Recall@1 and MRR on the built-in eval split (essays and projects detection never saw) and on the paraphrase
    set."""
    heads, origin = heads_for(run)
    tokenizer = require_tokenizer(loaded, "retrieval")
    retriever = QRRetriever(loaded.model, tokenizer, heads, truncate=True)
    sets = {BUILTIN: _ranked(retriever, builtin_examples(setting.examples, setting.docs, "eval", run.seed),
                             setting, run)}
    if setting.paraphrase:
        sets[PARAPHRASE] = _ranked(retriever, paraphrase_examples(setting.paraphrase), setting, run)
    return {"heads": heads, "heads_from": origin, "sets": sets}


def headline(results: Results) -> list[Metric]:
    """Recall@1 and MRR on each set, over its examples."""
    rows = []
    for name in next(iter(results.values()))["sets"]:
        rows += [item_metric("retrieval", f"QR heads Recall@1, {name}", results,
                             lambda r, name=name: r["sets"][name]["per_example"]["recall@1"]),
                 item_metric("retrieval", f"QR heads MRR, {name}", results,
                             lambda r, name=name: r["sets"][name]["per_example"]["reciprocal_rank"])]
    return rows


TASK = Task(
    name="retrieval", title="QR-head retrieval",
    quick=RetrievalSetting(examples=8, docs=5, batch_size=4, paraphrase=10),
    full=RetrievalSetting(examples=48, docs=10, batch_size=4, paraphrase=60),
    run=evaluate, headline=headline,
)
