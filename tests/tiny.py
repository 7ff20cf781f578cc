"""Tiny randomly initialised models of every supported architecture, built from transformers configs."""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM

TINY_VOCAB = 300

# Where a config has its own head_dim we pick one that differs from hidden/heads, as Qwen3 and Gemma do.
_OVERRIDES: dict[str, dict[str, Any]] = {
    "mixtral": {"num_local_experts": 2, "num_experts_per_tok": 1},
    "gemma2": {"sliding_window": 64},
    "gemma3_text": {"sliding_window": 64},
    "gptj": {"rotary_dim": 8},
}


def tiny_config(model_type: str, **extra: Any) -> Any:
    """A small config (3 layers, 4 query heads, GQA where the architecture has it)."""
    defaults = AutoConfig.for_model(model_type)
    kwargs: dict[str, Any] = dict(
        hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=3,
        vocab_size=TINY_VOCAB, max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    if getattr(defaults, "head_dim", None) is not None and model_type != "falcon":
        kwargs["head_dim"] = 24
    if hasattr(defaults, "num_key_value_heads"):
        kwargs["num_key_value_heads"] = 2
    if model_type == "gpt2":
        kwargs["n_inner"] = kwargs.pop("intermediate_size")
    if model_type == "opt":
        kwargs.update(ffn_dim=kwargs.pop("intermediate_size"), word_embed_proj_dim=64)
    kwargs.update(_OVERRIDES.get(model_type, {}))
    kwargs.update(extra)
    return AutoConfig.for_model(model_type, **kwargs)


def tiny_model(model_type: str, seed: int = 0, **extra: Any) -> Any:
    """A tiny random model in eval mode, float32."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type, **extra), dtype=torch.float32)
    return model.eval()
