"""Paired comparisons: the exact sign test, the bootstrap interval and the detectable change, against values
computed by hand or by the normal approximation."""

from __future__ import annotations

import math
import random

import pytest

from headpatch.stats import paired_change, sign_test


@pytest.mark.parametrize(("better", "worse", "p"), [
    (8, 3, 2 * (1 + 11 + 55 + 165) / 2**11),  # the K=20 patch of the independent check: one-sided 0.11
    (4, 1, 2 * (1 + 5) / 2**5),  # the default patch there: one-sided 0.19
    (0, 0, 1.0), (5, 5, 1.0), (20, 0, 2 / 2**20),
])
def test_sign_test_is_the_exact_two_sided_binomial(better, worse, p):
    assert sign_test(better, worse) == pytest.approx(p, rel=1e-12)


def test_identical_answers_are_no_change_with_nothing_detectable():
    change = paired_change([1, 0, 1, 1], [1, 0, 1, 1])
    assert (change.change, change.low, change.high, change.p_value) == (0, 0, 0, 1.0)
    assert (change.better, change.worse, change.detectable, change.verdict) == (0, 0, None, "no clear change")


def test_interval_matches_the_normal_approximation_on_many_paired_answers():
    rng = random.Random(0)
    base = [float(rng.random() < 0.5) for _ in range(400)]
    # 60 answers fixed and 20 broken by the patch: +0.10
    flips = rng.sample(range(400), 80)
    patched = list(base)
    for i in flips[:60]:
        patched[i] = 1.0 if base[i] == 0 else patched[i]
    for i in flips[60:]:
        patched[i] = 0.0 if base[i] == 1 else patched[i]
    differences = [p - b for p, b in zip(patched, base)]
    mean = sum(differences) / len(differences)
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / (len(differences) - 1))
    change = paired_change(base, patched)
    assert change.change == pytest.approx(mean)
    assert change.low == pytest.approx(mean - 1.96 * sd / 20, abs=0.006)
    assert change.high == pytest.approx(mean + 1.96 * sd / 20, abs=0.006)
    assert change.detectable == pytest.approx((1.959964 + 0.841621) * sd / 20, rel=1e-6)
    gains = sum(d > 0 for d in differences)
    losses = sum(d < 0 for d in differences)
    assert (change.better, change.worse) == (gains, losses)
    assert change.p_value == pytest.approx(sign_test(gains, losses)) and change.verdict == "better"


def test_a_lower_is_better_metric_counts_a_drop_as_better():
    change = paired_change([0.5, 0.4, 0.6, 0.5] * 10, [0.1, 0.1, 0.2, 0.1] * 10, higher_is_better=False)
    assert change.change == pytest.approx(-0.375) and change.high < 0
    assert (change.better, change.worse, change.verdict) == (40, 0, "better")


def test_perplexity_items_compare_as_a_relative_change_of_exp_mean_loss():
    base = [2.0, 2.5, 3.0, 2.2]
    patched = [loss + 0.01 for loss in base]
    change = paired_change(base, patched, relative=True, higher_is_better=False, log_items=True)
    assert change.change == pytest.approx(math.exp(0.01) - 1)
    assert change.low == pytest.approx(math.exp(0.01) - 1) and change.high == pytest.approx(math.exp(0.01) - 1)
    # four windows all worse: the interval excludes zero, but four items cannot reach p < 0.05 (p = 0.125)
    assert change.worse == 4 and change.p_value == 0.125 and change.verdict == "no clear change"
    assert paired_change(base * 2, patched * 2, True, False, True).verdict == "worse"  # eight: p = 0.008


def test_a_bootstrap_interval_over_few_items_is_not_a_verdict_without_the_exact_test():
    # 10 items, 5 better and 1 worse: the percentile interval lies above zero, the sign test gives p = 0.22
    change = paired_change([0.0] * 10, [0.1, 0.12, 0.08, 0.1, 0.09, -0.02, 0, 0, 0, 0])
    assert change.low > 0 and change.p_value == pytest.approx(0.21875) and change.verdict == "no clear change"


def test_unpaired_items_are_refused():
    with pytest.raises(ValueError, match="differ in number"):
        paired_change([1, 0], [1])
