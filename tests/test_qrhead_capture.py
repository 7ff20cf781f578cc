"""Captured query-span attention equals a plain eager forward with output_attentions=True; the pass stops early;
padded batches equal single prompts."""

from __future__ import annotations

import pytest
import torch
import transformers
from packaging.version import Version
from transformers import AutoModelForCausalLM

from headpatch.errors import HeadpatchError
from headpatch.qrhead.builtin import builtin_examples
from headpatch.qrhead.capture import prefill, query_attention
from headpatch.qrhead.detect import document_head_scores
from headpatch.qrhead.prompt import Prompt, prompt_pair
from headpatch.qrhead.scoring import calibrated_token_scores, calibrated_token_scores_batch, masked_document_sums
from tests.tiny import tiny_model, windowed_model

# GPT-J's modeling code calls the attention interface from transformers 5.24 on; before, capture refuses it
_GPTJ = pytest.param("gptj", marks=pytest.mark.skipif(
    Version(transformers.__version__) < Version("5.24"), reason="GPT-J bypasses the attention interface before 5.24"))
ARCHITECTURES = ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "olmo2", "gpt2",
                 "gpt_neox", "opt", _GPTJ,
                 "qwen2_moe", "qwen3_moe", "olmoe", "gpt_oss", "deepseek_v2", "deepseek_v3", "glm4", "glm4_moe",
                 "cohere", "cohere2", "granite", "granitemoe", "smollm3", "llama4_text", "phi", "olmo3", "exaone4",
                 "ernie4_5", "apertus", "seed_oss", "mixtral", "starcoder2"]
HEADS = [(2, 1), (0, 3), (1, 0), (1, 3), (0, 0)]  # unsorted, several per layer, GQA-shared key heads
TOL = 1e-4


# Sliding-window models with a window of 8 tokens and prompts of 37 (over four windows)
WINDOWED = ["mistral", "gemma2", "gemma3_text", "cohere2", "olmo3", "exaone4", "gpt_oss"]


def eager_query_attention(model, input_ids, heads, query_start):
    """The reference: full eager forward, attention probabilities of the query-span rows averaged per head."""
    with torch.no_grad():
        attentions = model(input_ids, output_attentions=True).attentions
    return torch.stack([attentions[layer][:, head, query_start:].mean(dim=1) for layer, head in heads], dim=1)


def _eager(model):
    model.set_attn_implementation("eager")
    return model


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_capture_equals_eager_output_attentions(model_type):
    model = tiny_model(model_type)
    ids = torch.randint(3, 300, (2, 37), generator=torch.Generator().manual_seed(1))
    captured = query_attention(model, ids, HEADS, query_start=29)  # the model's default (mostly sdpa) path
    reference = eager_query_attention(_eager(model), ids, HEADS, 29)
    assert captured.shape == (2, len(HEADS), 37)
    assert (captured - reference).abs().max() <= TOL
    assert (query_attention(model, ids, HEADS, 29) - reference).abs().max() <= TOL  # delegating to eager
    # each row is a probability distribution averaged over query rows; gpt-oss's sink logit takes its share
    sums = captured.sum(-1)
    if model_type == "gpt_oss":
        assert (sums < 0.999).all()
    else:
        assert torch.allclose(sums, torch.ones(2, len(HEADS)), atol=1e-5)


@pytest.mark.parametrize(("model_type", "window"), [(t, None) for t in ("llama", "qwen3", "gemma", "phi3")] +
                         [(t, 8) for t in WINDOWED])
