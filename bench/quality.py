"""Does the patch help copying and leave language modelling alone? Base vs patched, same inputs, one run.

    python bench/quality.py --patched ./smollm2-135m-pear

Copy accuracy uses evaluation seeds (never used for location or training); perplexity uses Paul Graham essays.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from headpatch.essays import load_essays  # noqa: E402
from headpatch.evaluation.metrics import perplexity  # noqa: E402
from headpatch.loading import load_model  # noqa: E402
from headpatch.pear.proxy import copy_accuracy, copy_batch, sampleable_ids, special_prefix  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patched", required=True, help="an exported checkpoint directory")
    parser.add_argument("--lengths", default="25,50,100,200")
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1, help="evaluation seed (training evaluates with seed 0)")
    parser.add_argument("--ppl-windows", type=int, default=48, help="512-token windows of essay text")
    args = parser.parse_args()
    meta = json.loads((Path(args.patched) / "config.json").read_text())["headpatch"]
    models = {"base": load_model(meta["source"]), "patched": load_model(args.patched)}
    tokenizer = models["base"].tokenizer
    config = models["base"].model.config
    vocab = sampleable_ids(config.vocab_size, tokenizer, config)
    prefix = special_prefix(tokenizer)
    essays = list(load_essays().values())
    lengths = [int(n) for n in args.lengths.split(",")]
    rows = {}
    for name, loaded in models.items():
        accuracy = [
            copy_accuracy(loaded.model, copy_batch(vocab, args.samples, n, args.seed, "eval", prefix)) for n in lengths
        ]
        ppl = perplexity(loaded.model, tokenizer, essays, max_windows=args.ppl_windows)
        rows[name] = (accuracy, ppl)
    print(f"{len(meta['pear']['coefficients'])} patched heads; {args.samples} held-out sequences per length")
    print("model    | " + " | ".join(f"copy n={n}" for n in lengths) + " | essay ppl")
    for name, (accuracy, ppl) in rows.items():
        print(f"{name:8s} | " + " | ".join(f"{a:9.3f}" for a in accuracy) + f" | {ppl:9.3f}")
    base_ppl = rows["base"][1]
    print(f"perplexity change: {100 * (rows['patched'][1] / base_ppl - 1):+.2f}%")


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
