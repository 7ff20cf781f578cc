"""NIAH and MDQA inputs: the fact sits at the requested depth or position, prompts use the chat template."""

from __future__ import annotations

import copy as stdlib_copy

import pytest

from headpatch.evaluation.facts import MDQA_FACTS, NEEDLES
from headpatch.evaluation.generation import greedy_answers, length_batches, prompt_ids
from headpatch.evaluation.registry import setting_for
from headpatch.evaluation.tasks import mdqa, niah
from headpatch.evaluation.tasks.mdqa import MdqaSetting
from headpatch.evaluation.tasks.niah import NiahSetting


@pytest.fixture(scope="module")
def tokenizer(smollm2):
    return smollm2.tokenizer


@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_needle_sits_at_the_requested_depth(tokenizer, depth):
    haystack = niah.haystack_ids(tokenizer, seed=0)
    needle = NEEDLES[0].statement
    context, placed_at = niah.place_needle(tokenizer, haystack, needle, 1024, depth)
    assert context.count(needle) == 1
    assert abs(len(tokenizer(context, add_special_tokens=False)["input_ids"]) - 1024) <= 8
    # moved back to a sentence end, never more than one (long) sentence away from the requested depth
    assert depth - 0.1 <= placed_at <= depth
    before = context[: context.index(needle)]
    haystack_tokens = 1024 - len(tokenizer(" " + needle, add_special_tokens=False)["input_ids"])
    assert len(tokenizer(before, add_special_tokens=False)["input_ids"]) == pytest.approx(
        placed_at * haystack_tokens, abs=3)
    if depth == 0.0:
        assert context.startswith(needle)
    elif depth == 1.0:
        assert context.endswith(needle)
    else:
        assert before.rstrip().endswith((".", "!", "?"))


def test_needle_grid_and_prompt(tokenizer):
    setting = NiahSetting(lengths=(128, 256), depths=(0.0, 0.5, 1.0), needles=4, max_new_tokens=8,
                          batch_tokens=4096)
    cases = niah.cases(tokenizer, setting, [128, 256], seed=0)
    assert [(c.length, c.depth, c.needle) for c in cases] == [
        (n, d, f) for n in (128, 256) for d in (0.0, 0.5, 1.0) for f in NEEDLES[:4]]
    assert niah.cases(tokenizer, setting, [128, 256], seed=0) == cases
    assert niah.cases(tokenizer, setting, [128, 256], seed=1) != cases
    text = niah.content(cases[0])
    assert text.count(cases[0].needle.question) == 2 and cases[0].context in text
    assert text.index(cases[0].context) < text.rindex(cases[0].needle.question)


def test_prompts_use_the_chat_template_when_there_is_one(tokenizer):
    ids = prompt_ids(tokenizer, "What is 2 + 2?")
    text = tokenizer.decode(ids)
    assert text.count("<|im_start|>user\nWhat is 2 + 2?<|im_end|>") == 1
    assert text.endswith("<|im_start|>assistant\n")
    plain = stdlib_copy.deepcopy(tokenizer)
    plain.chat_template = None
    assert tokenizer.decode(prompt_ids(plain, "What is 2 + 2?")) == "What is 2 + 2?\nAnswer:"


def test_gold_passage_moves_through_every_position():
    setting = MdqaSetting(passages=5, passage_words=40, facts=4, max_new_tokens=8, batch_tokens=4096)
    cases = mdqa.cases(setting, seed=0)
    assert len(cases) == 4 * 5
    for fact in MDQA_FACTS[:4]:
        mine = [case for case in cases if case.fact == fact]
        assert [case.position for case in mine] == list(range(5))
        distractors = None
        for case in mine:
            assert len(case.documents) == 5
            holding = [i for i, doc in enumerate(case.documents) if fact.statement in doc]
            assert holding == [case.position]
            others = [doc for i, doc in enumerate(case.documents) if i != case.position]
            assert distractors in (None, others)  # only the gold passage moves
            distractors = others
            text = mdqa.content(case)
            gold_at = text.index(f"Document [{case.position + 1}] ")
            assert gold_at < text.index(fact.statement)
            if case.position < 4:
                assert text.index(fact.statement) < text.index(f"Document [{case.position + 2}] ")
            assert text.count(fact.question) == 2
    assert mdqa.cases(setting, seed=0) == cases and mdqa.cases(setting, seed=1) != cases


def test_full_mdqa_setting_plants_counterfactuals():
    cases = mdqa.cases(setting_for("mdqa", quick=False), seed=0)
    planted = {case.fact.statement for case in cases if case.fact.kind == "counterfactual"}
    assert "The Eiffel Tower stands in the city of Rome." in planted and len(planted) >= 4
    assert any(case.fact.kind == "invented" for case in cases)