def test_cached_prefix_and_calibration_equal_full_runs(model_type, window):
    """Also past a sliding window of 8 (the 30-token prefix spans almost four), global and sliding layers mixed."""
    model = tiny_model(model_type) if window is None else windowed_model(model_type, window)
    generator = torch.Generator().manual_seed(2)
    prefix = torch.randint(3, 300, (30,), generator=generator).tolist()
    prompt = Prompt(prefix + torch.randint(3, 300, (9,), generator=generator).tolist(), [(2, 12), (12, 30)], 30)
    null = Prompt(prefix + [5, 6, 7, 8], [(2, 12), (12, 30)], 30)
    cache = prefill(model, torch.tensor([prefix]), last_layer=2)
    assert cache.get_seq_length() == 30
    cached = query_attention(model, torch.tensor([prompt.input_ids[30:]]), HEADS, 30, cache)
    calibrated = calibrated_token_scores(model, prompt, null, HEADS)
    _eager(model)
    full = eager_query_attention(model, torch.tensor([prompt.input_ids]), HEADS, 30)
    full_null = eager_query_attention(model, torch.tensor([null.input_ids]), HEADS, 30)
    assert (cached - full).abs().max() <= TOL
    expected = full[0, :, :30] - full_null[0, :, :30]
    assert calibrated.shape == (len(HEADS), 30)
    assert (calibrated - expected).abs().max() <= TOL
    assert calibrated.abs().max() > 1e-3  # the N/A query really changes the attention, so the test can fail


def test_forward_stops_after_last_needed_layer():
    model = tiny_model("llama", num_hidden_layers=4)
    entered: list[int] = []
    handles = [layer.register_forward_pre_hook(lambda _m, _a, i=i: entered.append(i))
               for i, layer in enumerate(model.model.layers)]
    handles.append(model.lm_head.register_forward_pre_hook(lambda _m, _a: entered.append(-1)))
    try:
        query_attention(model, torch.randint(3, 300, (1, 20)), [(1, 2), (0, 1)], 15)
        assert entered == [0, 1]
        entered.clear()
        prefill(model, torch.randint(3, 300, (1, 20)), last_layer=2)
        assert entered == [0, 1, 2]
    finally:
        for handle in handles:
            handle.remove()


def test_capture_restores_the_model_and_rejects_bad_spans():
    model = tiny_model("qwen2")
    before = model.config._attn_implementation
    with pytest.raises(HeadpatchError, match="outside the new tokens"):
        query_attention(model, torch.randint(3, 300, (1, 10)), [(0, 0)], 10)
    query_attention(model, torch.randint(3, 300, (1, 10)), [(0, 0)], 5)
    assert model.config._attn_implementation == before


class _PrivateAttention(torch.nn.Module):
    """An attention layer computing its output without transformers' attention interface, as some modeling code does."""

    def forward(self, hidden_states, *args, **kwargs):
        return torch.zeros_like(hidden_states), None


def test_capture_refuses_a_layer_whose_attention_bypasses_the_interface():
    model = tiny_model("llama", num_hidden_layers=4)
    model.model.layers[1].self_attn = _PrivateAttention()
    ids = torch.randint(3, 300, (1, 12), generator=torch.Generator().manual_seed(5))
    # layers 0 and 2 still pass through the interface, so their heads are captured
    captured = query_attention(model, ids, [(0, 1), (2, 3)], 6)
    assert torch.allclose(captured.sum(-1), torch.ones(1, 2), atol=1e-5)
    assert (captured[:, :1] - eager_query_attention(_eager(model), ids, [(0, 1)], 6)).abs().max() <= TOL
    for heads in ([(1, 0)], [(0, 1), (1, 2)], [(1, 2), (3, 0)]):
        with pytest.raises(HeadpatchError, match="attention of layer 1 of LlamaForCausalLM does not go through"):
            query_attention(model, ids, heads, 6)
    with pytest.raises(HeadpatchError, match="layer 1 "):
        prefill(model, ids, last_layer=1)


def test_smollm2_document_scores_equal_eager(smollm2, smollm2_dir):
    model, tokenizer = smollm2.model, smollm2.tokenizer
    example = builtin_examples(1, 2, split="eval")[0]
    heads = [(l, h) for l in (3, 11, 17) for h in range(9)]
    prompt, null = prompt_pair(tokenizer, example.question, example.documents)
    captured = document_head_scores(model, tokenizer, example, heads)

    eager = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32, attn_implementation="eager").eval()
    start = prompt.query_start
    real = eager_query_attention(eager, torch.tensor([prompt.input_ids]), heads, start)[0, :, :start]
    calibration = eager_query_attention(eager, torch.tensor([null.input_ids]), heads, start)[0, :, :start]
    reference = masked_document_sums(real - calibration, prompt.doc_spans)
    assert captured.shape == (len(heads), 2)
    assert (captured - reference).abs().max() <= TOL
    assert reference.abs().max() > 1e-2


