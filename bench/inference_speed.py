"""Forward-pass time: exported (folded) model vs base, vs base with runtime scaling hooks, vs base with the IA3 adapter.

    python bench/inference_speed.py --patched ./smollm2-135m-pear

All four variants run the same inputs, interleaved round by round, in one process; medians are compared.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from headpatch.architectures import head_layout  # noqa: E402
from headpatch.heads import parse_head  # noqa: E402
from headpatch.loading import load_model  # noqa: E402
from headpatch.pear.ia3 import save_ia3_adapter  # noqa: E402
from headpatch.pear.scaling import HeadScaling  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patched", required=True, help="an exported checkpoint directory")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    meta = json.loads((Path(args.patched) / "config.json").read_text())["headpatch"]
    base_dir = load_model(meta["source"]).source.location
    coefficients = {parse_head(k): v for k, v in meta["pear"]["coefficients"].items()}

    def fresh_base():
        return AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()

    variants = {"base": fresh_base(), "exported": AutoModelForCausalLM.from_pretrained(args.patched).eval()}
    hooked = fresh_base()
    layout = head_layout(hooked.config)
    HeadScaling(list(coefficients), layout, list(coefficients.values())).attach(hooked)
    variants["base + runtime hooks"] = hooked
    with tempfile.TemporaryDirectory() as adapter:
        save_ia3_adapter(layout, coefficients, adapter, base_dir)
        variants["base + IA3 adapter"] = PeftModel.from_pretrained(fresh_base(), adapter).eval()

    ids = torch.randint(10, 40000, (args.batch, args.tokens))
    times: dict[str, list[float]] = {name: [] for name in variants}
    with torch.no_grad():
        for model in variants.values():
            model(ids)
        for _ in range(args.rounds):
            for name, model in variants.items():
                started = time.perf_counter()
                model(ids)
                times[name].append(time.perf_counter() - started)
    base = statistics.median(times["base"])
    print(f"{len(coefficients)} patched heads; input {args.batch} x {args.tokens} tokens; {args.rounds} rounds, median")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:22s} {median * 1000:8.1f} ms   ratio to base {median / base:5.3f}")


if __name__ == "__main__":
    main()
