import pytest
import torch
from transformers import AutoConfig

from headpatch.architectures import ARCHITECTURES, head_layout, o_proj_modules, supported_model_types
from headpatch.errors import HeadpatchError
from headpatch.pear.fold import fold_model
from headpatch.pear.scaling import scaled_heads
from tests.tiny import tiny_model

REQUIRED = ["llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "olmo2",
            "starcoder2", "gpt_neox", "gpt2", "opt", "falcon", "gptj"]


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
    if getattr(model.config, "head_dim", None) and model_type != "falcon":
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
