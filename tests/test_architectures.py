import pytest
import torch
from transformers import AutoConfig

from headpatch.architectures import ARCHITECTURES, head_layout, o_proj_modules, supported_model_types
from headpatch.errors import HeadpatchError
from headpatch.pear.fold import fold_model
from headpatch.pear.scaling import scaled_heads
from tests.tiny import tiny_model

REQUIRED = ["llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "olmo2",
            "starcoder2", "gpt_neox", "gpt2", "opt", "falcon", "gptj",
            # the families shipped today: mixture-of-experts, latent attention, attention sinks, sliding windows
            "qwen2_moe", "qwen3_moe", "olmoe", "gpt_oss", "deepseek_v2", "deepseek_v3", "glm4", "glm4_moe", "cohere",
            "cohere2", "granite", "granitemoe", "smollm3", "llama4_text", "phi", "olmo3", "exaone4", "ernie4_5",
            "apertus", "seed_oss"]
LATENT_ATTENTION = ("deepseek_v2", "deepseek_v3")  # o_proj reads heads × v_head_dim, not heads × head_dim


def test_every_required_type_is_in_the_table():
    assert set(REQUIRED) <= set(ARCHITECTURES)


def test_unsupported_type_lists_the_supported_ones():
    with pytest.raises(HeadpatchError) as info:
        head_layout(AutoConfig.for_model("bloom"))
    message = str(info.value)
    assert "bloom" in message and all(name in message for name in supported_model_types())


@pytest.mark.parametrize("model_type", REQUIRED)
def test_layout_matches_the_real_modules(model_type):
    model = tiny_model(model_type)
    layout = head_layout(model.config)
    modules = o_proj_modules(model, layout)
    assert len(modules) == layout.num_layers == 3
    assert layout.num_heads == 4
    for layer, module in enumerate(modules):
        assert module is model.get_submodule(layout.o_proj_name(layer))
        assert layout.o_proj_tensor(layer) in model.state_dict()
    if model_type in LATENT_ATTENTION:
        assert layout.head_dim == model.config.v_head_dim == 20 != model.config.head_dim
    elif getattr(model.config, "head_dim", None) and model_type != "falcon":
        assert layout.head_dim == 24 != layout.hidden_size // layout.num_heads


@pytest.mark.parametrize("model_type", REQUIRED)
def test_fold_equals_runtime_scaling(model_type):
    model = tiny_model(model_type)
    layout = head_layout(model.config)
    coefficients = {(0, 1): 0.5, (2, 3): 1.7, (2, 0): 0.0}
    ids = torch.randint(3, 300, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        base = model(ids).logits
        with scaled_heads(model, layout, coefficients):
            scaled = model(ids).logits
        fold_model(model, layout, coefficients)
        folded = model(ids).logits
    assert (scaled - base).abs().max() > 1e-3  # the patch really changes the model
    torch.testing.assert_close(folded, scaled, atol=1e-5, rtol=0)


@pytest.mark.parametrize("model_type", REQUIRED)
def test_streaming_fold_equals_the_in_memory_fold(tmp_path, model_type):
    """The fold over the safetensors files writes what folding the loaded model and saving it writes."""
    from safetensors.torch import load_file

    from headpatch.io.export import stream_export
    from tests.test_stream import make_record

    model = tiny_model(model_type)
    model.save_pretrained(tmp_path / "source")
    coefficients = {(0, 1): 0.5, (2, 3): 1.7, (2, 0): 0.0}
    out = stream_export(tmp_path / "source", make_record(model.config, coefficients), tmp_path / "out",
                        show_progress=False, warn=lambda _: None)
    fold_model(model, head_layout(model.config), coefficients)
    model.save_pretrained(tmp_path / "in-memory")
    streamed, in_memory = load_file(out / "model.safetensors"), load_file(tmp_path / "in-memory" / "model.safetensors")
    assert streamed.keys() == in_memory.keys()
    assert all(torch.equal(streamed[name], in_memory[name]) for name in streamed)
