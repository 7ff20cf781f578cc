"""Tuning: the K ladder, early stopping on the selection set, the damage guard, and the record and card it writes."""

import dataclasses
import itertools
import json

import pytest
import torch

from headpatch.architectures import head_layout
from headpatch.cli.pear import tuning_table
from headpatch.errors import HeadpatchError
from headpatch.evaluation.metrics import window_losses
from headpatch.io.card import render_card
from headpatch.loading import LoadedModel, Source
from headpatch.options import LocateOptions, TuneOptions
from headpatch.pear import tune as tune_module
from headpatch.pear.fold import fold_model
from headpatch.pear.proxy import copy_batch, copy_scores, sampleable_ids
from headpatch.pear.scaling import scaled_heads
from headpatch.pear.tune import (
    Candidate,
    Guard,
    GuardCheck,
    Selection,
    choose,
    guard_check,
    guard_figures,
    guard_windows,
    ladder_ends,
    spread_windows,
    tune,
)
from headpatch.pear.upper import lower_states
from headpatch.pipeline import locate_step, tune_step
from headpatch.record import PatchRecord
from headpatch.stats import PairedChange, paired_change
from tests.test_architectures import REQUIRED
from tests.tiny import TINY_VOCAB, tiny_model, windowed_model

# Small enough for the fast tier: two candidates, a few steps each, a lenient guard the tiny model stays inside.
QUICK = TuneOptions(ladder=(1, 3), max_steps=12, batch_size=4, n=8, lr=0.2, warmup_steps=1, eval_every=4, patience=2,
                    min_improvement=0.0, select_samples=16, max_perplexity_increase=10.0, max_kl=10.0, guard_windows=1,
                    check_windows=3)


class ByteTokenizer:
    """A tokenizer for tiny models: one token per byte, id 1 as BOS."""

    all_special_ids = [0, 1, 2]
    added_tokens_decoder: dict = {}

    def __len__(self) -> int:
        return TINY_VOCAB

    def __call__(self, text, add_special_tokens=True, return_tensors=None):
        ids = ([1] if add_special_tokens else []) + [3 + byte % (TINY_VOCAB - 3) for byte in text.encode()]
        return {"input_ids": torch.tensor([ids]) if return_tensors == "pt" else ids}


def _ranked(model):
    """Heads from the last layer and the one below, alternately: K=1 trains from the last layer, K=3 from the one
    below, so measurements start from different layers."""
    layout = head_layout(model.config)
    last, below = layout.num_layers - 1, layout.num_layers - 2
    pairs = [[(last, head), (below, head)] for head in range(layout.num_heads)][::-1]
    rest = [(layer, head) for layer in range(below) for head in range(layout.num_heads)]
    return [head for pair in pairs for head in pair] + rest


def test_tuning_trains_each_k_and_keeps_the_lowest_heldout_loss():
    model = tiny_model("llama")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    result = tune(model, ByteTokenizer(), head_layout(model.config), _ranked(model), QUICK, show_progress=False)
    assert [c.k for c in result.candidates] == [1, 3]
    for candidate in result.candidates:
        assert len(candidate.coefficients) == candidate.k
        assert candidate.steps % QUICK.eval_every == 0 and candidate.steps <= candidate.steps_run <= QUICK.max_steps
        assert candidate.stopped in ("converged", "damage guard", "step budget")
        # the kept figures are those of the kept coefficients
        with scaled_heads(model, head_layout(model.config), candidate.coefficients):
            losses, _ = copy_scores(model, copy_batch(sampleable_ids(TINY_VOCAB, ByteTokenizer(), model.config),
                                                      QUICK.select_samples, QUICK.n, QUICK.seed, "select", [1]))
        assert losses == pytest.approx(candidate.selection.losses, abs=1e-5)
    assert result.chosen is not None and result.chosen.selection.loss < result.base.loss
    assert result.chosen.selection.loss == min(c.selection.loss for c in result.candidates if c.beyond_noise)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # the model itself is untouched
    assert not any(h for m in model.modules() for h in m._forward_pre_hooks.values())
    again = tune(model, ByteTokenizer(), head_layout(model.config), _ranked(model), QUICK, show_progress=False)
    assert [c.coefficients for c in again.candidates] == [c.coefficients for c in result.candidates]


