"""The candidate default of docs/candidate-guard8: tuning whose training-time early stop reads 8 guard windows spread
evenly over the guard text (endpoints included) instead of the first 2. An experiment, not headpatch's behaviour: it
reorders the windows `guard_windows` returns, so the whole-text check reads all of them as before.

    python docs/candidate-guard8/tune_spread8.py smollm2-135m-pear/headpatch.json patch.json
    headpatch export smollm2-135m --patch patch.json -o candidate
"""
import sys

import headpatch.pear.tune as tune_module
from headpatch.io.files import write_record
from headpatch.loading import load_model
from headpatch.options import TuneOptions
from headpatch.pipeline import heads_record, tune_step

SPREAD = 8
first_windows = tune_module.guard_windows


def spread_windows(tokenizer, windows):
    every = first_windows(tokenizer, 10**6)
    picks = sorted({round(i * (len(every) - 1) / (SPREAD - 1)) for i in range(SPREAD)})
    return every[picks + [i for i in range(len(every)) if i not in picks]][:windows]


tune_module.guard_windows = spread_windows
loaded = load_model("smollm2-135m")
record = tune_step(loaded, heads_record(loaded, sys.argv[1]), TuneOptions(ladder=(10, 20, 40), guard_windows=SPREAD),
                   show_progress=False)
write_record(record, sys.argv[2])
