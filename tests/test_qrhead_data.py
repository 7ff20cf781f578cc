"""QRHead data: the public JSON/JSONL format, its validation, the built-in set and the prompt layout."""

from __future__ import annotations

import json
import re

import pytest

from headpatch.errors import HeadpatchError
from headpatch.qrhead.builtin import builtin_examples, passages, split_projects
from headpatch.qrhead.data import read_examples, write_examples
from headpatch.qrhead.prompt import INSTRUCTION, NULL_QUERY, build_prompt, prompt_pair

RECORD = {
    "idx": "q1",
    "question": "Who wrote it?",
    "paragraphs": [
        {"idx": 0, "title": "A", "paragraph_text": "First passage."},
        {"idx": 1, "title": "B", "paragraph_text": "Second passage."},
    ],
    "gt_docs": [1],
}


def _write(tmp_path, records, name="d.json"):
    path = tmp_path / name
    path.write_text(json.dumps(records))
    return path


def test_json_and_jsonl_read_the_same(tmp_path):
    from_json = read_examples(_write(tmp_path, [RECORD]))
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text(json.dumps(RECORD) + "\n\n" + json.dumps({**RECORD, "idx": "q2"}) + "\n")
    from_jsonl = read_examples(jsonl)
    assert from_json[0] == from_jsonl[0]
    assert [e.idx for e in from_jsonl] == ["q1", "q2"]
    assert from_json[0].gold_positions() == [1]
    assert from_json[0].documents[0].title == "A"


def test_write_read_round_trip(tmp_path):
    examples = builtin_examples(3, 4, seed=7)
    for name in ("out.json", "out.jsonl"):
        assert read_examples(write_examples(examples, tmp_path / name)) == examples


@pytest.mark.parametrize(
    "change, message",
    [
        ({"paragraphs": []}, "document list 'paragraphs' is empty"),
        ({"gt_docs": [1, 7]}, "gt_docs names documents that do not exist: 7"),
        ({"gt_docs": []}, "'gt_docs' must be a non-empty list of document ids"),
        ({"paragraphs": [RECORD["paragraphs"][0], {**RECORD["paragraphs"][1], "idx": "0"}]},
         "duplicate document ids 0"),
        ({"question": None}, "'question' must be a string"),
    ],
)
def test_bad_records_are_one_line_errors(tmp_path, change, message):
    with pytest.raises(HeadpatchError, match=message) as info:
        read_examples(_write(tmp_path, [{**RECORD, **change}]))
    assert "\n" not in str(info.value)
    assert "q1" in str(info.value)


def test_empty_file_and_bad_json(tmp_path):
    with pytest.raises(HeadpatchError, match="holds no examples"):
        read_examples(_write(tmp_path, []))
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    with pytest.raises(HeadpatchError, match="not valid JSONL"):
        read_examples(bad)
    with pytest.raises(HeadpatchError, match="does not exist"):
        read_examples(tmp_path / "missing.json")


def _planted(text):
    """(project, code) of every planted sentence in a passage."""
    return re.findall(r"The secret code of the (\w+) project is ([a-z]+-\d{3})\.", text)


def test_builtin_set_is_reproducible_and_planted():
    first = builtin_examples(5, 6, split="detect", seed=3)
    assert first == builtin_examples(5, 6, split="detect", seed=3)
    assert builtin_examples(2, 6, split="detect", seed=3) == first[:2]
    assert first != builtin_examples(5, 6, split="detect", seed=4)
    for example in first:
        assert len(example.documents) == 6 and len(example.gold) == 1
        asked = example.question.removeprefix("What is the secret code of the ").removesuffix(" project?")
        facts = [_planted(d.text) for d in example.documents]
        # every passage carries exactly one fact, each about its own project with its own code
        assert all(len(f) == 1 for f in facts)
        projects, codes = zip(*(f[0] for f in facts))
        assert len(set(projects)) == 6 and len(set(codes)) == 6
        holders = [d.idx for d, project in zip(example.documents, projects) if project == asked]
        assert holders == list(example.gold)
    # the gold passage is not always in the same place
    assert len({e.gold_positions()[0] for e in builtin_examples(20, 6, seed=3)}) > 2


def test_detect_and_eval_splits_are_disjoint():
    detect = {d.text for d in passages("detect")}
    evaluate = {d.text for d in passages("eval")}
    assert detect and evaluate and not detect & evaluate
    detect_ids = {d.idx for e in builtin_examples(20, 5, "detect") for d in e.documents}
    eval_ids = {d.idx for e in builtin_examples(20, 5, "eval") for d in e.documents}
    assert not detect_ids & eval_ids
    # nor do they share a project name, planted or asked about
    detect_projects = {p for e in builtin_examples(20, 5, "detect") for d in e.documents for p, _ in _planted(d.text)}
    eval_projects = {p for e in builtin_examples(20, 5, "eval") for d in e.documents for p, _ in _planted(d.text)}
    assert detect_projects and eval_projects and not detect_projects & eval_projects
    assert set(split_projects("detect")) | set(split_projects("eval")) >= detect_projects | eval_projects
    with pytest.raises(HeadpatchError, match="unknown split"):
        builtin_examples(1, 5, "train")
    most = len(split_projects("detect"))
    assert len(builtin_examples(1, most)[0].documents) == most
    with pytest.raises(HeadpatchError, match=f"docs_per_example <= {most}"):
        builtin_examples(1, most + 1)


def test_prompt_spans_cover_documents_and_query(smollm2):
    tokenizer = smollm2.tokenizer
    example = builtin_examples(1, 3, split="eval")[0]
    prompt, null = prompt_pair(tokenizer, example.question, example.documents)
    decode = tokenizer.decode
    for i, ((start, end), doc) in enumerate(zip(prompt.doc_spans, example.documents)):
        text = decode(prompt.input_ids[start:end])
        assert text.strip().startswith(f"[{i + 1}] {doc.title}\n")
        assert text.strip().endswith(doc.text[-20:])
    assert prompt.doc_spans[-1][1] <= prompt.query_start
    tail = decode(prompt.input_ids[prompt.query_start:])
    assert tail.startswith(INSTRUCTION) and f"Query: {example.question}" in tail
    # the model's own chat template supplies the turn markers around the user message
    assert decode(prompt.input_ids).startswith("<|im_start|>") and tail.endswith("<|im_start|>assistant\n")
    assert decode(null.input_ids[null.query_start:]).startswith(INSTRUCTION)
    assert f"Query: {NULL_QUERY}" in decode(null.input_ids)
    assert null.input_ids[: null.query_start] == prompt.input_ids[: prompt.query_start]


def test_plain_layout_without_chat_template(smollm2):
    import copy

    tokenizer = copy.deepcopy(smollm2.tokenizer)
    tokenizer.chat_template = None
    example = builtin_examples(1, 2)[0]
    prompt = build_prompt(tokenizer, example.question, example.documents)
    text = tokenizer.decode(prompt.input_ids)
    assert "<|im_start|>" not in text and text.startswith("Here are some paragraphs:")
    assert tokenizer.decode(prompt.input_ids[prompt.query_start:]).startswith(INSTRUCTION)
    with pytest.raises(HeadpatchError, match="empty"):
        build_prompt(tokenizer, "q", [])
