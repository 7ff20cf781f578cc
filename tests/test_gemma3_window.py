"""QRHead capture on the real Gemma-3-270M past its 512-token sliding window (skipped without the gemma3 packages)."""

from __future__ import annotations

import pytest
import torch

from headpatch.qrhead.capture import query_attention
from headpatch.qrhead.prompt import Prompt
from headpatch.qrhead.scoring import calibrated_token_scores

# layers 5 and 11 are global, 0 and 4 slide over 512 tokens; a prompt of 700 puts the first 188 keys out of reach
HEADS = [(5, 0), (0, 2), (4, 1), (11, 3)]
LENGTH, QUERY_START = 700, 650


@pytest.fixture(scope="module")
def gemma(gemma3):
    model = gemma3.model
    assert model.config.sliding_window == 512 and model.config.layer_types[5] == "full_attention"
    return model


def _eager_rows(model, ids, start):
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            attentions = model(ids, output_attentions=True).attentions
    finally:
        model.set_attn_implementation("sdpa")
    return torch.stack([attentions[layer][:, head, start:].mean(dim=1) for layer, head in HEADS], dim=1)


def test_capture_past_the_window_equals_eager_on_gemma3(gemma):
    ids = torch.randint(10, 20000, (1, LENGTH), generator=torch.Generator().manual_seed(0))
    captured = query_attention(gemma, ids, HEADS, QUERY_START)
    reference = _eager_rows(gemma, ids, QUERY_START)
    assert (captured - reference).abs().max() <= 1e-4
    out_of_window = QUERY_START - 511
    assert reference[0, 1:3, :out_of_window].abs().max() == 0  # sliding layers: nothing before their window
    assert reference[0, 0, :out_of_window].abs().max() > 0  # the global layer reads there


def test_calibration_with_a_cached_prefix_past_the_window_on_gemma3(gemma):
    generator = torch.Generator().manual_seed(1)
    prefix = torch.randint(10, 20000, (QUERY_START,), generator=generator).tolist()
    prompt = Prompt(prefix + torch.randint(10, 20000, (12,), generator=generator).tolist(), [(5, 300), (300, 640)],
                    QUERY_START)
    null = Prompt(prefix + [506, 236786, 236776], prompt.doc_spans, QUERY_START)
    calibrated = calibrated_token_scores(gemma, prompt, null, HEADS)
    full = _eager_rows(gemma, torch.tensor([prompt.input_ids]), QUERY_START)
    full_null = _eager_rows(gemma, torch.tensor([null.input_ids]), QUERY_START)
    assert (calibrated - (full[0, :, :QUERY_START] - full_null[0, :, :QUERY_START])).abs().max() <= 1e-4
