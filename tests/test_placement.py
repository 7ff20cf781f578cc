"""Big-model placement on CPU: a bf16 model split over CPU memory and disk gives the results of the whole model.

Also checks the memory estimates of headpatch.pear.memory against what the code really keeps, and the table of
recipes/README.md against the estimates.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from headpatch.architectures import head_layout
from headpatch.loading import load_model
from headpatch.options import LocateOptions, TrainOptions
from headpatch.pear.locate import locate_heads
from headpatch.pear.memory import LAYER_TRAITS, ModelShape, activation_bytes_per_token_layer, gigabytes, step_memory
from headpatch.pear.proxy import copy_batch, copy_loss, sampleable_ids
from headpatch.pear.scaling import HeadScaling
from headpatch.pear.train import train_coefficients
from headpatch.qrhead import builtin_examples, detect_heads
from headpatch.runtime import input_device
from tests.tiny import tiny_model

LAYERS = 4
# As far as CPU allows: the input embedding, every other decoder layer and the LM head offloaded to disk (their
# weights on the meta device, loaded for each forward), the rest in CPU memory.
SPLIT = {
    "model.embed_tokens": "disk", "model.rotary_emb": "cpu", "model.norm": "cpu", "lm_head": "disk",
    **{f"model.layers.{i}": "disk" if i % 2 else "cpu" for i in range(LAYERS)},
}
QUICK_TRAIN = TrainOptions(steps=4, batch_size=4, n=8, lr=5e-2, eval_lengths=(8, 16), eval_samples=4)
QUICK_LOCATE = {"settings": ((4, 6), (3, 8)), "max_rows": 9}  # chunks of 3 and 1 of the 4 heads: two widened caches


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, smollm2) -> Path:
    """A tiny random Llama saved to disk, with SmolLM2's vocabulary so QRHead detection can use its tokenizer."""
    path = tmp_path_factory.mktemp("placement") / "tiny"
    tiny_model("llama", num_hidden_layers=LAYERS, vocab_size=len(smollm2.tokenizer)).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def models(checkpoint, tmp_path_factory):
    """(whole, split): the same bf16 weights loaded in one piece and spread over CPU memory and disk."""
    whole = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.bfloat16).eval()
    offload = tmp_path_factory.mktemp("offload")
    split = AutoModelForCausalLM.from_pretrained(
        checkpoint, dtype=torch.bfloat16, device_map=SPLIT, offload_folder=str(offload)
    ).eval()
    return whole, split


def test_the_split_really_offloads(models):
    _, split = models
    assert set(split.hf_device_map.values()) == {"cpu", "disk"}
    assert split.get_input_embeddings().weight.device.type == "meta"
    assert split.get_submodule("model.layers.1.self_attn.o_proj").weight.device.type == "meta"
    assert split.get_submodule("model.layers.0.self_attn.o_proj").weight.device.type == "cpu"
    assert input_device(split) == torch.device("cpu")


@pytest.mark.parametrize("propagation", ["direct", "total"])
def test_location_is_unchanged_by_placement(models, smollm2, propagation):
    whole, split = models
    layout = head_layout(whole.config)
    options = LocateOptions(propagation=propagation, **QUICK_LOCATE)
    expected = locate_heads(whole, smollm2.tokenizer, layout, options, show_progress=False)
    placed = locate_heads(split, smollm2.tokenizer, layout, options, show_progress=False)
    assert expected.scores.abs().max() > 1e-3
    torch.testing.assert_close(placed.scores, expected.scores, atol=1e-5, rtol=0)


def test_training_is_unchanged_by_placement_and_stays_float32(models, smollm2):
    whole, split = models
    layout = head_layout(whole.config)
    heads = [(1, 2), (3, 0)]  # both in layers offloaded to disk
    scaling = HeadScaling(heads, layout).attach(split)
    assert scaling.coefficients.dtype == torch.float32 and scaling.coefficients.device.type == "cpu"
    scaling.detach()
    expected = train_coefficients(whole, smollm2.tokenizer, layout, heads, QUICK_TRAIN, show_progress=False)
    placed = train_coefficients(split, smollm2.tokenizer, layout, heads, QUICK_TRAIN, show_progress=False)
    assert any(abs(c - 1.0) > 1e-3 for c in placed.coefficients.values())
    assert placed.coefficients == pytest.approx(expected.coefficients, abs=1e-6)
    assert placed.losses == pytest.approx(expected.losses, abs=1e-5)
    assert placed.after.accuracy == expected.after.accuracy


def test_qrhead_detection_is_unchanged_by_placement(models, smollm2):
    whole, split = models
    examples = builtin_examples(2, 3, seed=4)
    expected = detect_heads(whole, smollm2.tokenizer, examples)
    placed = detect_heads(split, smollm2.tokenizer, examples)
    assert expected.scores.abs().max() > 1e-3
    torch.testing.assert_close(placed.scores, expected.scores, atol=1e-5, rtol=0)


