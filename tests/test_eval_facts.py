"""Evaluation data and scoring: planted facts, answer scoring, task names and settings tables."""

from __future__ import annotations

import pytest

from headpatch.errors import HeadpatchError
from headpatch.essays import passages
from headpatch.evaluation.essay_split import context_essays, heldout_essays
from headpatch.evaluation.facts import MDQA_FACTS, NEEDLES, keyword_score, mentions_any
from headpatch.evaluation.registry import SETTINGS, TASK_NAMES, TASKS, check_tasks, setting_for


def test_keyword_score_counts_whole_words_case_insensitively():
    assert keyword_score("The tortoise is called Bartholomew.", ("Bartholomew",)) == 1.0
    assert keyword_score("bartholomew", ("Bartholomew",)) == 1.0
    assert keyword_score("The password is copper.", ("copper", "kettle")) == 0.5
    assert keyword_score("Copper Kettle!", ("copper", "kettle")) == 1.0
    assert keyword_score("It is Marshall.", ("Mars",)) == 0.0
    assert keyword_score("", ("Rome",)) == 0.0
    assert keyword_score("It opens at 7:40.", ("7:40",)) == 1.0
    assert mentions_any("Leonardo da Vinci painted it", ("Leonardo", "Vinci"))
    assert not mentions_any("Picasso painted it", ("Leonardo", "Vinci"))


@pytest.mark.parametrize("fact", NEEDLES + MDQA_FACTS, ids=lambda fact: fact.question)
def test_every_fact_answers_its_question_and_only_the_context_does(fact):
    # the statement holds every key word, the question none: the answer has to come from the planted sentence
    assert keyword_score(fact.statement, fact.keys) == 1.0
    assert keyword_score(fact.question, fact.keys) == 0.0
    if fact.kind == "counterfactual":
        assert fact.memory and not mentions_any(fact.statement, fact.memory)
    else:
        assert fact.kind == "invented" and not fact.memory


def test_fact_tables_mix_counterfactual_and_invented_facts():
    assert len(NEEDLES) >= 4 and all(fact.kind == "invented" for fact in NEEDLES)
    assert len({fact.question for fact in NEEDLES + MDQA_FACTS}) == len(NEEDLES + MDQA_FACTS)
    for size in {setting.facts for setting in SETTINGS["mdqa"].values()}:
        kinds = [fact.kind for fact in MDQA_FACTS[:size]]
        assert kinds.count("counterfactual") == kinds.count("invented") == size // 2
    assert any("Eiffel Tower" in fact.statement and "Rome" in fact.keys for fact in MDQA_FACTS)


def test_settings_cover_every_task_in_both_modes():
    assert tuple(TASKS) == TASK_NAMES == tuple(SETTINGS)
    for task in TASK_NAMES:
        quick, full = setting_for(task, True), setting_for(task, False)
        assert type(quick) is type(full) and quick != full
    assert all(setting.needles <= len(NEEDLES) and setting.needles >= 4 for setting in SETTINGS["niah"].values())
    assert all(setting.facts <= len(MDQA_FACTS) for setting in SETTINGS["mdqa"].values())


def test_task_names_are_checked_and_ordered():
    assert check_tasks("ppl, copy") == ["copy", "ppl"]
    assert check_tasks(["retrieval", "niah"]) == ["niah", "retrieval"]
    with pytest.raises(HeadpatchError, match="unknown task.*bogus.*choose from copy, niah"):
        check_tasks("copy,bogus")
    with pytest.raises(HeadpatchError, match="none given"):
        check_tasks(" , ")


def test_perplexity_essays_are_held_out_from_the_contexts():
    context, held_out = context_essays(), heldout_essays()
    assert context and held_out and not set(context) & set(held_out)
    chunks = passages(list(context.values())[:2], 50)
    assert chunks and all(len(chunk.split()) >= 50 for chunk in chunks)
