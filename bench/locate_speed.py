"""PEAR location three ways on one model and settings: today's path (upper part only, one logit), headpatch 0.1's
fast path (every layer and the whole vocabulary per ablation) and the naive per-head re-run.

    python bench/locate_speed.py                  # SmolLM2, the paper's settings; naive timed on a sample of heads
    python bench/locate_speed.py --naive-heads 0  # naive on every head (about an hour on 2 CPU cores)

The naive path costs one full forward pass per head and setting, the same for every head, so its total is its measured
time per head times the number of heads; the script says how many heads it measured and checks they agree.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from headpatch.architectures import head_layout  # noqa: E402
from headpatch.loading import load_model  # noqa: E402
from headpatch.options import PAPER_SETTINGS, LocateOptions  # noqa: E402
from headpatch.pear.locate import locate_heads  # noqa: E402
from headpatch.pear.proxy import copy_batch, sampleable_ids, special_prefix  # noqa: E402
from tests.oracle import naive_head_effects, whole_model_head_effects  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--naive-heads", type=int, default=27, help="heads timed on the naive path; 0 = all")
    args = parser.parse_args()
    torch.manual_seed(0)
    loaded = load_model(args.model)
    model, tokenizer = loaded.model, loaded.tokenizer
    layout = head_layout(model.config)
    options = LocateOptions()

    started = time.perf_counter()
    fast = locate_heads(model, tokenizer, layout, options, show_progress=False)
    fast_seconds = time.perf_counter() - started

    vocab = sampleable_ids(model.config.vocab_size, tokenizer, model.config)
    prefix = special_prefix(tokenizer)
    batches = [copy_batch(vocab, *setting, options.seed, "locate", prefix) for setting in PAPER_SETTINGS]
    started = time.perf_counter()
    previous = [whole_model_head_effects(model, batch, layout, options) for batch in batches]
    previous_seconds = time.perf_counter() - started
    previous_gap = max((p - f).abs().max().item() for p, f in zip(previous, fast.per_setting))

    heads = [(layer, h) for layer in range(layout.num_layers) for h in range(layout.num_heads)]
    if args.naive_heads:
        step = max(1, len(heads) // args.naive_heads)
        heads = heads[::step][: args.naive_heads]
    naive_seconds, worst = 0.0, 0.0
    for batch, per_setting in zip(batches, fast.per_setting):
        started = time.perf_counter()
        naive = naive_head_effects(model, batch, layout, options, heads=heads)
        naive_seconds += time.perf_counter() - started
        worst = max(worst, max(abs(naive[h] - per_setting[h]).item() for h in heads))
    naive_total = naive_seconds * layout.total_heads / len(heads)

    print(f"model {args.model}: {layout.num_layers} layers x {layout.num_heads} heads, settings {list(PAPER_SETTINGS)}")
    print(f"location (upper part, one logit), all {layout.total_heads} heads: {fast_seconds:8.1f} s")
    print(f"0.1 path (whole model, whole vocabulary), all heads: {previous_seconds:8.1f} s   "
          f"speed-up {previous_seconds / fast_seconds:4.1f}x   max |difference| {previous_gap:.2e}")
    print(f"naive re-run, {len(heads)} heads measured: {naive_seconds:8.1f} s "
          f"-> {naive_total:8.1f} s for all {layout.total_heads} heads")
    print(f"speed-up (naive / fast): {naive_total / fast_seconds:6.1f}x   "
          f"max |fast - naive| on measured heads: {worst:.2e}")


if __name__ == "__main__":
    main()