def test_the_guard_stops_training_and_no_candidate_means_no_patch():
    model = tiny_model("llama")
    strict = dataclasses.replace(QUICK, max_perplexity_increase=0.0, max_kl=0.0)
    result = tune(model, ByteTokenizer(), head_layout(model.config), _ranked(model), strict, show_progress=False)
    assert [c.stopped for c in result.candidates] == ["damage guard"]
    assert all(c.steps == 0 and set(c.coefficients.values()) == {1.0} for c in result.candidates)
    assert result.skipped == (3,)  # K=1 never beat the base before the guard: the ladder stops climbing
    assert result.chosen is None and "no candidate" in result.reason


def _stopped(k, loss, stopped):
    return dataclasses.replace(_candidate(k, loss), stopped=stopped)


def test_the_ladder_stops_after_the_guard_stops_a_candidate_short_of_the_best():
    base = Selection([3.0], [0.4])
    assert not ladder_ends([_stopped(5, 2.5, "converged")], base)
    assert not ladder_ends([_stopped(5, 2.5, "damage guard")], base)  # the guard stopped it, but it beat the base
    assert ladder_ends([_stopped(5, 3.0, "damage guard")], base)
    assert not ladder_ends([_stopped(5, 2.5, "converged"), _stopped(10, 2.4, "damage guard")], base)
    assert ladder_ends([_stopped(5, 2.5, "converged"), _stopped(10, 2.6, "damage guard")], base)
    assert not ladder_ends([_stopped(5, 2.5, "converged"), _stopped(10, 2.6, "step budget")], base)


def test_training_reads_guard_windows_spread_from_the_first_to_the_last():
    rows = torch.arange(41).unsqueeze(1).expand(41, 3)
    assert spread_windows(rows, 8)[:, 0].tolist() == [0, 6, 11, 17, 23, 29, 34, 40]
    assert spread_windows(rows, 2)[:, 0].tolist() == [0, 40]
    assert spread_windows(rows, 1)[:, 0].tolist() == [0]
    assert torch.equal(spread_windows(rows, 41), rows) and torch.equal(spread_windows(rows, 99), rows)
    for count in range(2, 41):
        picks = spread_windows(rows, count)[:, 0].tolist()
        gaps = [b - a for a, b in itertools.pairwise(picks)]
        assert picks[0] == 0 and picks[-1] == 40 and len(set(picks)) == count and max(gaps) - min(gaps) <= 1


def test_the_early_stop_measures_the_spread_windows():
    model = tiny_model("llama")
    layout = head_layout(model.config)
    options = dataclasses.replace(QUICK, guard_windows=2)
    result = tune(model, ByteTokenizer(), layout, _ranked(model), options, show_progress=False)
    every = guard_windows(ByteTokenizer())
    assert result.guard_windows == 2 and len(every) > 2
    for candidate in result.candidates:
        spread = guard_figures(model, layout, candidate.coefficients, every[[0, len(every) - 1]])
        assert (candidate.guard.perplexity_change, candidate.guard.kl) == pytest.approx(
            (spread.perplexity_change, spread.kl), abs=1e-6)
    moved = [c for c in result.candidates if c.steps > 0]
    assert moved
    for candidate in moved:  # the text's opening alone reads differently
        assert abs(guard_figures(model, layout, candidate.coefficients, every[:2]).kl - candidate.guard.kl) > 1e-6


COEFFICIENTS = {(0, 1): 1.6, (2, 3): 0.3}


def _measured_by_the_evaluation(windows):
    """The evaluation's per-window losses of a tiny model and of a copy with COEFFICIENTS folded in, and its KL, over
    the same token ids as `windows`."""
    model, folded = tiny_model("qwen2"), tiny_model("qwen2")
    fold_model(folded, head_layout(model.config), COEFFICIENTS)
    text = "".join(bytes(int(i) - 3 for i in window).decode("latin-1") for window in windows)  # the same ids back
    base_losses, _ = window_losses(model, ByteTokenizer(), [text], 512, len(windows))
    patched_losses, kl = window_losses(folded, ByteTokenizer(), [text], 512, len(windows), base=model)
    return model, base_losses, patched_losses, kl


