"""QRHead detection: per-head scores over labelled examples, top-K metadata, the `qrhead detect` command."""

from __future__ import annotations

import json

import pytest
import torch
import typer
from typer.testing import CliRunner

from headpatch import __version__
from headpatch.errors import HeadpatchError
from headpatch.qrhead import builtin_examples, default_k, detect_heads, qrhead_part, read_yaml, write_examples
from headpatch.cli.qrhead import app as qrhead_app
from headpatch.qrhead.detect import document_head_scores
from tests.tiny import tiny_model


@pytest.fixture(scope="module")
def tiny_lm(smollm2):
    """A tiny random Llama that reads SmolLM2's tokenizer (and its chat template)."""
    return tiny_model("llama", vocab_size=len(smollm2.tokenizer)), smollm2.tokenizer


def test_head_score_is_mean_gold_score(tiny_lm):
    model, tokenizer = tiny_lm
    examples = builtin_examples(3, 3, seed=5)
    result = detect_heads(model, tokenizer, examples)
    assert result.scores.shape == (3, 4) and result.examples == 3
    heads = [(layer, head) for layer in range(3) for head in range(4)]
    expected = torch.stack([
        document_head_scores(model, tokenizer, e, heads)[:, e.gold_positions()].sum(-1) for e in examples
    ]).mean(0)
    assert torch.allclose(result.scores.flatten(), expected, atol=1e-6)
    ranked = result.ranked()
    assert sorted(ranked) == heads
    values = [float(result.scores[h]) for h in ranked]
    assert values == sorted(values, reverse=True)


def test_metadata_and_default_k(tiny_lm):
    model, tokenizer = tiny_lm
    result = detect_heads(model, tokenizer, builtin_examples(2, 2))
    assert default_k(model) == 12  # 16 by the paper's rule, capped at the 12 heads the model has
    part = qrhead_part(result, 4, "mine.json", chat_template=True)
    ranked = [f"{l}-{h}" for l, h in result.ranked()]
    assert list(part.heads) == ranked[:4] and list(part.scores) == ranked  # every head's score, rank order
    assert part.scores[ranked[0]] == round(float(result.scores.max()), 6)
    detection = part.detection
    assert detection.data == "mine.json" and detection.examples == 2 and detection.k == 4
    assert detection.headpatch_version == __version__
    assert "N/A" in detection.calibration and "mean - 2 std" in detection.mask
    assert detection.prompt_layout["turn_markers"] == "chat template"
    with pytest.raises(HeadpatchError, match="out of range"):
        qrhead_part(result, 13, "x", True)
    with pytest.raises(HeadpatchError, match="no detection examples"):
        detect_heads(model, tokenizer, [])


def test_detect_command(tiny_lm, tmp_path):
    model, tokenizer = tiny_lm
    checkpoint = tmp_path / "tiny"
    model.save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)
    data = write_examples(builtin_examples(2, 3, seed=9), tmp_path / "detect.jsonl")
    cli = typer.Typer()
    cli.add_typer(qrhead_app, name="qrhead")
    out = tmp_path / "qrheads.json"
    result = CliRunner().invoke(cli, ["qrhead", "detect", str(checkpoint), "--data", str(data), "-o", str(out),
                                      "--k", "3", "--yaml", str(tmp_path / "heads.yaml"), "-q"])
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    section = record["qrhead"]
    assert len(section["heads"]) == 3 and len(section["scores"]) == 12
    assert section["detection"]["data"] == "detect.jsonl" and section["detection"]["examples"] == 2
    assert record["architecture"]["num_heads"] == 4
    assert [f"{l}-{h}" for l, h in read_yaml(tmp_path / "heads.yaml").heads] == section["heads"]
    assert section["heads"][0] in result.output

    builtin = CliRunner().invoke(cli, ["qrhead", "detect", str(checkpoint), "-o", str(out), "--examples", "1",
                                       "--docs-per-example", "2", "--overwrite", "-q"])
    assert builtin.exit_code == 0, builtin.output
    detection = json.loads(out.read_text())["qrhead"]["detection"]
    assert detection["data"].startswith("built-in") and detection["examples"] == 1 and detection["k"] == 12

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"idx": 1, "question": "q", "paragraphs": [], "gt_docs": []}]))
    failed = CliRunner().invoke(cli, ["qrhead", "detect", str(checkpoint), "--data", str(bad), "-o", str(out),
                                      "--overwrite"])
    assert isinstance(failed.exception, HeadpatchError) and "empty" in str(failed.exception)
