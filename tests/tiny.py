"""Tiny randomly initialised models of every supported architecture, built from transformers configs."""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM

TINY_VOCAB = 300

# Where a config has its own head_dim we pick one that differs from hidden/heads, as Qwen3 and Gemma do.
# Mixture-of-experts models get two small experts; multi-head latent attention (DeepSeek) a value width (20) unlike
# its query/key width (16 + 8), so that o_proj's input is heads × v_head_dim as in the real models.
_MLA = {"kv_lora_rank": 16, "q_lora_rank": 32, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 20,
        "n_routed_experts": 2, "n_shared_experts": 1, "num_experts_per_tok": 1, "moe_intermediate_size": 32,
        "first_k_dense_replace": 1, "n_group": 1, "topk_group": 1, "num_key_value_heads": 4}
_OVERRIDES: dict[str, dict[str, Any]] = {
    "mixtral": {"num_local_experts": 2, "num_experts_per_tok": 1},
    "gemma2": {"sliding_window": 64},
    "gemma3_text": {"sliding_window": 64},
    "gptj": {"rotary_dim": 8},
    "qwen2_moe": {"num_experts": 2, "num_experts_per_tok": 1, "moe_intermediate_size": 32,
                  "shared_expert_intermediate_size": 32},
    "qwen3_moe": {"num_experts": 2, "num_experts_per_tok": 1, "moe_intermediate_size": 32},
    "olmoe": {"num_experts": 2, "num_experts_per_tok": 1},
    "granitemoe": {"num_local_experts": 2, "num_experts_per_tok": 1},
    "gpt_oss": {"num_local_experts": 2, "num_experts_per_tok": 1, "sliding_window": 64},
    "glm4_moe": {"n_routed_experts": 2, "num_experts_per_tok": 1, "moe_intermediate_size": 32,
                 "first_k_dense_replace": 1},
    "deepseek_v2": _MLA,
    "deepseek_v3": _MLA,
    "llama4_text": {"num_local_experts": 2, "num_experts_per_tok": 1, "intermediate_size_mlp": 128},
    "cohere2": {"sliding_window": 64},
    "exaone4": {"sliding_window": 64},
    "olmo3": {"sliding_window": 64},
}


def tiny_config(model_type: str, **extra: Any) -> Any:
    """A small config (3 layers, 4 query heads, GQA where the architecture has it)."""
    defaults = AutoConfig.for_model(model_type)
    kwargs: dict[str, Any] = dict(
        hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=3,
        vocab_size=TINY_VOCAB, max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    if getattr(defaults, "head_dim", None) is not None and model_type not in ("falcon", "deepseek_v2", "deepseek_v3"):
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


def windowed_model(model_type: str, window: int = 8) -> Any:
    """A tiny model with a sliding window of `window` tokens; where the config takes per-layer types, global and
    sliding layers alternate so that both kinds are exercised."""
    extra: dict[str, Any] = {"sliding_window": window}
    if hasattr(AutoConfig.for_model(model_type), "layer_types"):
        extra["layer_types"] = ["sliding_attention", "full_attention", "sliding_attention"]
    return tiny_model(model_type, **extra)
