"""Paired comparisons of two models on the same items: the change, its 95% interval, an exact test and the smallest
change the items could have detected.

Every figure compares base and patched answers to identical items, so the uncertainty is that of the per-item
differences: a percentile bootstrap over items (10,000 resamples, seeded) for the interval, and the exact two-sided
sign test on the items whose outcome differs (for 0/1 outcomes this is McNemar's exact test).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any

import numpy as np

RESAMPLES = 10_000
CONFIDENCE = 0.95
# (z_{1-α/2} + z_{power}) for α = 0.05 two-sided and 80% power
_DETECTION_Z = 1.959964 + 0.841621


@dataclass(frozen=True)
class PairedChange:
    """patched − base over `items` paired items (for a relative metric, patched / base − 1)."""

    items: int
    change: float
    low: float  # 95% bootstrap interval of the change
    high: float
    p_value: float  # exact two-sided sign test over the items whose outcome differs
    better: int  # items where the patched model did better, by the metric's direction
    worse: int
    detectable: float | None  # the change these items detect with 80% power at α = 0.05 (None: no item differed)
    higher_is_better: bool = True

    @property
    def verdict(self) -> str:
        """"better" or "worse" when the 95% interval excludes zero change and the exact test agrees (p < 0.05), else
        "no clear change". Both, because a percentile bootstrap over few items is too narrow (10 items with 5 better
        and 1 worse give an interval above zero but p = 0.22)."""
        if self.p_value >= 1 - CONFIDENCE or self.low <= 0 <= self.high:
            return "no clear change"
        if self.low > 0:
            return "better" if self.higher_is_better else "worse"
        return "worse" if self.higher_is_better else "better"

    def as_dict(self) -> dict[str, Any]:
        """Plain data, as results.json keeps it."""
        return {**asdict(self), "verdict": self.verdict}


def sign_test(better: int, worse: int) -> float:
    """Exact two-sided p-value of `better` against `worse` under a fair coin (ties already dropped)."""
    n = better + worse
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(better, worse) + 1))
    return min(1.0, float(Fraction(2 * tail, 2**n)))


def mean_interval(values: list[float], seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean of `values` (one model's figure over its items)."""
    array = np.asarray(values, dtype=np.float64)
    rows = np.random.default_rng(seed).integers(0, len(array), size=(RESAMPLES, len(array)))
    tail = (1 - CONFIDENCE) / 2
    low, high = np.quantile(array[rows].mean(axis=1), [tail, 1 - tail])
    return float(low), float(high)


def _statistic(values: np.ndarray, log_items: bool) -> np.ndarray:
    """The metric from per-item values along the last axis: their mean, or exp of their mean for log-loss items."""
    mean = values.mean(axis=-1)
    return np.exp(mean) if log_items else mean


def paired_change(base: list[float], patched: list[float], relative: bool = False, higher_is_better: bool = True,
                  log_items: bool = False, seed: int = 0) -> PairedChange:
    """Compare per-item values of two models on the same items. `log_items`: the items are log-losses and the metric
    is exp of their mean (perplexity); `relative`: the change is a ratio minus one rather than a difference."""
    if len(base) != len(patched) or not base:
        raise ValueError(f"paired items differ in number: {len(base)} base, {len(patched)} patched")
    b, p = np.asarray(base, dtype=np.float64), np.asarray(patched, dtype=np.float64)
    rows = np.random.default_rng(seed).integers(0, len(b), size=(RESAMPLES, len(b)))

    def change(base_stat: Any, patched_stat: Any) -> Any:
        return patched_stat / base_stat - 1 if relative else patched_stat - base_stat

    observed = float(change(_statistic(b, log_items), _statistic(p, log_items)))
    resampled = change(_statistic(b[rows], log_items), _statistic(p[rows], log_items))
    tail = (1 - CONFIDENCE) / 2
    low, high = (float(q) for q in np.quantile(resampled, [tail, 1 - tail]))
    differences = p - b
    gains = differences > 0 if higher_is_better else differences < 0
    losses = differences < 0 if higher_is_better else differences > 0
    spread = float(differences.std(ddof=1)) if len(b) > 1 else 0.0
    detectable = None
    if spread > 0:
        detectable = _DETECTION_Z * spread / math.sqrt(len(b))
        if log_items:  # a shift of the mean log-loss, seen as a relative change of the perplexity
            detectable = math.exp(detectable) - 1
        elif relative:
            detectable /= abs(_statistic(b, False).item()) or 1.0
    return PairedChange(len(b), observed, low, high, sign_test(int(gains.sum()), int(losses.sum())),
                        int(gains.sum()), int(losses.sum()), detectable, higher_is_better)