def test_guard_figures_equal_the_evaluation_metrics_on_a_folded_copy():
    windows = guard_windows(ByteTokenizer(), 2)
    model, base_losses, patched_losses, kl = _measured_by_the_evaluation(windows)
    layout = head_layout(model.config)
    guard = guard_figures(model, layout, COEFFICIENTS, windows)
    expected_change = torch.tensor(patched_losses).mean().exp() / torch.tensor(base_losses).mean().exp() - 1
    assert guard.perplexity_change == pytest.approx(expected_change.item(), abs=1e-5)
    assert guard.kl == pytest.approx(sum(kl) / len(kl), abs=1e-6)
    assert guard.kl > 1e-4
    assert guard_figures(model, layout, {(0, 1): 1.0}, windows) == Guard(0.0, 0.0)


def test_guard_check_pairs_windows_as_the_evaluation_does():
    windows = guard_windows(ByteTokenizer(), 4)
    model, base_losses, patched_losses, kl = _measured_by_the_evaluation(windows)
    layout = head_layout(model.config)
    check = guard_check(model, layout, COEFFICIENTS, windows)
    expected = paired_change(base_losses, patched_losses, relative=True, higher_is_better=False, log_items=True)
    assert check.perplexity.items == 4 and check.kl == pytest.approx(sum(kl) / 4, abs=1e-6) and check.kl > 1e-4
    for mine, reference in ((check.perplexity.change, expected.change), (check.perplexity.low, expected.low),
                            (check.perplexity.high, expected.high)):
        assert mine == pytest.approx(reference, abs=1e-5)
    assert check.perplexity.low < check.perplexity.change < check.perplexity.high
    assert check.within(TuneOptions(max_perplexity_increase=max(check.perplexity.high, 0), max_kl=1.0))
    assert not check.within(TuneOptions(max_perplexity_increase=1.0, max_kl=check.kl / 2))
    unchanged = guard_check(model, layout, {(0, 1): 1.0}, windows)
    figures = unchanged.perplexity
    assert (figures.change, figures.low, figures.high, unchanged.kl) == (0, 0, 0, 0)


def test_window_losses_are_unchanged_when_a_small_budget_splits_batches_and_positions(monkeypatch):
    from headpatch.evaluation import metrics

    model, folded = tiny_model("qwen2"), tiny_model("qwen2")
    fold_model(folded, head_layout(model.config), {(0, 1): 1.6, (2, 3): 0.3})
    text = "".join(chr(32 + (7 * i) % 90) for i in range(700))
    whole = window_losses(folded, ByteTokenizer(), [text], 64, 3, base=model)
    vocab = model.config.vocab_size
    monkeypatch.setattr(metrics, "LOGITS_BUDGET", 4 * vocab * 4 * 5)  # one window per forward, 5 positions a slice
    sliced = window_losses(folded, ByteTokenizer(), [text], 64, 3, base=model)
    assert len(whole[0]) == len(sliced[0]) == 3 and min(whole[1]) > 1e-4
    for before, after in zip(whole, sliced):
        assert after == pytest.approx(before, rel=1e-5, abs=1e-7)


def _check(high, kl=0.002):
    return GuardCheck(PairedChange(items=32, change=high - 0.004, low=high - 0.008, high=high, p_value=0.5, better=10,
                                   worse=22, detectable=0.003, higher_is_better=False), kl)


def _candidate(k, loss, within=True, interval=(-0.2, -0.1), check=_check(0.005)):
    selection = Selection([loss], [0.5])
    return Candidate(k=k, coefficients={}, steps=5, steps_run=5, stopped="converged", selection=selection,
                     guard=Guard(0.0, 0.0), within_guard=within, improvement=interval, check=check)


def test_choice_is_the_lowest_loss_within_the_guard_and_beyond_noise():
    base = Selection([3.0], [0.4])
    candidates = [_candidate(5, 2.5, check=None), _candidate(10, 2.0, within=False),
                  _candidate(20, 1.9, interval=(-0.3, 0.01)), _candidate(40, 2.4),
                  _candidate(80, 2.3, check=_check(0.012)),
                  _candidate(160, 2.35, check=_check(0.0, kl=0.02))]
    chosen, reason = choose(candidates, base, TuneOptions())
    assert chosen.k == 40
    assert "on 32 windows it changed perplexity by +0.10% [-0.30%, +0.50%], KL 0.0020" in reason
    assert "K=10 outside the guard" in reason and "K=20 not beyond noise" in reason
    assert "K=5 not checked on the whole guard text" in reason
    assert "K=80 outside the guard on the whole text (perplexity +0.80% [+0.40%, +1.20%]" in reason
    assert "K=160 outside the guard on the whole text (perplexity -0.40% [-0.80%, +0.00%], KL 0.0200)" in reason
    loose = TuneOptions(max_perplexity_increase=0.02)  # the upper end +1.2% passes a +2% bound
    winner, why = choose(candidates, base, loose)
    assert winner.k == 80 and "K=40 a higher loss" in why
    nothing, why = choose([candidates[4]], base, TuneOptions())
    assert nothing is None and why.startswith("no candidate") and "K=80 outside the guard on the whole text" in why


