"""Tuning's measurements two ways on one model: whole forwards (before) and from the lowest trained layer up, on that
layer's stored input (today), for the top-K heads of each K of the ladder.

    python bench/tune_speed.py                                        # SmolLM2, locating the heads first (about 1 min)
    python bench/tune_speed.py --heads smollm2-135m-pear/headpatch.json  # re-use an export's location

Every `eval_every` training steps tuning scores its selection set (32 copy sequences) and the guard text (8 windows of
512 tokens spread over it) with the candidate's coefficients; the layers below the lowest trained head see the same inputs every
time. The two paths alternate, `--repeats` times each, on the same coefficients, and must agree.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from headpatch.architectures import head_layout  # noqa: E402
from headpatch.loading import load_model  # noqa: E402
from headpatch.options import LocateOptions, TuneOptions  # noqa: E402
from headpatch.pear.locate import locate_heads  # noqa: E402
from headpatch.pear.proxy import copy_batch, copy_scores, sampleable_ids, special_prefix  # noqa: E402
from headpatch.pear.scaling import scaled_heads  # noqa: E402
from headpatch.pear.tune import base_log_probs, guard_figures, guard_windows, spread_windows  # noqa: E402
from headpatch.pear.upper import lower_states  # noqa: E402
from headpatch.record import PatchRecord  # noqa: E402


def _ranked(args: argparse.Namespace, loaded) -> list[tuple[int, int]]:
    if args.heads:
        record = PatchRecord.from_text(Path(args.heads).read_text(encoding="utf-8"))
        return record.with_top_k(len(record.pear.location.scores)).pear_heads()  # as tuning ranks them
    layout = head_layout(loaded.model.config)
    return locate_heads(loaded.model, loaded.tokenizer, layout, LocateOptions(), show_progress=False).ranked()


def _measure(model, layout, coefficients, select, windows, reference, lower) -> tuple[float, list[float], float]:
    """One measurement as tuning makes it: seconds, per-sequence losses, KL."""
    select_lower, guard_lower = lower if lower is not None else (None, None)
    started = time.perf_counter()
    with scaled_heads(model, layout, coefficients):
        losses, _ = copy_scores(model, select, lower=select_lower)
    guard = guard_figures(model, layout, coefficients, windows, reference, guard_lower)
    return time.perf_counter() - started, losses, guard.kl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--heads", help="a located record (headpatch.json) whose ranking to use")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    loaded = load_model(args.model)
    model, tokenizer = loaded.model, loaded.tokenizer
    model.requires_grad_(False)
    layout = head_layout(model.config)
    options = TuneOptions()
    ranked = _ranked(args, loaded)
    vocab = sampleable_ids(model.config.vocab_size, tokenizer, model.config)
    select = copy_batch(vocab, options.select_samples, options.n, options.seed, "select", special_prefix(tokenizer))
    windows = spread_windows(guard_windows(tokenizer), options.guard_windows)
    reference = base_log_probs(model, windows)

    print(f"model {args.model}: {layout.num_layers} layers; one measurement = {options.select_samples} selection "
          f"sequences of n={options.n} + {len(windows)} guard windows of 512 tokens; {args.repeats} of each path")
    print("   K  lowest layer   whole forwards   from that layer   speed-up   stored input   max |loss diff|   KL diff")
    for k in options.ladder_for(len(ranked)):
        heads = ranked[:k]
        coefficients = {head: 1.2 if i % 2 else 0.8 for i, head in enumerate(heads)}
        start = min(layer for layer, _ in heads)
        began = time.perf_counter()
        lower = (lower_states(model, layout, select.input_ids, start, chunk=20),
                 lower_states(model, layout, windows, start, chunk=1)) if start else None
        stored = time.perf_counter() - began
        whole_s = fed_s = 0.0
        for _ in range(args.repeats):
            seconds, whole_losses, whole_kl = _measure(model, layout, coefficients, select, windows, reference, None)
            whole_s += seconds
            seconds, fed_losses, fed_kl = _measure(model, layout, coefficients, select, windows, reference, lower)
            fed_s += seconds
        gap = max(abs(a - b) for a, b in zip(whole_losses, fed_losses))
        print(f"{k:4d}  {start:12d}   {whole_s / args.repeats:12.2f} s   {fed_s / args.repeats:13.2f} s   "
              f"{whole_s / fed_s:7.2f}x   {stored:10.2f} s   {gap:15.1e}   {abs(whole_kl - fed_kl):7.1e}")


if __name__ == "__main__":
    main()
