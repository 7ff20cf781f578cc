"""The plan `headpatch export --dry-run` prints: the steps a recipe, flags on top, would run and what they cost."""

from __future__ import annotations

import textwrap
from pathlib import Path

from headpatch.options import BUILTIN_DATA, ExportJob
from headpatch.pear.memory import DETECT_TOKENS, StepMemory, gigabytes, step_memory
from headpatch.recipe import Recipe, recipe_layout
from headpatch.record import check_k

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


def _steps(recipe: Recipe, job: ExportJob) -> tuple[list[str], set[str]]:
    """Numbered step lines and the names of the memory estimates that apply."""
    steps, costs = [], {"export"}
    total = recipe_layout(recipe).total_heads
    check_k(job.locate.k, total, "k", "the architecture")  # flags may have changed what the recipe's own checks passed
    if job.qrhead.k is not None:
        check_k(job.qrhead.k, total, "qrhead_k", "the architecture")
    if job.patch is not None:
        steps.append(("fold", f"the trained coefficients of {job.patch} (no location, no training)"))
    else:
        if job.heads is not None:
            steps.append(("heads", _heads_text(job.heads)))
        else:
            settings = ", ".join(f"{s}x{n}" for s, n in job.locate.settings)
            kept = "rank them for tuning" if job.tune is not None else f"keep the top {job.locate.k}"
            locate = (f"score all {total:,} heads on settings {settings} (samples x n), mean vector "
                      f"{job.locate.mean_vector}, propagation {job.locate.propagation}; {kept}")
            steps.append(("locate", locate))
            costs.add("locate")
        tune = job.tune if job.heads is None else None
        if tune is not None:
            ladder = ", ".join(str(k) for k in tune.ladder_for(total))
            steps.append(("tune", f"K from {ladder}: each trained up to {tune.max_steps} steps of {tune.batch_size} "
                                  f"sequences (n={tune.n}, Adam lr {tune.lr:g}), stopped when the held-out copy loss "
                                  f"stops improving; the best within perplexity +{tune.max_perplexity_increase:.0%} "
                                  f"and KL {tune.max_kl:g} kept"))
            costs.add("tune")
        else:
            steps.append(("train", f"{job.train.steps} steps of {job.train.batch_size} sequences, n={job.train.n}, "
                                   f"AdamW lr {job.train.lr:g}, {job.train.warmup_steps} warm-up steps; one float32 "
                                   "coefficient per head"))
            costs.add("train")
    data = job.qrhead.data
    if data is not None:
        source = "the built-in set (Paul Graham passages, planted facts)" if data == BUILTIN_DATA else data
        k = job.qrhead.resolved_k(round(recipe.architecture.parameters_b * 1e9), total)
        steps.append(("qrhead", f"detect the top {k} QR heads on {source}"))
        costs.add("detect")
    output = job.export.output or "(the -o directory)"
    if job.export.gguf:
        steps.append(("export", f"fold into the source GGUF's attn_output blocks -> {output}/<name>-pear[.QUANT].gguf"))
    else:
        steps.append(("export", f"fold into the checkpoint's own dtype, shard by shard -> {output}"))
    if job.export.push_to_hub:
        visibility = "private" if job.export.private else "public"
        steps.append(("push", f"to the Hub repo {job.export.push_to_hub} ({visibility})"))
    lines = []
    for number, (name, text) in enumerate(steps, 1):
        lines += _wrapped(f"  {number}. {name:<7} {text}", " " * 13)
    return lines, costs


def _memory_lines(recipe: Recipe, job: ExportJob, costs: set[str]) -> list[str]:
    tokens = BUILTIN_PROMPT_TOKENS if job.qrhead.data == BUILTIN_DATA else DETECT_TOKENS
    tune = job.tune if "tune" in costs else None
    estimates: list[StepMemory] = step_memory(recipe.architecture.shape(), job.dtype, job.locate, job.train, tokens,
                                              tune)
    lines = []
    for estimate in estimates:
        if estimate.step in costs:
            weights = f"{gigabytes(estimate.weights)} weights + " if estimate.weights else ""
            lines.append(f"  {estimate.step:<8} {weights}{gigabytes(estimate.working)} {estimate.holds}")
    return lines


def _published_lines(recipe: Recipe, job: ExportJob) -> list[str]:
    lines = []
    pear, qrhead = recipe.published.pear_heads, recipe.published.qrhead_heads
    if pear is not None and job.heads is None:
        lines += _wrapped(f"  PEAR heads {', '.join(pear.heads)} ({pear.source}); pear.use_published_heads: true "
                          "trains these instead of locating", " " * 4)
    if qrhead is not None:
        lines += _wrapped(f"  QR heads {', '.join(qrhead.heads)} ({qrhead.source})", " " * 4)
    return ["published head lists, for comparison"] + lines if lines else []


def format_plan(recipe: Recipe, job: ExportJob) -> str:
    """What `headpatch export --dry-run` prints for a recipe merged with flags into `job`."""
    facts = recipe.architecture
    layout = recipe_layout(recipe)
    revision = f" at revision {job.revision}" if job.revision else ""
    lines = [
        f"recipe {recipe.name} (dry run: nothing loaded, nothing written)",
        f"  model    {job.model}{revision}",
        (f"  shape    {facts.model_type}, {layout.num_layers} layers x {layout.num_heads} heads "
         f"({facts.num_key_value_heads} key/value), head_dim {layout.head_dim}, {facts.parameters_b:g}B parameters"),
    ]
    if job.model != recipe.model:
        lines.append(f"           (shape and memory are the recipe's figures for {recipe.model})")
    lines += [
        f"  dtype    {job.dtype} for locating, training and detection",
        f"  device   {_device_text(job.device)}",
        f"  seed     {job.seed}",
        "steps",
    ]
    steps, costs = _steps(recipe, job)
    lines += steps
    lines.append("memory per step (estimates, all devices together; how: recipes/README.md)")
    lines += _memory_lines(recipe, job, costs)
    lines += _published_lines(recipe, job)
    return "\n".join(lines)
