"""QRRetriever: heads read from a checkpoint or YAML, scoring, reranking, bad input, and SmolLM2 quality."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from headpatch.errors import HeadpatchError
from headpatch.loading import LoadedModel
from headpatch.qrhead import QRRetriever, builtin_examples, detect_heads, write_yaml
from headpatch.cli.qrhead import rerank
from tests.tiny import tiny_model

DOCS = ["The cat sat on the mat.", {"title": "Dogs", "text": "Dogs bark at night."},
        {"paragraph_text": "Birds sing in the morning.", "idx": "b"}]


@pytest.fixture(scope="module")
def tiny_lm(smollm2):
    """A tiny random Llama that reads SmolLM2's tokenizer (and its chat template)."""
    return tiny_model("llama", vocab_size=len(smollm2.tokenizer)), smollm2.tokenizer


def _checkpoint(tiny_lm, directory, headpatch=None):
    model, tokenizer = tiny_lm
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    if headpatch is not None:
        config = json.loads((directory / "config.json").read_text())
        (directory / "config.json").write_text(json.dumps({**config, "headpatch": headpatch}))
    return directory


def test_scores_and_rerank_agree(tiny_lm):
    model, tokenizer = tiny_lm
    retriever = QRRetriever(model, tokenizer, "2-1,0-3,1-0")
    scores = retriever.score("Who barks?", DOCS)
    assert len(scores) == 3 and len(set(scores)) == 3
    ranked = retriever.rerank("Who barks?", DOCS)
    assert [i for i, _ in ranked] == sorted(range(3), key=lambda i: -scores[i])
    assert retriever.rerank("Who barks?", DOCS, top_k=2) == ranked[:2]
    assert retriever.score_many(["Who barks?"], [DOCS], show_progress=False) == [scores]
    # other heads give other scores: the head list really selects what is summed
    assert QRRetriever(model, tokenizer, [(1, 1), (2, 3)]).score("Who barks?", DOCS) != scores


QUERIES = ["Who barks?", "What sings in the morning, and where does the cat sit?", "Cats?"]
DOC_SETS = [DOCS, DOCS[:2], ["A much longer passage about nothing in particular, " * 3, "Cats purr.", "x"]]


def test_batched_scores_equal_single_scores(tiny_lm):
    retriever = QRRetriever(*tiny_lm, "2-1,0-3,1-0,1-3")
    single = [retriever.score(q, d) for q, d in zip(QUERIES, DOC_SETS)]
    for batch_size in (2, 3, 8):
        batched = retriever.score_many(QUERIES, DOC_SETS, batch_size=batch_size, show_progress=False)
        assert [len(s) for s in batched] == [3, 2, 3]
        assert max(abs(a - b) for x, y in zip(batched, single) for a, b in zip(x, y)) <= 1e-4
    with pytest.raises(HeadpatchError, match="batch_size must be at least 1"):
        retriever.score_many(QUERIES, DOC_SETS, batch_size=0)
    with pytest.raises(HeadpatchError, match="3 queries but 2 document lists"):
        retriever.score_many(QUERIES, DOC_SETS[:2])


def test_out_of_memory_halves_the_batch(tiny_lm, monkeypatch):
    import headpatch.qrhead.retriever as module

    retriever = QRRetriever(*tiny_lm, "2-1,0-3")
    expected = retriever.score_many(QUERIES, DOC_SETS, batch_size=1, show_progress=False)
    real, sizes = module.calibrated_token_scores_batch, []

    def small_memory(model, prompts, nulls, heads):
        sizes.append(len(prompts))
        if len(prompts) > 1:
            raise torch.OutOfMemoryError("pretend the device is full")
        return real(model, prompts, nulls, heads)

    monkeypatch.setattr(module, "calibrated_token_scores_batch", small_memory)
    assert retriever.score_many(QUERIES, DOC_SETS, batch_size=3, show_progress=False) == expected
    assert sizes == [3, 1, 2, 1, 1]
    with pytest.raises(torch.OutOfMemoryError):
        monkeypatch.setattr(module, "calibrated_token_scores_batch",
                            lambda *_: (_ for _ in ()).throw(torch.OutOfMemoryError("full")))
        retriever.score("q", DOCS)


def test_smollm2_batched_scores_equal_single_scores(smollm2):
    examples = builtin_examples(3, 2, split="eval", seed=5)
    # different questions make prompts of different lengths, so the batch really pads
    questions = [examples[0].question, "Which code?", examples[2].question + " Answer briefly, please."]
    doc_sets = [e.documents for e in examples]
    retriever = QRRetriever(smollm2.model, smollm2.tokenizer, "3-0,3-5,11-2,17-8,17-1")
    single = [retriever.score(q, d) for q, d in zip(questions, doc_sets)]
    batched = retriever.score_many(questions, doc_sets, batch_size=3, show_progress=False)
    assert max(abs(a - b) for x, y in zip(batched, single) for a, b in zip(x, y)) <= 1e-4
    assert max(abs(v) for s in single for v in s) > 1e-2


def exported_metadata(qr_heads: list[str] | None, **identity: str) -> dict:
    """config.json's headpatch section of an export of a tiny Llama (tests/data/records_v1), with these QR heads
    (none: no QR part) and `identity` (source, base_model) replaced."""
    metadata = json.loads((Path(__file__).parent / "data" / "records_v1" / "config-headpatch.json").read_text())
    metadata.update(identity)
    if qr_heads is None:
        del metadata["qrhead"]
    else:
        metadata["qrhead"].update(heads=qr_heads, scores={head: 0.5 for head in qr_heads})
        metadata["qrhead"]["detection"]["k"] = len(qr_heads)
    return metadata


