"""Evaluation data and scoring: planted facts, answer scoring, task names and settings tables."""

from __future__ import annotations

from dataclasses import replace

import pytest

from headpatch.errors import HeadpatchError
from headpatch.essays import passages
from headpatch.evaluation.essay_split import context_essays, heldout_essays
from headpatch.evaluation.facts import MDQA_FACTS, NEEDLE_SETS, NEEDLES, NEEDLES_2, keyword_score, mentions_any
from headpatch.evaluation.registry import DEFAULT_TASKS, SETTINGS, TASK_NAMES, TASKS, check_tasks, setting_for


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


@pytest.mark.parametrize("fact", NEEDLES + NEEDLES_2 + MDQA_FACTS, ids=lambda fact: fact.question)
def test_every_fact_answers_its_question_and_only_the_context_does(fact):
    # the statement holds every key word, the question none: the answer has to come from the planted sentence
    assert keyword_score(fact.statement, fact.keys) == 1.0
    assert keyword_score(fact.question, fact.keys) == 0.0
    if fact.kind == "counterfactual":
        assert fact.memory and not mentions_any(fact.statement, fact.memory)
    else:
        assert fact.kind == "invented" and not fact.memory


def test_fact_tables_mix_counterfactual_and_invented_facts():
    for needles in NEEDLE_SETS.values():
        assert len(needles) >= 4 and all(fact.kind == "invented" for fact in needles)
    every = NEEDLES + NEEDLES_2 + MDQA_FACTS
    assert len({fact.question for fact in every}) == len({fact.statement for fact in every}) == len(every)
    for size in {setting.facts for setting in SETTINGS["mdqa"].values()}:
        kinds = [fact.kind for fact in MDQA_FACTS[:size]]
        assert kinds.count("counterfactual") == kinds.count("invented") == size // 2
    assert any("Eiffel Tower" in fact.statement and "Rome" in fact.keys for fact in MDQA_FACTS)


def test_settings_cover_every_task_in_both_modes():
    assert tuple(TASKS) == TASK_NAMES == tuple(SETTINGS)
    for task in TASK_NAMES:
        quick, full = setting_for(task, True), setting_for(task, False)
        assert type(quick) is type(full) and quick != full
    for task in ("niah", "niah2"):
        assert all(4 <= setting.needles <= len(NEEDLE_SETS[setting.needle_set]) for setting in SETTINGS[task].values())
    assert all(setting.facts <= len(MDQA_FACTS) for setting in SETTINGS["mdqa"].values())


def test_niah2_is_niah_with_the_second_needle_set_and_runs_only_when_named():
    # the replication's claim: nothing but the needles differs from niah
    for mode in ("quick", "full"):
        first, second = SETTINGS["niah"][mode], SETTINGS["niah2"][mode]
        assert (first.needle_set, second.needle_set) == (1, 2)
        assert replace(second, needle_set=1) == first
    assert "niah2" in TASK_NAMES and "niah2" not in DEFAULT_TASKS
    assert set(TASK_NAMES) - set(DEFAULT_TASKS) == {"niah2"}
    assert check_tasks("niah2,niah") == ["niah", "niah2"]


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
