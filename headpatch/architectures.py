"""Where each supported architecture keeps its attention output projection, described as data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from headpatch.errors import HeadpatchError


@dataclass(frozen=True)
class ArchSpec:
    """How one `model_type` lays out its attention output projection."""

    o_proj: str  # module path template, `{layer}` is the decoder layer index
    orientation: str = "linear"  # "linear": weight is [out, in]; "conv1d": weight is [in, out] (GPT-2's Conv1D)
    head_width: str = "head_dim"  # the config attribute giving each head's share of o_proj's input


_DECODER = "model.layers.{layer}.self_attn.o_proj"
# Multi-head latent attention: queries and keys are qk_nope_head_dim + qk_rope_head_dim wide (config.head_dim is the
# rotary part), values and so o_proj's input per head v_head_dim.
_LATENT = ArchSpec(_DECODER, head_width="v_head_dim")

ARCHITECTURES: dict[str, ArchSpec] = {
    "llama": ArchSpec(_DECODER),
    "mistral": ArchSpec(_DECODER),
    "mixtral": ArchSpec(_DECODER),
    "qwen2": ArchSpec(_DECODER),
    "qwen3": ArchSpec(_DECODER),
    "gemma": ArchSpec(_DECODER),
    "gemma2": ArchSpec(_DECODER),
    "gemma3_text": ArchSpec(_DECODER),
    "phi3": ArchSpec(_DECODER),
    "olmo2": ArchSpec(_DECODER),
    "starcoder2": ArchSpec(_DECODER),
    "gpt_neox": ArchSpec("gpt_neox.layers.{layer}.attention.dense"),
    "gpt2": ArchSpec("transformer.h.{layer}.attn.c_proj", orientation="conv1d"),
    "opt": ArchSpec("model.decoder.layers.{layer}.self_attn.out_proj"),
    "falcon": ArchSpec("transformer.h.{layer}.self_attention.dense"),
    "gptj": ArchSpec("transformer.h.{layer}.attn.out_proj"),
    # mixture-of-experts: the experts replace the MLP; attention and its o_proj stay dense
    "qwen2_moe": ArchSpec(_DECODER),
    "qwen3_moe": ArchSpec(_DECODER),
    "olmoe": ArchSpec(_DECODER),
    "granitemoe": ArchSpec(_DECODER),
    "glm4_moe": ArchSpec(_DECODER),
    "gpt_oss": ArchSpec(_DECODER),  # attention sinks: one learned logit per head joins each softmax
    "llama4_text": ArchSpec(_DECODER),
    "deepseek_v2": _LATENT,
    "deepseek_v3": _LATENT,
    "glm4": ArchSpec(_DECODER),
    "cohere": ArchSpec(_DECODER),
    "cohere2": ArchSpec(_DECODER),
    "granite": ArchSpec(_DECODER),
    "smollm3": ArchSpec(_DECODER),
    "phi": ArchSpec("model.layers.{layer}.self_attn.dense"),
    "olmo3": ArchSpec(_DECODER),
    "exaone4": ArchSpec(_DECODER),
    "ernie4_5": ArchSpec(_DECODER),
    "apertus": ArchSpec(_DECODER),
    "seed_oss": ArchSpec(_DECODER),
}


@dataclass(frozen=True)
class HeadLayout:
    """The attention-head geometry of one model, resolved from its config."""

    model_type: str
    num_layers: int
    num_heads: int  # query heads; with GQA several of them share one key/value head
    head_dim: int
    hidden_size: int
    orientation: str
    o_proj_template: str

    @property
    def total_heads(self) -> int:
        """Number of (layer, head) pairs in the model."""
        return self.num_layers * self.num_heads

    def o_proj_name(self, layer: int) -> str:
        """Module path of layer `layer`'s output projection."""
        return self.o_proj_template.format(layer=layer)

    def attention_name(self, layer: int) -> str:
        """Module path of layer `layer`'s attention block: the output projection's parent."""
        return self.o_proj_name(layer).rpartition(".")[0]

    @property
    def layers_name(self) -> str:
        """Module path of the list of decoder layers."""
        return self.o_proj_template.partition(".{layer}")[0]

    def o_proj_tensor(self, layer: int) -> str:
        """Name of the projection weight in a state dict written by `save_pretrained`."""
        return self.o_proj_name(layer) + ".weight"

    def head_columns(self, head: int) -> slice:
        """The o_proj input features that belong to query head `head`."""
        return slice(head * self.head_dim, (head + 1) * self.head_dim)


def supported_model_types() -> list[str]:
    """Every `model_type` headpatch can patch."""
    return sorted(ARCHITECTURES)


def head_layout(config: Any) -> HeadLayout:
    """Resolve the head geometry of a transformers config (loaded model or bare config)."""
    model_type = getattr(config, "model_type", None)
    spec = ARCHITECTURES.get(model_type)
    if spec is None:
        raise HeadpatchError(
            f"unsupported architecture {model_type!r}; supported: {', '.join(supported_model_types())}"
        )
    num_heads = config.num_attention_heads
    head_dim = getattr(config, spec.head_width, None) or config.hidden_size // num_heads
    return HeadLayout(
        model_type=model_type,
        num_layers=config.num_hidden_layers,
        num_heads=num_heads,
        head_dim=head_dim,
        hidden_size=config.hidden_size,
        orientation=spec.orientation,
        o_proj_template=spec.o_proj,
    )


def o_proj_modules(model: Any, layout: HeadLayout) -> list[Any]:
    """The output-projection module of every layer, checked against the layout."""
    modules = []
    for layer in range(layout.num_layers):
        name = layout.o_proj_name(layer)
        try:
            module = model.get_submodule(name)
        except AttributeError as exc:
            raise HeadpatchError(f"{layout.model_type} model has no module {name}") from exc
        in_features = module.weight.shape[0 if layout.orientation == "conv1d" else 1]
        if in_features != layout.num_heads * layout.head_dim:
            raise HeadpatchError(
                f"{name} takes {in_features} inputs, expected {layout.num_heads} heads x {layout.head_dim}"
            )
        modules.append(module)
    return modules
