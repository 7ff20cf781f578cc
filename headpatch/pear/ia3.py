"""Save PEAR coefficients as a standard peft IA3 adapter that stock peft loads and merges."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from headpatch.architectures import HeadLayout
from headpatch.heads import Head, check_heads
from headpatch.pear.fold import by_layer


def ia3_vectors(layout: HeadLayout, coefficients: dict[Head, float]) -> dict[str, torch.Tensor]:
    """One IA3 input-scaling vector per patched projection, each head's value tied across its slice."""
    vectors = {}
    for layer, heads in sorted(by_layer(coefficients).items()):
        vector = torch.ones(layout.num_heads, dtype=torch.float32)
        for head, value in heads.items():
            vector[head] = value
        vectors[layout.o_proj_name(layer)] = vector.repeat_interleave(layout.head_dim)[None, :]
    return vectors


def save_ia3_adapter(
    layout: HeadLayout, coefficients: dict[Head, float], out_dir: str | Path, base_model: str
) -> Path:
    """Write adapter_config.json and adapter_model.safetensors in peft's IA3 format."""
    from peft import IA3Config

    check_heads(coefficients, layout)
    vectors = ia3_vectors(layout, coefficients)
    modules = list(vectors)
    # Listing the o_proj modules as feedforward makes IA3 scale their inputs, i.e. the per-head outputs.
    config = IA3Config(
        task_type="CAUSAL_LM",
        target_modules=modules,
        feedforward_modules=modules,
        fan_in_fan_out=layout.orientation == "conv1d",
        base_model_name_or_path=base_model,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(out))
    tensors = {f"base_model.model.{name}.ia3_l": vector.contiguous() for name, vector in vectors.items()}
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    return out