def test_outlier_mask_zeroes_tokens_at_or_below_mean_minus_two_std():
    row = torch.tensor([[1.0] * 9 + [-10.0] + [0.5, 0.7] + [4.0]])
    # document 0: the -10 lies far below mean - 2 std and is dropped; document 1: nothing is that far out;
    # document 2: a single token has no spread and is kept
    sums = masked_document_sums(row, [(0, 10), (10, 12), (12, 13)])
    assert torch.allclose(sums, torch.tensor([[9.0, 1.2, 4.0]]))
    per_row = masked_document_sums(torch.stack([row[0], -row[0]]), [(0, 10)])
    assert torch.allclose(per_row, torch.tensor([[9.0], [-9.0 + 10.0]]))


def _random_prompt(generator, prefix_len, tail_len, spans):
    ids = torch.randint(3, 300, (prefix_len + tail_len,), generator=generator).tolist()
    return Prompt(ids, spans, prefix_len)


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_padded_batch_equals_single_prompts(model_type):
    model = tiny_model(model_type)
    generator = torch.Generator().manual_seed(3)
    # prefixes and both query tails differ in length, so the batch pads on the left and on the right
    prompts = [_random_prompt(generator, 30, 9, [(2, 12), (12, 30)]),
               _random_prompt(generator, 22, 5, [(1, 10), (10, 22)]),
               _random_prompt(generator, 26, 7, [(3, 26)])]
    nulls = [Prompt(p.input_ids[:p.query_start] + [5, 6, 7][:1 + i], p.doc_spans, p.query_start)
             for i, p in enumerate(prompts)]
    batched = calibrated_token_scores_batch(model, prompts, nulls, HEADS)
    for prompt, null, scores in zip(prompts, nulls, batched):
        single = calibrated_token_scores(model, prompt, null, HEADS)
        assert scores.shape == single.shape == (len(HEADS), prompt.query_start)
        assert (scores - single).abs().max() <= TOL
    assert batched[1].abs().max() > 1e-3  # a padded member carries real signal, so the test can fail


def test_padded_rows_and_keys_are_ignored():
    model = tiny_model("llama")
    ids = torch.randint(3, 300, (1, 20), generator=torch.Generator().manual_seed(4))
    single = query_attention(model, ids, HEADS, 12)
    # the same tokens behind 6 left pads and before 3 right pads; the pads are tokens the model could attend to
    padded = torch.cat([torch.full((1, 6), 7), ids, torch.full((1, 3), 9)], dim=1)
    mask = torch.cat([torch.zeros(1, 6), torch.ones(1, 20), torch.zeros(1, 3)], dim=1).long()
    captured = query_attention(model, padded, HEADS, 18, attention_mask=mask)
    assert (captured[:, :, 6:26] - single).abs().max() <= TOL
    assert captured[:, :, :6].abs().max() == 0 and captured[:, :, 26:].abs().max() == 0
    unmasked = query_attention(model, padded, HEADS, 18)[:, :, 6:26]
    assert (unmasked - single).abs().max() > 1e-3  # without the mask the pads would change the result
    with pytest.raises(HeadpatchError, match="attention mask of shape"):
        query_attention(model, padded, HEADS, 18, attention_mask=mask[:, 1:])




@pytest.mark.parametrize("model_type", WINDOWED)
def test_capture_past_a_sliding_window_equals_eager(model_type):
    model = windowed_model(model_type)
    ids = torch.randint(3, 300, (2, 37), generator=torch.Generator().manual_seed(5))
    captured = query_attention(model, ids, HEADS, query_start=29)
    reference = eager_query_attention(_eager(model), ids, HEADS, 29)
    assert (captured - reference).abs().max() <= TOL
    # the window really cut the sliding layers off: no weight on keys a whole window before the first query row
    sliding = [i for i, (layer, _) in enumerate(HEADS) if model.config.layer_types[layer] == "sliding_attention"] \
        if getattr(model.config, "layer_types", None) else list(range(len(HEADS)))
    assert sliding and reference[:, sliding, :20].abs().max() == 0
