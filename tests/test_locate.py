import pytest
import torch

from headpatch.architectures import head_layout
from headpatch.options import MEAN_VECTORS, PROPAGATIONS, LocateOptions
from headpatch.pear.locate import clean_run, head_effects, locate_heads
from headpatch.pear.proxy import copy_batch, sampleable_ids, special_prefix
from tests.oracle import naive_head_effects, whole_model_head_effects
from tests.test_architectures import REQUIRED
from tests.tiny import TINY_VOCAB, tiny_model, windowed_model

VARIANTS = [(m, p) for m in MEAN_VECTORS for p in PROPAGATIONS]


def _tiny_batch(model, samples=5, n=7):
    return copy_batch(sampleable_ids(TINY_VOCAB, None, model.config), samples, n, 0, "locate", [1])


@pytest.mark.parametrize("model_type", REQUIRED)
@pytest.mark.parametrize("mean_vector,propagation", VARIANTS)
def test_fast_location_equals_naive_rerun_on_tiny_models(model_type, mean_vector, propagation):
    model = tiny_model(model_type)
    layout = head_layout(model.config)
    batch = _tiny_batch(model)
    # max_rows=15 gives chunks of 3 and 1 heads, so both widened caches and the roll-back are exercised.
    options = LocateOptions(mean_vector=mean_vector, propagation=propagation, max_rows=15)
    fast = head_effects(model, batch, layout, options)
    naive = naive_head_effects(model, batch, layout, options)
    assert naive.abs().max() > 1e-3
    # tolerances relative where a tiny random model's effects exceed 1 (Phi's reach 83, GLM-4's 21; float32 rounding
    # of such sums alone is 1e-5 to 1e-4)
    scale = max(1.0, naive.abs().max().item())
    assert (fast - naive).abs().max().item() <= 1e-4 * scale
    # and to headpatch 0.1's path, which recomputed every layer and the whole vocabulary for every ablation
    assert (fast - whole_model_head_effects(model, batch, layout, options)).abs().max().item() <= 1e-5 * scale


@pytest.mark.parametrize("propagation,attention_runs", [("direct", lambda layer, chunks: 1 + chunks),
                                                        ("total", lambda layer, chunks: 1 + (layer + 1) * chunks)])
def test_location_recomputes_only_from_the_ablated_layer_up(propagation, attention_runs):
    model = tiny_model("llama")
    layout = head_layout(model.config)
    batch = _tiny_batch(model)
    layers = model.model.layers
    calls = {"layer": [0] * len(layers), "attention": [0] * len(layers), "head_rows": []}

    def count(kind, i):
        return lambda *args: calls[kind].__setitem__(i, calls[kind][i] + 1)

    for i, layer in enumerate(layers):
        layer.register_forward_hook(count("layer", i))
        layer.self_attn.register_forward_hook(count("attention", i))
    model.lm_head.register_forward_hook(lambda module, args, output: calls["head_rows"].append(output.shape[1:]))
    chunks = 2  # max_rows=15 with 5 samples: 3 heads, then 1
    head_effects(model, batch, layout, LocateOptions(propagation=propagation, max_rows=15))
    assert calls["layer"] == [1 + (i + 1) * chunks for i in range(len(layers))]
    assert calls["attention"] == [attention_runs(i, chunks) for i in range(len(layers))]
    assert calls["head_rows"] == [(2, TINY_VOCAB)]  # the clean run; ablations read one logit without the LM head


def test_propagation_and_mean_variants_differ():
    model = tiny_model("llama")
    layout = head_layout(model.config)
    batch = _tiny_batch(model)
    results = {v: head_effects(model, batch, layout, LocateOptions(mean_vector=v[0], propagation=v[1])) for v in VARIANTS}
    values = list(results.values())
    assert all((a - b).abs().max() > 1e-5 for i, a in enumerate(values) for b in values[i + 1:])


def test_mean_vectors_are_the_documented_means():
    model = tiny_model("llama")
    layout = head_layout(model.config)
    batch = _tiny_batch(model)
    captured = []
    handle = model.model.layers[1].self_attn.o_proj.register_forward_pre_hook(lambda m, a: captured.append(a[0]))
    with torch.no_grad():
        model(batch.input_ids)
    handle.remove()
    x = captured[0]
    s = batch.scored_position
    torch.testing.assert_close(clean_run(model, batch, layout, "sequence").means[1], x.mean(1))
    torch.testing.assert_close(clean_run(model, batch, layout, "batch").means[1][3], x[:, s].mean(0))


def test_locate_averages_settings_and_ranks():
    model = tiny_model("qwen2")
    layout = head_layout(model.config)
    options = LocateOptions(settings=((4, 6), (6, 4)))
    result = locate_heads(model, None, layout, options, show_progress=False)
    torch.testing.assert_close(result.scores, (result.per_setting[0] + result.per_setting[1]) / 2)
    ranked = result.ranked()
    assert len(ranked) == layout.total_heads and len(set(ranked)) == layout.total_heads
    values = [result.scores[h].item() for h in ranked]
    assert values == sorted(values, reverse=True)


@pytest.mark.slow
@pytest.mark.parametrize("mean_vector,propagation", [("batch", "direct")])  # the default; all four: tiny models
def test_fast_location_equals_naive_rerun_on_smollm2(smollm2, mean_vector, propagation):
    model, tokenizer = smollm2.model, smollm2.tokenizer
    layout = head_layout(model.config)
    vocab = sampleable_ids(model.config.vocab_size, tokenizer, model.config)
    batch = copy_batch(vocab, 3, 6, 0, "locate", special_prefix(tokenizer))
    options = LocateOptions(mean_vector=mean_vector, propagation=propagation)
    fast = head_effects(model, batch, layout, options)
    naive = naive_head_effects(model, batch, layout, options)
    assert naive.abs().max() > 1e-3
    # tolerances relative where a tiny random model's effects exceed 1 (Phi's reach 83, GLM-4's 21; float32 rounding
    # of such sums alone is 1e-5 to 1e-4)
    scale = max(1.0, naive.abs().max().item())
    assert (fast - naive).abs().max().item() <= 1e-4 * scale
    # and to headpatch 0.1's path, which recomputed every layer and the whole vocabulary for every ablation
    assert (fast - whole_model_head_effects(model, batch, layout, options)).abs().max().item() <= 1e-5 * scale


@pytest.mark.parametrize("model_type", ["mistral", "gemma2", "gemma3_text", "cohere2"])
def test_location_past_a_sliding_window_equals_the_naive_rerun(model_type):
    """Proxy sequences of 15 tokens through a window of 6: the cache keeps every key, the model's mask keeps the
    window, so rolling the cache back stays exact."""
    model = windowed_model(model_type, window=6)
    layout = head_layout(model.config)
    batch = _tiny_batch(model)
    options = LocateOptions(max_rows=15)
    fast = head_effects(model, batch, layout, options)
    naive = naive_head_effects(model, batch, layout, options)
    assert naive.abs().max() > 1e-3
    assert (fast - naive).abs().max().item() <= 1e-4 * max(1.0, naive.abs().max().item())