def test_candidates_are_checked_on_the_whole_text_best_first_until_one_passes(monkeypatch):
    model = tiny_model("llama")
    checked = []

    def fail_first(model, layout, coefficients, windows, lower=None, bar=None):
        checked.append((len(coefficients), len(windows)))
        return _check(50.0 if len(checked) == 1 else 0.001)  # QUICK allows +1000%

    monkeypatch.setattr(tune_module, "guard_check", fail_first)
    options = dataclasses.replace(QUICK, ladder=(1, 3, 6))
    result = tune(model, ByteTokenizer(), head_layout(model.config), _ranked(model), options, show_progress=False)
    never = [c for c in result.candidates if not c.eligible]
    first, second = sorted((c for c in result.candidates if c.eligible), key=lambda c: c.selection.loss)
    assert [c.k for c in never] == [1] and never[0].check is None  # K=1 does not beat the base on this model
    assert checked == [(first.k, QUICK.check_windows), (second.k, QUICK.check_windows)]
    assert result.chosen is second and result.check_windows == QUICK.check_windows
    assert f"K={first.k} outside the guard on the whole text" in result.reason
    assert "K=1 not beyond noise" in result.reason


def _byte_loaded(model):
    return LoadedModel(model, ByteTokenizer(), Source(name="tiny", location="tiny", base_model=None))


def test_tune_step_records_every_candidate_and_the_card_shows_them(tmp_path):
    model = tiny_model("llama")
    loaded = _byte_loaded(model)
    located = locate_step(loaded, LocateOptions(settings=((4, 6),)), show_progress=False)
    record = tune_step(loaded, located, QUICK, show_progress=False)
    tuning = record.pear.tuning
    assert [c.k for c in tuning.candidates] == [1, 3] and tuning.chosen_k == len(record.pear.heads)
    assert record.pear.heads == located.with_top_k(tuning.chosen_k).pear.heads
    assert record.pear.training.steps == max(next(c.steps for c in tuning.candidates if c.k == tuning.chosen_k), 1)
    again = PatchRecord.from_text(record.to_text())
    assert again == record
    chosen = next(c for c in tuning.candidates if c.k == tuning.chosen_k)
    assert chosen.guard_check.windows == QUICK.check_windows and chosen.guard_check.within_guard
    low, high = chosen.guard_check.perplexity_interval
    assert low <= chosen.guard_check.perplexity_change <= high
    card = render_card(record, "tiny")
    assert "How K was chosen" in card and f"Chosen: {tuning.reason}" in card
    assert chosen.guard_check.summary in card and card.count("| not checked |") == len(tuning.candidates) - 1
    rows = tuning_table(record).split("\nbase held-out loss")[0]  # the candidates' rows, not the reason below them
    assert chosen.guard_check.summary in rows and rows.count("not checked") == len(tuning.candidates) - 1
    # a record made before the whole-text check: no check column, no sentence about it
    unchecked = tuple(dataclasses.replace(c, guard_check=None) for c in tuning.candidates)
    older = dataclasses.replace(record, pear=dataclasses.replace(
        record.pear, tuning=dataclasses.replace(tuning, candidates=unchecked, reason="the lowest held-out loss")))
    older_card = render_card(PatchRecord.from_text(older.to_text()), "tiny")
    assert not any(text in older_card for text in ("whole guard text", "not checked", "checked on the"))
    assert "guard_check" not in older.to_text()  # absent, not null
    failed = json.loads(record.to_text())
    chosen_entry = next(c for c in failed["pear"]["tuning"]["candidates"] if c["k"] == tuning.chosen_k)
    chosen_entry["guard_check"]["within_guard"] = False
    with pytest.raises(HeadpatchError, match="failed the whole-text guard check"):
        PatchRecord.from_json(failed)
    assert card.count("| within |") + card.count("| outside |") == len(tuning.candidates)
    assert "Not trained" not in card and tuning.skipped == ()
    stopped = dataclasses.replace(tuning, ladder=(1, 3, 5, 9), skipped=(5, 9), candidates=(
        *tuning.candidates[:-1], dataclasses.replace(tuning.candidates[-1], stopped="damage guard", steps_run=8)))
    shortened = dataclasses.replace(record, pear=dataclasses.replace(record.pear, tuning=stopped))
    assert PatchRecord.from_text(shortened.to_text()) == shortened
    assert "Not trained: K=5, 9. The damage guard stopped K=3 at step 8 before" in render_card(shortened, "tiny")
    for skipped in ([3], [7]):  # trained, or not on the ladder
        bad = json.loads(record.to_text())
        bad["pear"]["tuning"]["skipped"] = skipped
        with pytest.raises(HeadpatchError, match="pear.tuning.skipped"):
            PatchRecord.from_json(bad)
    broken = json.loads(record.to_text())
    broken["pear"]["tuning"]["chosen_k"] = 2
    with pytest.raises(HeadpatchError, match="chosen_k"):
        PatchRecord.from_json(broken)