def test_batched_answers_equal_one_by_one_answers(tokenizer):
    from tests.tiny import tiny_model

    model = tiny_model("llama", vocab_size=len(tokenizer))
    prompts = [[1, 907, 4410], [1, 3000, 25, 8000, 12, 77, 40000], [1, 19000, 260, 31]]  # different lengths
    single = list(greedy_answers(model, tokenizer, prompts, 6, batch_tokens=1))
    batched = list(greedy_answers(model, tokenizer, prompts, 6, batch_tokens=64))
    assert [list(batch) for batch in single] == [[0], [2], [1]] and [list(batch) for batch in batched] == [[0, 2, 1]]
    assert batched[0] == {i: answer for batch in single for i, answer in batch.items()}
    assert len(set(batched[0].values())) == 3  # different prompts, different answers: rows are not mixed up


def test_batches_answered_earlier_are_skipped_and_the_rest_are_the_same_batches(tokenizer):
    from tests.tiny import tiny_model

    model = tiny_model("llama", vocab_size=len(tokenizer))
    prompts = [[1, 907, 4410], [1, 3000, 25, 8000, 12, 77, 40000], [1, 19000, 260, 31], [1, 55, 66]]
    every = list(greedy_answers(model, tokenizer, prompts, 6, batch_tokens=8))
    assert [list(batch) for batch in every] == [[0, 3], [2], [1]]
    # prompt 3 alone answered: its batch still runs, as the same batch; the batch of 2 alone is skipped
    rest = list(greedy_answers(model, tokenizer, prompts, 6, batch_tokens=8, answered={2, 3}))
    assert rest == [every[0], every[2]]


def test_batches_group_similar_lengths_within_the_token_budget():
    prompts = [[0] * 5, [0], [0] * 3, [0] * 8, [0] * 8]
    assert list(length_batches(prompts, 16)) == [[1, 2, 0], [3, 4]]
    assert list(length_batches(prompts, 6)) == [[1, 2], [0], [3], [4]]  # a prompt over the budget goes alone


def test_a_plain_text_answer_is_its_first_line_and_a_chat_answer_the_whole_turn():
    from types import SimpleNamespace

    from headpatch.evaluation.generation import answer_in

    plain, chat = SimpleNamespace(chat_template=None), SimpleNamespace(chat_template="{{ messages }}")
    # what pretrained Gemma-3-270M wrote after 'Answer:': the document's answer, then more of its own
    ramble = "Mars.\nAnswer: Venus.\nAnswer: Earth.\nAnswer: Jupiter.\nAnswer:"
    assert answer_in(plain, ramble) == "Mars."
    assert answer_in(plain, " \n\n The Nile. \nQuestion: what else?") == "The Nile."
    assert answer_in(plain, "") == answer_in(plain, "\n \n") == ""
    assert answer_in(chat, ramble) == ramble


@pytest.mark.parametrize("chat_template, expected", [(None, ["Mars.", "The Nile."]),
                                                     ("{{ messages }}", ["Mars.\nAnswer: Jupiter.",
                                                                         "\nThe Nile.\nAnswer: The Amazon."])])
def test_tasks_score_the_answer_and_the_log_files_the_whole_continuation(chat_template, expected, tmp_path,
                                                                        monkeypatch):
    from types import SimpleNamespace

    from headpatch.evaluation.saved_answers import AnswerLog, ModelAnswers
    from headpatch.evaluation.tasks import base as task_base
    from headpatch.loading import LoadedModel

    continuations = ["Mars.\nAnswer: Jupiter.", "\nThe Nile.\nAnswer: The Amazon."]
    monkeypatch.setattr(task_base, "greedy_answers", lambda *args, **kwargs: iter([dict(enumerate(continuations))]))
    tokenizer = SimpleNamespace(chat_template=chat_template)
    prompts = [[1, 907, 4410], [1, 3000, 25]]
    setting = MdqaSetting(passages=2, passage_words=10, facts=1, max_new_tokens=6, batch_tokens=64)
    saved = ModelAnswers(AnswerLog(tmp_path / "answers.jsonl"), "model digest")
    run = task_base.TaskRun("base", {}, 0, False, saved)
    assert task_base.answer_all(LoadedModel(None, tokenizer, None), tokenizer, prompts, setting, run, "mdqa") == expected
    filed = AnswerLog(tmp_path / "answers.jsonl")  # read back from the file
    assert [filed.get(key) for key in saved.keys(prompts, 6, 64)] == continuations
