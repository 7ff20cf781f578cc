"""Small GGUF files written with gguf-py's own writer, and records that fit them, for the GGUF export tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter
from gguf.quants import quantize

from headpatch.io.gguf_fold import QUANTIZABLE, SCALE_OFFSETS
from headpatch.record import PatchRecord

Q = GGMLQuantizationType


def random_blocks(qtype: GGMLQuantizationType, rows: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A `rows` × `width` tensor of `qtype` as bytes (rows × bytes per row): quantized from random values where
    gguf-py can quantize the type, else random integers with float16 scales of a realistic size."""
    if qtype in (*QUANTIZABLE, Q.F32, Q.F16, Q.BF16):
        return np.ascontiguousarray(quantize(rng.normal(0, 0.05, size=(rows, width)).astype(np.float32), qtype))
    block, size = GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, size=(rows, width // block, size), dtype=np.uint8)
    for offset in SCALE_OFFSETS[qtype]:
        scales = rng.uniform(0.0005, 0.005, size=(rows, width // block, 1)).astype(np.float16)
        blocks[:, :, offset:offset + 2] = scales.view(np.uint8)
    return blocks.reshape(rows, -1)


def write_tiny_gguf(path: Path, attn_type: GGMLQuantizationType = Q.Q8_0, layers: int = 3, heads: int = 4,
                    head_dim: int = 64, hidden: int = 96, seed: int = 0, name: str | None = "Tiny Llama") -> Path:
    """A llama-architecture GGUF with metadata like a real one (tokenizer keys, chat template, license) and, per
    layer, an `attn_output` of `attn_type`, an F32 norm and a Q8_0 `attn_q`."""
    rng = np.random.default_rng(seed)
    writer = GGUFWriter(path, "llama")
    if name is not None:
        writer.add_name(name)
    writer.add_string("general.organization", "tiny-org")
    writer.add_string("general.license", "apache-2.0")
    writer.add_block_count(layers)
    writer.add_head_count(heads)
    writer.add_head_count_kv(1)
    writer.add_embedding_length(hidden)
    writer.add_context_length(4096)
    writer.add_uint32("llama.attention.key_length", head_dim)
    writer.add_uint32("llama.attention.value_length", head_dim)
    writer.add_string("tokenizer.ggml.model", "gpt2")
    writer.add_array("tokenizer.ggml.tokens", ["<s>", "a", "b", "ünï"])
    writer.add_string("tokenizer.chat_template", "{% for m in messages %}{{ m['content'] }}{% endfor %}")
    for layer in range(layers):
        writer.add_tensor(f"blk.{layer}.attn_norm.weight", rng.normal(size=hidden).astype(np.float32))
        writer.add_tensor(f"blk.{layer}.attn_output.weight", random_blocks(attn_type, hidden, heads * head_dim, rng),
                          raw_dtype=attn_type)
        writer.add_tensor(f"blk.{layer}.attn_q.weight", random_blocks(Q.Q8_0, heads * head_dim, hidden, rng),
                          raw_dtype=Q.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def gguf_record(coefficients: dict[tuple[int, int], float], layers: int = 3, heads: int = 4, head_dim: int = 64,
                model_type: str = "llama", base_model: str | None = "tiny/base") -> PatchRecord:
    """A trained-patch record for a model of this geometry, with the given coefficients."""
    ids = [f"{layer}-{head}" for layer, head in coefficients]
    return PatchRecord.from_json({
        "format_version": 1, "headpatch_version": "test", "source": "tiny.gguf", "base_model": base_model,
        "architecture": {"model_type": model_type, "num_layers": layers, "num_heads": heads, "head_dim": head_dim},
        "pear": {"heads": ids, "location": {"method": "given by the user", "k": len(ids)},
                 "coefficients": dict(zip(ids, coefficients.values()))},
    })