def test_tune_step_without_a_helpful_candidate_is_a_clear_error():
    model = tiny_model("llama")
    loaded = _byte_loaded(model)
    located = locate_step(loaded, LocateOptions(settings=((4, 6),)), show_progress=False)
    strict = dataclasses.replace(QUICK, max_perplexity_increase=0.0, max_kl=0.0)
    with pytest.raises(HeadpatchError, match="no candidate .* force a patch with --k and --steps"):
        tune_step(loaded, located, strict, show_progress=False)


def test_ladder_is_capped_by_the_head_count():
    assert TuneOptions(ladder=(40, 5, 10, 500)).ladder_for(12) == (5, 10, 12)
    with pytest.raises(HeadpatchError, match="ladder"):
        TuneOptions(ladder=())


@pytest.mark.slow
def test_tuning_smollm2_lowers_the_heldout_loss_inside_the_guard(smollm2):
    model, tokenizer = smollm2.model, smollm2.tokenizer
    layout = head_layout(model.config)
    windows = guard_windows(tokenizer, 1)
    assert windows.shape == (1, 512)
    assert guard_windows(tokenizer, 99).shape[0] == 41  # the guard text is 21,000+ tokens: the default check fits
    options = TuneOptions(ladder=(2, 4), max_steps=6, eval_every=3, select_samples=16, guard_windows=1,
                          check_windows=4)
    ranked = [(17, 3), (24, 4), (17, 5), (20, 6)]  # SmolLM2's top four located heads
    result = tune(model, tokenizer, layout, ranked, options, show_progress=False)
    assert result.chosen is not None and result.chosen.selection.loss < result.base.loss - 0.05
    check = result.chosen.check
    assert check.perplexity.items == 4 and check.within(options) and check.kl > 0
    for candidate in result.candidates:
        assert candidate.within_guard
        again = guard_figures(model, layout, candidate.coefficients, windows)
        assert (again.perplexity_change, again.kl) == pytest.approx(
            (candidate.guard.perplexity_change, candidate.guard.kl), abs=1e-6)


