"""QRHead scoring cost on SmolLM2-135M: selected-heads truncated-forward capture vs eager output_attentions=True.

    python bench/qrhead_speed.py                      # heads detected on 8 built-in detect examples
    python bench/qrhead_speed.py --heads 5-3,7-1,...  # or given

Both scorers compute the same calibrated, outlier-masked document scores for the same held-out built-in examples:
- capture: the model's default attention (sdpa) with headpatch's capture; the shared prefix is computed once, both
  query tails continue its cache, only the needed heads' query-span rows are materialised and the forward pass stops
  after the last needed layer;
- eager: two plain full forward passes per example (question and "N/A"), attn_implementation="eager",
  output_attentions=True, the needed heads picked from the returned attention maps.
Each scorer runs in its own fresh process, so peak memory is that process's peak resident set size (ru_maxrss of
getrusage: every CPU allocation, torch's included). "scoring peak" subtracts the peak reached after loading the model
and building the prompts. Times are the wall time of one pass over the examples after one warm-up example.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from headpatch.heads import format_head, parse_heads  # noqa: E402
from headpatch.loading import load_model  # noqa: E402
from headpatch.qrhead.builtin import builtin_examples  # noqa: E402
from headpatch.qrhead.detect import detect_heads  # noqa: E402
from headpatch.qrhead.prompt import Prompt, prompt_pair  # noqa: E402
from headpatch.qrhead.scoring import calibrated_token_scores, head_set_scores  # noqa: E402


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def eager_scores(model: Any, prompt: Prompt, null: Prompt, heads: list[tuple[int, int]]) -> list[float]:
    """The same document scores from two full eager forwards that return every layer's attention maps."""
    start = prompt.query_start

    def query_rows(ids: list[int]) -> torch.Tensor:
        with torch.no_grad():
            attentions = model(torch.tensor([ids]), output_attentions=True).attentions
        return torch.stack([attentions[layer][0, head, start:, :start].mean(dim=0) for layer, head in heads])

    return head_set_scores(query_rows(prompt.input_ids) - query_rows(null.input_ids), prompt.doc_spans)


def worker(args: argparse.Namespace) -> None:
    """Score the examples one way and print a JSON line: seconds, peak RSS, scores."""
    loaded = load_model("smollm2-135m")
    model, tokenizer = loaded.model, loaded.tokenizer
    if args.worker == "eager":
        model.set_attn_implementation("eager")
    heads = parse_heads(args.heads)
    pairs = [prompt_pair(tokenizer, e.question, e.documents)
             for e in builtin_examples(args.examples, args.docs, "eval", args.seed)]

    def score(prompt: Prompt, null: Prompt) -> list[float]:
        if args.worker == "eager":
            return eager_scores(model, prompt, null, heads)
        return head_set_scores(calibrated_token_scores(model, prompt, null, heads), prompt.doc_spans)

    loaded_rss = _peak_rss_mib()
    score(*pairs[0])  # warm-up: first-call allocations and kernel selection
    began = time.perf_counter()
    scores = [score(prompt, null) for prompt, null in pairs]
    seconds = time.perf_counter() - began
    print(json.dumps({"seconds": seconds, "loaded_rss_mib": loaded_rss, "peak_rss_mib": _peak_rss_mib(),
                      "tokens": [len(p.input_ids) for p, _ in pairs], "scores": scores}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", help="layer-head ids; default: top 16 detected on --detect-examples")
    parser.add_argument("--detect-examples", type=int, default=8)
    parser.add_argument("--examples", type=int, default=4, help="held-out built-in eval examples to score")
    parser.add_argument("--docs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", choices=["capture", "eager"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.heads is None:
        loaded = load_model("smollm2-135m")
        detected = detect_heads(loaded.model, loaded.tokenizer,
                                builtin_examples(args.detect_examples, args.docs, "detect", args.seed))
        args.heads = ",".join(format_head(h) for h in detected.ranked()[:16])
        del loaded
    print(f"heads: {args.heads} (deepest layer {max(l for l, _ in parse_heads(args.heads))})")
    results = {}
    for name in ("capture", "eager"):
        command = [sys.executable, __file__, "--worker", name, "--heads", args.heads, "--examples",
                   str(args.examples), "--docs", str(args.docs), "--seed", str(args.seed)]
        finished = subprocess.run(command, capture_output=True, text=True, check=True)
        results[name] = json.loads(finished.stdout.strip().splitlines()[-1])
    capture, eager = results["capture"], results["eager"]
    difference = max(abs(a - b) for x, y in zip(capture["scores"], eager["scores"]) for a, b in zip(x, y))
    print(f"{args.examples} held-out examples x {args.docs} docs, prompts of {capture['tokens']} tokens, "
          f"float32 CPU, {torch.get_num_threads()} threads")
    print(f"max |score difference| between the two: {difference:.2e}")
    print(f"\n{'scorer':<44}  wall s  peak RSS MiB  scoring peak MiB")
    labels = {"capture": "selected heads, truncated forward (capture)",
              "eager": "eager full forward, output_attentions=True"}
    for name, result in results.items():
        print(f"{labels[name]:<44}  {result['seconds']:6.2f}  {result['peak_rss_mib']:12.0f}  "
              f"{result['peak_rss_mib'] - result['loaded_rss_mib']:16.0f}")
    print(f"\nspeed ratio (eager / capture): {eager['seconds'] / capture['seconds']:.1f}x")


if __name__ == "__main__":
    main()