def test_load_model_auto_works_without_a_gpu(checkpoint):
    # with no GPU, accelerate's "auto" map puts everything in CPU memory
    loaded = load_model(str(checkpoint), dtype="bfloat16", device="auto")
    assert loaded.model.dtype == torch.bfloat16
    assert {p.device.type for p in loaded.model.parameters()} == {"cpu"}
    layout = head_layout(loaded.model.config)
    result = locate_heads(loaded.model, None, layout, LocateOptions(settings=((3, 5),)), show_progress=False)
    assert result.scores.shape == (LAYERS, 4)


def _saved_activation_bytes(model_type: str, layers: int, dtype: torch.dtype, **sizes) -> tuple[int, int]:
    """Bytes autograd saves for one training forward (parameters left out), and the number of tokens."""
    model = tiny_model(model_type, num_hidden_layers=layers, **sizes).to(dtype).requires_grad_(False)
    parameters = {p.data_ptr() for p in model.parameters()}
    HeadScaling([(0, 1)], head_layout(model.config)).attach(model)  # layer 0: every later layer keeps activations
    batch = copy_batch(sampleable_ids(model.config.vocab_size, None, model.config), 4, 50, 0, "train", [1])
    saved: dict[tuple, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.data_ptr() not in parameters:
            saved[(tensor.data_ptr(), tensor.dtype, tuple(tensor.shape))] = tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        copy_loss(model, batch.input_ids, batch)
    return sum(saved.values()), batch.input_ids.numel()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("model_type", ["llama", "mistral", "phi3", "qwen3", "olmo2", "gemma2", "gemma3_text"])
def test_training_activation_estimate_matches_what_autograd_saves(model_type, dtype):
    sizes = {"hidden_size": 96, "intermediate_size": 320, "num_attention_heads": 4, "num_key_value_heads": 2}
    if model_type == "gemma3_text":
        sizes["sliding_window"] = 256  # the sequences (101 tokens) fit the window, as PEAR's do in the real Gemma 3
    # the difference between 4 and 2 layers is what two more layers keep per token
    small, tokens = _saved_activation_bytes(model_type, 2, dtype, **sizes)
    large, _ = _saved_activation_bytes(model_type, 4, dtype, **sizes)
    measured = (large - small) / (2 * tokens)
    model = tiny_model(model_type, **sizes)
    layout = head_layout(model.config)
    shape = ModelShape(0, 2, layout.num_heads, 2, layout.head_dim, layout.hidden_size, 320, model.config.vocab_size,
                       **LAYER_TRAITS.get(model_type, {}))
    sequence = tokens // 4  # _saved_activation_bytes runs 4 sequences
    estimate = activation_bytes_per_token_layer(shape, torch.finfo(dtype).bits // 8, sequence)
    assert estimate == pytest.approx(measured, rel=0.05)


LLAMA_31 = {  # config.json facts of Llama-3.1-8B and -70B, with their parameter counts
    "Llama-3.1-8B": ModelShape(8_030_261_248, 32, 32, 8, 128, 4096, 14336, 128256),
    "Llama-3.1-70B": ModelShape(70_553_706_496, 80, 64, 8, 128, 8192, 28672, 128256),
}


def _readme_rows() -> dict[str, list[str]]:
    text = (Path(__file__).parent.parent / "recipes" / "README.md").read_text()
    section = text.split("### Memory per step, 8B and 70B", 1)[1]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| step")]
    return {row.split("|")[1].strip(): [cell.strip() for cell in row.split("|")[2:-1]] for row in rows}


def test_readme_memory_table_matches_the_estimates():
    rows = _readme_rows()
    labels = {"locate": "locate", "train": "train", "detect": "detect", "export": "streaming export"}
    for column, shape in enumerate(LLAMA_31.values(), start=1):
        estimates = step_memory(shape, "bfloat16")
        weights = estimates[0].weights
        assert rows["weights (every step but the export)"][column] == gigabytes(weights)
        for estimate in estimates:
            assert rows[labels[estimate.step]][column] == gigabytes(estimate.working), estimate.step
        peak = max(e.weights + e.working for e in estimates)
        assert rows["peak (weights + the largest step)"][column] == gigabytes(peak)
    assert "4,096-token" in rows["detect"][0]  # the prompt length the estimate assumes


_SPY_ON_TORCH_IMPORT = """
import os, sys

class Spy:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            print(os.environ.get("THP_MEM_ALLOC_ENABLE"))
            sys.meta_path.remove(self)

sys.meta_path.insert(0, Spy())
import headpatch.cli
"""


@pytest.mark.parametrize("given, expected", [(None, "1"), ("0", "0")])
def test_cli_asks_for_huge_page_buffers_before_torch_is_imported(given, expected):
    # PyTorch reads the variable once, at its first allocation: set later, it would do nothing
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    if given is not None:
        env["THP_MEM_ALLOC_ENABLE"] = given
    done = subprocess.run([sys.executable, "-c", _SPY_ON_TORCH_IMPORT], env=env, capture_output=True, text=True,
                          check=True)
    assert done.stdout.splitlines()[0] == expected