def _fed_and_whole(model):
    """Selection scores and guard figures with heads scaled from a layer up: run from that layer on its stored input,
    and as whole forwards."""
    layout = head_layout(model.config)
    start = layout.num_layers - 2
    heads = {(start, 0): 3.0, (start + 1, layout.num_heads - 1): 0.1}
    batch = copy_batch(sampleable_ids(TINY_VOCAB, None, model.config), 7, 8, 0, "select", [1])
    windows = guard_windows(ByteTokenizer(), 2)
    select_lower = lower_states(model, layout, batch.input_ids, start, chunk=3)
    guard_lower = lower_states(model, layout, windows, start, chunk=1)
    assert select_lower.layer_input.shape[:2] == batch.input_ids.shape and len(guard_lower.layer_input) == 2
    base = copy_scores(model, batch, chunk=3)
    with scaled_heads(model, layout, heads):
        fed, whole = copy_scores(model, batch, chunk=3, lower=select_lower), copy_scores(model, batch, chunk=3)
    guards = (guard_figures(model, layout, heads, windows, lower=guard_lower),
              guard_figures(model, layout, heads, windows))
    assert whole[0] != pytest.approx(base[0], abs=1e-4) and guards[1].kl > 1e-6  # the scaling changes what is measured
    fed_check, whole_check = (guard_check(model, layout, heads, windows, guard_lower),
                              guard_check(model, layout, heads, windows))
    assert fed_check.kl == pytest.approx(whole_check.kl, rel=1e-4, abs=1e-7)
    assert fed_check.perplexity.change == pytest.approx(whole_check.perplexity.change, rel=1e-4, abs=1e-6)
    return fed, whole, guards


@pytest.mark.parametrize("model_type", REQUIRED)
def test_measuring_from_the_lowest_trained_layer_equals_whole_forwards(model_type):
    fed, whole, (fed_guard, whole_guard) = _fed_and_whole(tiny_model(model_type))
    for mine, reference in zip(fed, whole):
        assert mine == pytest.approx(reference, rel=1e-5, abs=1e-5)
    assert fed_guard.perplexity_change == pytest.approx(whole_guard.perplexity_change, rel=1e-4, abs=1e-6)
    assert fed_guard.kl == pytest.approx(whole_guard.kl, rel=1e-4, abs=1e-7)


@pytest.mark.parametrize("model_type", ["mistral", "gemma2", "gemma3_text", "cohere2"])
def test_measuring_from_a_layer_keeps_each_layers_sliding_window(model_type):
    fed, whole, (fed_guard, whole_guard) = _fed_and_whole(windowed_model(model_type, window=6))
    for mine, reference in zip(fed, whole):
        assert mine == pytest.approx(reference, rel=1e-5, abs=1e-5)
    assert fed_guard.kl == pytest.approx(whole_guard.kl, rel=1e-4, abs=1e-7)


def test_no_stored_states_for_heads_in_the_first_layer():
    model = tiny_model("llama")
    assert lower_states(model, head_layout(model.config), torch.ones(2, 5, dtype=torch.long), 0, chunk=1) is None


_TUNING_PEAK = """
import sys
import torch
from headpatch.architectures import head_layout
from headpatch.options import TuneOptions
from headpatch.pear.memory import ModelShape, tune_bytes
from headpatch.pear.tune import tune
from tests.test_tune import ByteTokenizer, _ranked
from tests.tiny import tiny_model

def status(field):
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(field))

model = tiny_model("llama", vocab_size=int(sys.argv[1]))
layout = head_layout(model.config)
options = TuneOptions(ladder=(1,), max_steps=4, batch_size=4, n=8, lr=0.2, warmup_steps=1, eval_every=2,
                      min_improvement=0.0, select_samples=16, max_perplexity_increase=10.0, max_kl=10.0,
                      guard_windows=2, check_windows=int(sys.argv[2]))
model(torch.ones(1, 8, dtype=torch.long))
before = status("VmRSS")
tune(model, ByteTokenizer(), layout, _ranked(model), options, show_progress=False)
c = model.config
shape = ModelShape(0, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, layout.head_dim,
                   c.hidden_size, c.intermediate_size, c.vocab_size)
print(status("VmHWM") - before, tune_bytes(shape, 4, options))
"""


@pytest.mark.slow
def test_the_tuning_memory_estimate_matches_a_real_peak():
    """Over a large vocabulary the guard's per-window distributions set tuning's peak (Gemma-3's 262k tokens: 536 MB
    a window); a fresh process's peak resident memory over a tuning run is the estimate's to 15%."""
    from tests.conftest import run_fresh

    for vocab, check_windows in ((131_072, 2), (262_144, 6)):
        done = run_fresh(_TUNING_PEAK, str(vocab), str(check_windows), env={"THP_MEM_ALLOC_ENABLE": "1"})
        assert done.returncode == 0, done.stderr
        measured, estimate = map(int, done.stdout.split())
        assert estimate > 1e9 * vocab / 131_072  # the distributions, not the tiny model, are what is measured
        assert measured == pytest.approx(estimate, rel=0.15), (vocab, measured, estimate)