def test_from_pretrained_reads_heads_from_config(tiny_lm, tmp_path):
    heads = ["2-1", "0-3"]
    with_heads = _checkpoint(tiny_lm, tmp_path / "with", exported_metadata(heads))
    retriever = QRRetriever.from_pretrained(with_heads)
    assert retriever.heads == [(2, 1), (0, 3)]
    assert retriever.score("q", DOCS) == QRRetriever(*tiny_lm, heads).score("q", DOCS)

    without = _checkpoint(tiny_lm, tmp_path / "without", exported_metadata(None))
    with pytest.raises(HeadpatchError, match="has no QR heads in config.json") as info:
        QRRetriever.from_pretrained(without)
    assert "\n" not in str(info.value)

    cli = typer.Typer()
    cli.command()(rerank)
    cli.command("other")(lambda: None)  # keep `rerank` a named sub-command, as in headpatch's CLI
    passages = tmp_path / "passages.jsonl"
    passages.write_text("\n".join(json.dumps(d) for d in DOCS) + "\n")
    result = CliRunner().invoke(cli, ["rerank", str(with_heads), "--query", "q", "--docs", str(passages),
                                      "--top-k", "2", "-q"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    best = retriever.rerank("q", DOCS, 2)
    assert [line.split("\t")[1] for line in lines] == [str(i) for i, _ in best]
    failed = CliRunner().invoke(cli, ["rerank", str(without), "--query", "q", "--docs", str(passages)])
    assert isinstance(failed.exception, HeadpatchError)


def test_from_yaml(tiny_lm, tmp_path):
    model, tokenizer = tiny_lm
    path = write_yaml(tmp_path / "heads.yaml", [(1, 2), (2, 0)], "some/model")
    loaded = LoadedModel(model, tokenizer, None)
    assert QRRetriever.from_yaml(path, loaded).heads == [(1, 2), (2, 0)]
    too_big = write_yaml(tmp_path / "big.yaml", [(14, 22)], "meta-llama/Llama-3.1-8B-Instruct")
    with pytest.raises(HeadpatchError, match="head 14-22 is outside the model"):
        QRRetriever.from_yaml(too_big, loaded)


def test_bad_input(tiny_lm):
    model, tokenizer = tiny_lm
    retriever = QRRetriever(model, tokenizer, "0-0")
    with pytest.raises(HeadpatchError, match="outside the model"):
        QRRetriever(model, tokenizer, "3-0")
    with pytest.raises(HeadpatchError, match="outside the model"):
        QRRetriever(model, tokenizer, ["0-4"])
    with pytest.raises(HeadpatchError, match="empty"):
        retriever.score("q", [])
    with pytest.raises(HeadpatchError, match="neither a string nor a mapping"):
        retriever.score("q", [3])


def test_context_limit_and_truncation(tiny_lm):
    model, tokenizer = tiny_lm
    assert model.config.max_position_embeddings == 512
    long_docs = [" ".join(["word"] * 300), "short one", " ".join(["other"] * 300)]
    with pytest.raises(HeadpatchError, match="more than the model's context of 512"):
        QRRetriever(model, tokenizer, "0-0").score("q", long_docs)
    scores = QRRetriever(model, tokenizer, "0-0", truncate=True).score("q", long_docs)
    assert len(scores) == 3


def test_smollm2_ranks_the_planted_passage_first(smollm2):
    model, tokenizer = smollm2.model, smollm2.tokenizer
    # every passage carries a planted code (distractors), so only heads that match the project can find the gold
    detected = detect_heads(model, tokenizer, builtin_examples(6, 4, split="detect"))
    qr_heads = detected.ranked()[:16]
    held_out = builtin_examples(8, 4, split="eval")
    qr = QRRetriever(model, tokenizer, qr_heads)
    hits = sum(qr.rerank(e.question, e.documents, 1)[0][0] == e.gold_positions()[0] for e in held_out)
    print(f"SmolLM2 recall@1 of its top-16 QR heads on {len(held_out)} held-out built-in examples: {hits}")
    # chance is 2 of 8; seen: 7 (three random 16-head sets: 3, 5, 5)
    assert hits >= 6


def test_from_pretrained_frames_prompts_as_at_detection(tiny_lm, tmp_path):
    """A record without a layout (written before layouts existed) means the chat template; one naming the public
    implementation's Qwen-2.5 frame is scored on that frame unless the caller overrides it."""
    heads = ["2-1", "0-3"]
    metadata = exported_metadata(heads)
    assert "layout" not in metadata["qrhead"]["detection"]["prompt_layout"]
    assert QRRetriever.from_pretrained(_checkpoint(tiny_lm, tmp_path / "old", metadata)).layout.name == "chat-template"
    metadata["qrhead"]["detection"]["prompt_layout"]["layout"] = "qrhead-qwen2.5"
    framed = QRRetriever.from_pretrained(_checkpoint(tiny_lm, tmp_path / "framed", metadata))
    assert framed.layout.name == "qrhead-qwen2.5"
    assert framed.score("q", DOCS) == QRRetriever(*tiny_lm, heads, layout="qrhead-qwen2.5").score("q", DOCS)
    assert framed.score("q", DOCS) != QRRetriever(*tiny_lm, heads).score("q", DOCS)
    overridden = QRRetriever.from_pretrained(tmp_path / "framed", layout="chat-template")
    assert overridden.score("q", DOCS) == QRRetriever(*tiny_lm, heads).score("q", DOCS)
