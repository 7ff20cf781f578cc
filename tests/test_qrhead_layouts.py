"""Prompt layouts: the public QRHead implementation's hard-coded Llama-3 and Qwen-2.5 prompts, token for token.

The oracle below is written from the public implementation's documented behaviour (AttnBasedRetriever.get_prompt and
compose_scoring_prompt in princeton-pli/QRHead): its prompt string, tokenized with the tokenizer's defaults, and its
spans from a character-to-token map, the query span starting at the late instruction."""

from __future__ import annotations

import pytest

from headpatch.errors import HeadpatchError
from headpatch.options import PROMPT_LAYOUT_NAMES, QRHeadOptions
from headpatch.qrhead.data import Document, example_from_record
from headpatch.qrhead.prompt import INSTRUCTION, PROMPT_LAYOUTS, build_prompt, prompt_layout, prompt_pair
from tests.conftest import invoke

REFERENCE = {
    "qrhead-llama3": ("<|start_header_id|>user<|end_header_id|>",
                      "<|eot_id|><|start_header_id|>assistant<|end_header_id|>", " \n\n"),
    "qrhead-qwen2.5": ("<|im_start|>user", "<|im_end|>\n<|im_start|>assistant", "\n\n"),
}
DOCUMENTS = [Document("a", "Paris", "Paris is the capital of France."), Document("b", None, "No title here, ünïcode."),
             Document("c", "", "An empty title still gets its line upstream.")]
QUESTION = "What is the capital of France?"


def _reference_prompt(name: str, question: str, documents: list[Document]) -> tuple[str, list[str], str]:
    prefix, suffix, separator = REFERENCE[name]
    prompt = prefix + " Here are some paragraphs:"
    contents = []
    for i, doc in enumerate(documents):
        text = doc.text if doc.title is None else doc.title + "\n" + doc.text
        contents.append(f"[{i + 1}] {text}")
        prompt += separator + contents[-1]
    query = INSTRUCTION + separator + "Query:" + f" {question}" + suffix
    return prompt + separator + query, contents, query


def _reference_spans(tokenizer, prompt: str, contents: list[str], query: str):
    encoded = tokenizer(prompt, return_offsets_mapping=True)
    token_at = {}
    for i, (start, end) in enumerate(encoded["offset_mapping"]):
        for char in range(start, end):
            token_at[char] = i

    def span(content: str) -> tuple[int, int]:
        start = prompt.index(content)
        return token_at[start], token_at[start + len(content) - 1]

    return encoded["input_ids"], [span(c) for c in contents], span(query)[0]


@pytest.fixture(scope="module")
def tokenizer():
    """A byte-level BPE tokenizer that, like Llama-3's, adds a BOS token and knows both families' turn markers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    markers = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|im_start|>",
               "<|im_end|>"]
    model = Tokenizer(models.BPE())
    model.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    model.decoder = decoders.ByteLevel()
    corpus = [INSTRUCTION, QUESTION, *(f"{d.title} {d.text}" for d in DOCUMENTS), "Here are some paragraphs: Query:"]
    model.train_from_iterator(corpus * 20, trainers.BpeTrainer(
        vocab_size=400, special_tokens=markers, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    model.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                         special_tokens=[("<|begin_of_text|>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=model, bos_token="<|begin_of_text|>")


@pytest.mark.parametrize("name", list(REFERENCE))
@pytest.mark.parametrize("question", [QUESTION, "N/A"])
def test_a_reference_layout_reproduces_the_public_prompt_token_for_token(tokenizer, name, question):
    text, contents, query = _reference_prompt(name, question, DOCUMENTS)
    ids, spans, query_start = _reference_spans(tokenizer, text, contents, query)
    prompt = build_prompt(tokenizer, question, DOCUMENTS, prompt_layout(name))
    assert prompt.input_ids == ids and ids[0] == tokenizer.bos_token_id
    assert prompt.doc_spans == [(start, end + 1) for start, end in spans]  # upstream's ends are inclusive
    assert prompt.query_start == query_start
    assert tokenizer.decode(prompt.input_ids[prompt.doc_spans[2][0]:prompt.doc_spans[2][1]]).startswith("[3] \n")


def test_the_chat_template_layout_keeps_its_title_rule(tokenizer):
    """The default layout is unchanged: no title line for an empty title."""
    tokenizer.chat_template = None
    prompt = build_prompt(tokenizer, QUESTION, DOCUMENTS)
    assert "[3] An empty title" in tokenizer.decode(prompt.input_ids)
    assert prompt_pair(tokenizer, QUESTION, DOCUMENTS, prompt_layout("qrhead-qwen2.5"))[0].query_start > 0


def test_a_missing_title_and_an_empty_one_stay_apart_when_read():
    record = {"idx": 1, "question": "q", "gt_docs": [0], "paragraphs": [
        {"idx": 0, "paragraph_text": "x"}, {"idx": 1, "title": "", "paragraph_text": "y"},
        {"idx": 2, "title": None, "paragraph_text": "z"}]}
    assert [d.title for d in example_from_record(record, "t").documents] == [None, "", None]


def test_layout_names_are_one_list():
    assert tuple(PROMPT_LAYOUTS) == PROMPT_LAYOUT_NAMES
    with pytest.raises(HeadpatchError, match="unknown prompt layout 'llama'; available: chat-template"):
        prompt_layout("llama")
    with pytest.raises(HeadpatchError, match="unknown prompt layout"):
        QRHeadOptions(layout="llama")


def test_an_unknown_layout_on_the_command_line_is_one_line(tmp_path):
    """Refused before the model is read (the model named here does not exist), and by export's flag too."""
    result = invoke("qrhead", "detect", "no/such-model", "-o", str(tmp_path / "q.json"), "--prompt-layout", "llama")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1 and "unknown prompt layout 'llama'" in result.stderr
    result = invoke("export", "no/such-model", "-o", str(tmp_path / "out"), "--qrhead-data", "builtin",
                    "--qrhead-layout", "llama")
    assert result.exit_code == 2 and "unknown prompt layout 'llama'" in result.stderr
    assert sorted(tmp_path.iterdir()) == []
