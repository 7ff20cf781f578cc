"""QRHead figures on a demo model (SmolLM2-135M unless --model): Recall@1 and MRR of QR heads, all heads, random heads and BM25, and head overlap.

    python bench/qrhead_eval.py            # 64 detection examples, 100 held-out evaluation examples, 10 docs each
    python bench/qrhead_eval.py --eval-set paraphrase   # evaluated on the 60 paraphrase-set questions instead
    python bench/qrhead_eval.py --quick    # a small run
    python bench/qrhead_eval.py --model gemma3-270m --eval-set paraphrase

Heads are detected on the built-in detect split; evaluation uses the eval split (other essays, other project names),
never seen in detection, or the paraphrase set (headpatch/qrhead/paraphrase.py: questions sharing no content word with
their gold passage). Every figure comes with its 95% bootstrap interval over the evaluation examples, and QR heads are
compared with each other method on the same examples (paired interval and exact sign test). Every head set is scored
from one all-heads capture per example: summing the chosen heads' calibrated token scores, then outlier-masking per
document, is exactly what QRRetriever computes for that head set.
BM25 (package bm25s, English stop words) ranks the same title + text of each candidate set.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from headpatch.stats import mean_interval, paired_change  # noqa: E402
from headpatch.heads import Head, format_head  # noqa: E402
from headpatch.loading import load_model  # noqa: E402
from headpatch.qrhead.builtin import builtin_examples  # noqa: E402
from headpatch.qrhead.data import Example  # noqa: E402
from headpatch.qrhead.detect import DetectionResult, all_heads, detect_heads  # noqa: E402
from headpatch.qrhead.evaluate import recall_at_k, summarize  # noqa: E402
from headpatch.qrhead.paraphrase import paraphrase_examples  # noqa: E402
from headpatch.qrhead.prompt import prompt_pair  # noqa: E402
from headpatch.qrhead.scoring import calibrated_token_scores, head_set_scores  # noqa: E402


def combined(first: DetectionResult, second: DetectionResult) -> DetectionResult:
    """Detection over both example sets: their per-head means weighted by example counts."""
    examples = first.examples + second.examples
    scores = (first.scores * first.examples + second.scores * second.examples) / examples
    return DetectionResult(scores, examples, first.seconds + second.seconds)


def bm25_scores(example: Example) -> list[float]:
    """BM25 score of each candidate document (title and text) for the example's question."""
    import bm25s

    corpus = [f"{doc.title or ''}\n{doc.text}" for doc in example.documents]
    index = bm25s.BM25()
    index.index(bm25s.tokenize(corpus, return_ids=False, show_progress=False), show_progress=False)
    query = bm25s.tokenize([example.question], return_ids=False, show_progress=False)[0]
    return [float(s) for s in index.get_scores(query)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=64, help="detection examples (split in two halves)")
    parser.add_argument("--eval-examples", type=int, default=100, help="held-out evaluation examples")
    parser.add_argument("--docs", type=int, default=10, help="candidate passages per example")
    parser.add_argument("--k", type=int, default=16, help="QR heads kept, and size of each random head set")
    parser.add_argument("--random-draws", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0, help="seed of the built-in sets and the random head draws")
    parser.add_argument("--eval-set", choices=("builtin", "paraphrase"), default="builtin",
                        help="the built-in eval split, or the paraphrase set (60 examples of 10 docs; --eval-examples "
                             "and --docs then cap nothing)")
    parser.add_argument("--quick", action="store_true", help="8 detection and 16 evaluation examples")
    parser.add_argument("--model", default="smollm2-135m", help="demo alias, checkpoint directory or Hub id")
    args = parser.parse_args()
    if args.quick:
        args.examples, args.eval_examples = 8, 16
    torch.manual_seed(args.seed)
    loaded = load_model(args.model)
    model, tokenizer = loaded.model, loaded.tokenizer

    detect_set = builtin_examples(args.examples, args.docs, "detect", args.seed)
    half = len(detect_set) // 2
    began = time.perf_counter()
    first = detect_heads(model, tokenizer, detect_set[:half])
    second = detect_heads(model, tokenizer, detect_set[half:])
    detection = combined(first, second)
    qr_heads = detection.ranked()[: args.k]
    print(f"detection: {detection.examples} built-in detect examples x {args.docs} docs, "
          f"{time.perf_counter() - began:.0f} s")
    print(f"top {args.k} QR heads: " + ", ".join(f"{format_head(h)} ({float(detection.scores[h]):.3f})"
                                                for h in qr_heads))
    top_first, top_second = set(first.ranked()[: args.k]), set(second.ranked()[: args.k])
    chance = args.k * args.k / len(all_heads(model))
    print(f"overlap of the top {args.k} from two disjoint halves ({first.examples} + {second.examples} examples): "
          f"{len(top_first & top_second)}/{args.k} (two random {args.k}-head sets share {chance:.1f} on average)")

    heads = all_heads(model)
    row = {head: i for i, head in enumerate(heads)}
    draws = [random.Random(f"qrhead-eval-random-{args.seed}-{d}").sample(heads, args.k)
             for d in range(args.random_draws)]
    head_sets: dict[str, list[Head]] = {f"QR heads (top {args.k})": qr_heads, "all heads (ICR)": heads}
    head_sets.update({f"random {d}": draw for d, draw in enumerate(draws)})
    if args.eval_set == "paraphrase":
        eval_set = paraphrase_examples(min(args.eval_examples, 60))
    else:
        eval_set = builtin_examples(args.eval_examples, args.docs, "eval", args.seed)
    scores: dict[str, list[list[float]]] = {name: [] for name in [*head_sets, "BM25"]}
    began = time.perf_counter()
    for example in eval_set:
        prompt, null = prompt_pair(tokenizer, example.question, example.documents)
        token_scores = calibrated_token_scores(model, prompt, null, heads)
        for name, chosen in head_sets.items():
            scores[name].append(head_set_scores(token_scores[[row[h] for h in chosen]], prompt.doc_spans))
        scores["BM25"].append(bm25_scores(example))
    golds = [example.gold_positions() for example in eval_set]
    metrics = {name: summarize(lists, golds) for name, lists in scores.items()}
    random_names = [f"random {d}" for d in range(args.random_draws)]
    random_mean = {m: sum(metrics[n][m] for n in random_names) / len(random_names) for m in ("recall@1", "mrr")}
    docs = len(eval_set[0].documents)
    print(f"evaluation: {len(eval_set)} held-out {args.eval_set} examples x {docs} docs "
          f"(chance Recall@1 {1 / docs:.2f}), {time.perf_counter() - began:.0f} s")

    table = {
        f"QR heads (top {args.k})": metrics[f"QR heads (top {args.k})"],
        "all heads (ICR)": metrics["all heads (ICR)"],
        f"{args.k} random heads (mean of {args.random_draws})": random_mean,
        "BM25 (bm25s)": metrics["BM25"],
    }
    per_example = {name: [recall_at_k(s, g, 1) for s, g in zip(lists, golds)] for name, lists in scores.items()}
    per_example[f"{args.k} random heads (mean of {args.random_draws})"] = [
        sum(values) / len(values) for values in zip(*(per_example[n] for n in random_names))]
    per_example["BM25 (bm25s)"] = per_example["BM25"]
    width = max(len(name) for name in table)
    print(f"\n{'method':<{width}}  Recall@1 [95% CI]       MRR")
    for name, values in table.items():
        low, high = mean_interval(per_example[name], args.seed)
        print(f"{name:<{width}}  {values['recall@1']:.3f} [{low:.3f}, {high:.3f}]  {values['mrr']:6.3f}")
    qr_name = f"QR heads (top {args.k})"
    for name in list(table)[1:]:
        paired = paired_change(per_example[name], per_example[qr_name], seed=args.seed)
        print(f"QR heads - {name}, Recall@1: {paired.change:+.3f} [{paired.low:+.3f}, {paired.high:+.3f}], "
              f"{paired.better} examples better, {paired.worse} worse, sign test p = {paired.p_value:.3g}")
    print("random draws, Recall@1 / MRR: " + ", ".join(
        f"{metrics[n]['recall@1']:.3f}/{metrics[n]['mrr']:.3f}" for n in random_names))

    qr, icr = table[f"QR heads (top {args.k})"], table["all heads (ICR)"]
    for metric in ("recall@1", "mrr"):
        holds = qr[metric] > icr[metric] > random_mean[metric]
        print(f"paper's ordering QRHead > all heads > random on {metric}: {'holds' if holds else 'does not hold'}")


if __name__ == "__main__":
    main()
