"""The plan `headpatch export --dry-run` prints: the steps a recipe, flags on top, would run and what they cost."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from headpatch.pear.locate import LocateOptions
from headpatch.pear.memory import DETECT_TOKENS, StepMemory, gigabytes, step_memory
from headpatch.pear.train import TrainOptions
from headpatch.qrhead.detect import LARGE_MODEL_PARAMETERS
from headpatch.recipe import BUILTIN_DATA, Recipe, check_k, parse_settings, recipe_layout

BUILTIN_PROMPT_TOKENS = 1300  # built-in detection prompts: 10 passages of about 60 words, question, chat markup
WIDTH = 118


def _device_text(device: str) -> str:
    if device == "auto":
        return "auto: accelerate places the layers over the GPUs, then CPU memory"
    return device


def _heads_text(heads: str) -> str:
    if heads.endswith(".json") or Path(heads).is_file():
        return f"the heads recorded in {heads} (no location)"
    return f"the given heads {heads.replace(',', ', ')} (no location)"


def _wrapped(text: str, indent: str) -> list[str]:
    return textwrap.wrap(text, WIDTH, subsequent_indent=indent)


def _qrhead_k(recipe: Recipe, k: int | None) -> int:
    # the rule of qrhead.detect.default_k, from the recipe's parameter count instead of a loaded model
    if k is not None:
        return k
    default = 16 if recipe.architecture.parameters_b * 1e9 < LARGE_MODEL_PARAMETERS else 32
    return min(default, recipe_layout(recipe).total_heads)


def _steps(recipe: Recipe, values: Mapping[str, Any], output: str | Path | None) -> tuple[list[str], set[str]]:
    """Numbered step lines and the names of the memory estimates that apply."""
    steps, costs = [], {"export"}
    layout = recipe_layout(recipe)
    total = layout.total_heads
    check_k("k", values["k"], layout)  # flags may have changed what the recipe's own checks passed
    check_k("qrhead_k", values.get("qrhead_k"), layout)
    if values.get("patch") is not None:
        steps.append(("fold", f"the trained coefficients of {values['patch']} (no location, no training)"))
    else:
        if values.get("heads") is not None:
            steps.append(("heads", _heads_text(values["heads"])))
        else:
            settings = ", ".join(f"{s}x{n}" for s, n in parse_settings(values["settings"]))
            locate = (f"score all {total:,} heads on settings {settings} (samples x n), mean vector "
                      f"{values['mean_vector']}, propagation {values['propagation']}; keep the top {values['k']}")
            steps.append(("locate", locate))
            costs.add("locate")
        train = (f"{values['steps']} steps of {values['batch_size']} sequences, n={values['n']}, AdamW lr "
                 f"{values['lr']:g}, {values['warmup']} warm-up steps; one float32 coefficient per head")
        steps.append(("train", train))
        costs.add("train")
    data = values.get("qrhead_data")
    if data is not None:
        source = "the built-in set (Paul Graham passages, planted facts)" if data == BUILTIN_DATA else data
        steps.append(("qrhead", f"detect the top {_qrhead_k(recipe, values.get('qrhead_k'))} QR heads on {source}"))
        costs.add("detect")
    steps.append(("export", f"fold into the checkpoint's own dtype, shard by shard -> {output or '(the -o directory)'}"))
    if values.get("push_to_hub"):
        visibility = "private" if values.get("private") else "public"
        steps.append(("push", f"to the Hub repo {values['push_to_hub']} ({visibility})"))
    lines = []
    for number, (name, text) in enumerate(steps, 1):
        lines += _wrapped(f"  {number}. {name:<7} {text}", " " * 13)
    return lines, costs


def _memory_lines(recipe: Recipe, values: Mapping[str, Any], costs: set[str]) -> list[str]:
    locate = LocateOptions(settings=parse_settings(values["settings"]))
    train = TrainOptions(steps=values["steps"], batch_size=values["batch_size"], n=values["n"], lr=values["lr"],
                         warmup_steps=values["warmup"])
    tokens = BUILTIN_PROMPT_TOKENS if values.get("qrhead_data") == BUILTIN_DATA else DETECT_TOKENS
    estimates: list[StepMemory] = step_memory(recipe.architecture.shape(), values["dtype"], locate, train, tokens)
    lines = []
    for estimate in estimates:
        if estimate.step in costs:
            weights = f"{gigabytes(estimate.weights)} weights + " if estimate.weights else ""
            lines.append(f"  {estimate.step:<8} {weights}{gigabytes(estimate.working)} {estimate.holds}")
    return lines


def _published_lines(recipe: Recipe, values: Mapping[str, Any]) -> list[str]:
    lines = []
    pear, qrhead = recipe.published.pear_heads, recipe.published.qrhead_heads
    if pear is not None and values.get("heads") is None:
        lines += _wrapped(f"  PEAR heads {', '.join(pear.heads)} ({pear.source}); pear.use_published_heads: true "
                          "trains these instead of locating", " " * 4)
    if qrhead is not None:
        lines += _wrapped(f"  QR heads {', '.join(qrhead.heads)} ({qrhead.source})", " " * 4)
    return ["published head lists, for comparison"] + lines if lines else []


def format_plan(recipe: Recipe, values: Mapping[str, Any], output: str | Path | None = None) -> str:
    """What `headpatch export --dry-run` prints for a recipe merged with flags (`values` keyed by CLI names)."""
    facts = recipe.architecture
    layout = recipe_layout(recipe)
    revision = f" at revision {values['revision']}" if values.get("revision") else ""
    lines = [
        f"recipe {recipe.name} (dry run: nothing loaded, nothing written)",
        f"  model    {values['model']}{revision}",
        (f"  shape    {facts.model_type}, {layout.num_layers} layers x {layout.num_heads} heads "
         f"({facts.num_key_value_heads} key/value), head_dim {layout.head_dim}, {facts.parameters_b:g}B parameters"),
    ]
    if values["model"] != recipe.model:
        lines.append(f"           (shape and memory are the recipe's figures for {recipe.model})")
    lines += [
        f"  dtype    {values['dtype']} for locating, training and detection",
        f"  device   {_device_text(values['device'])}",
        f"  seed     {values['seed']}",
        "steps",
    ]
    steps, costs = _steps(recipe, values, output)
    lines += steps
    lines.append("memory per step (estimates, all devices together; how: recipes/README.md)")
    lines += _memory_lines(recipe, values, costs)
    lines += _published_lines(recipe, values)
    return "\n".join(lines)
