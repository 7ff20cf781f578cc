"""The model card of an exported checkpoint: YAML front matter for the Hub, then what changed and how to use it."""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from headpatch._version import library_versions
from headpatch.errors import HeadpatchError, printable
from headpatch.io.files import parse_yaml
from headpatch.record import PatchRecord, Pear, QRHeads, Tuning

# Files whose terms bind the weights: carried with every export, and fetched with the weights from the Hub.
LICENSE_PATTERNS = ("LICENSE*", "LICENCE*", "USE_POLICY*", "NOTICE*")


@dataclass(frozen=True)
class CardContext:
    """Where an export goes and how it was made: the card's loading snippet names the Hub repo it is pushed to (else
    the folder), and its last section the command that made it."""

    repo_id: str | None = None
    command: str | None = None  # as public_command gives it


def public_command(argv: Sequence[str]) -> str:
    """`headpatch ARGV` as a public card may show it: an argument naming a local file or directory (or a flag's
    `=value` doing so) is reduced to its last path component, so no user name in /home/alice/... is published."""
    shown = []
    for argument in argv:
        flag, equals, value = argument.partition("=") if argument.startswith("--") else ("", "", argument)
        if value.startswith(("/", "~", "./", "../")) or Path(value).expanduser().exists():
            value = Path(value).name or value
        shown.append(flag + equals + value)
    return shlex.join(["headpatch", *shown])


@dataclass(frozen=True)
class BaseCard:
    """What an export's card keeps from the base model's card front matter: its terms and what it is for."""

    license: str | None = None
    license_name: str | None = None  # for license "other"
    license_link: str | None = None
    language: tuple[str, ...] = ()
    pipeline_tag: str | None = None
    problem: str | None = None  # why nothing could be read, for the warning


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def read_base_card(source: Path) -> BaseCard:
    """The license, language and pipeline tag of the source's README.md front matter. A missing or malformed card
    gives an empty one whose `problem` says why (a stranger's card is input like any other: never a traceback)."""
    card = source / "README.md"
    if not card.is_file():
        return BaseCard(problem=f"{source.name} has no README.md")
    return parse_base_card(card.read_text(encoding="utf-8", errors="replace"), str(card))


def parse_base_card(text: str, where: str) -> BaseCard:
    """The license, language and pipeline tag of a card's front matter (`where` names it in YAML errors)."""
    if not text.startswith("---"):
        return BaseCard(problem="its README.md has no front matter")
    try:  # the strict loader: a stranger's front matter may hold an alias bomb
        front = parse_yaml(text.split("---", 2)[1], where) if text.count("---") >= 2 else None
    except HeadpatchError:
        front = None
    if not isinstance(front, dict):
        return BaseCard(problem="its README.md front matter is not readable YAML")
    language = front.get("language")
    languages = [language] if isinstance(language, str) else language if isinstance(language, list) else []
    return BaseCard(_text(front.get("license")), _text(front.get("license_name")), _text(front.get("license_link")),
                    tuple(item for item in languages if _text(item)), _text(front.get("pipeline_tag")))


def license_warning(base: BaseCard) -> str | None:
    """The line to print when the export's card will name no license, or None."""
    if base.license is not None:
        return None
    reason = base.problem or "its README.md front matter names no license"
    return printable(f"the base model's license is not known ({reason}): the export's card names none; add the "
                     "base model's terms to README.md before publishing")


def _pear_section(pear: Pear | None) -> list[str]:
    coefficients = pear.coefficients or {} if pear is not None else {}
    scores = pear.location.scores or {} if pear is not None else {}
    lines = [
        "## What was changed",
        "",
        f"PEAR ([arXiv 2409.19745](https://arxiv.org/abs/2409.19745)) found {len(coefficients)} attention heads that "
        "suppress copying from the context and learned one scalar per head with the rest of the model frozen. "
        "Each scalar is folded into the columns of that layer's attention output projection that belong to the "
        "head, so the checkpoint has exactly the base model's shapes and costs nothing extra at inference.",
        "",
        "| head (layer-head) | Δπ when ablated | coefficient |",
        "|---|---|---|",
    ]
    for head, value in coefficients.items():
        score = scores.get(head)
        lines.append(f"| {head} | {score:+.4f} | {value:.4f} |" if score is not None else f"| {head} | | {value:.4f} |")
    return lines


def _figures_section(pear: Pear | None) -> list[str]:
    training = pear.training if pear is not None else None
    if training is None:
        return []
    before, after = training.heldout_before, training.heldout_after
    lines = [
        "## Measured figures",
        "",
        "Held-out random-token copy task (sequences never used for location or training):",
        "",
        "| | loss | " + " | ".join(f"copy acc. n={n}" for n in before.copy_accuracy) + " |",
        "|---|---|" + "---|" * len(before.copy_accuracy),
    ]
    for label, figures in (("base", before), ("patched", after)):
        accuracy = " | ".join(f"{value:.3f}" for value in figures.copy_accuracy.values())
        lines.append(f"| {label} | {figures.loss:.4f} | {accuracy} |")
    location = pear.location
    settings = [list(pair) for pair in location.settings] if location.settings is not None else None
    lines += [
        "",
        f"Location: settings (samples, n) {settings}, mean vector `{location.mean_vector}`, "
        f"propagation `{location.propagation}`, K={location.k}. Training: {training.steps} steps of "
        f"{training.batch_size} sequences, n={training.n}, {training.optimizer.split(',')[0]} lr {training.lr}.",
    ]
    return lines + _tuning_lines(pear.tuning)


def _tuning_lines(tuning: Tuning | None) -> list[str]:
    if tuning is None:
        return []
    # records made before the whole-text check have no such figures: their table keeps its old columns
    checked = any(c.guard_check is not None for c in tuning.candidates)
    check_sentence = (" Before one is chosen, candidates within the guard and beyond noise are checked on the guard "
                      "text's windows, lowest loss first until one passes: there the perplexity bound applies to the "
                      "upper end of a 95% interval over windows." if checked else "")
    check_header = " whole guard text: perplexity change (95% interval), KL |" if checked else ""
    lines = [
        "",
        "### How K was chosen",
        "",
        f"Each K of the ladder {list(tuning.ladder)} was trained from coefficients of 1, measured every "
        f"{tuning.eval_every} steps on {tuning.selection} and on the damage guard ({tuning.guard_text}; perplexity at "
        f"most +{tuning.max_perplexity_increase:.1%}, mean KL from the base at most {tuning.max_kl} nats per token), "
        f"and stopped when it left the guard, when the held-out copy loss had not improved by "
        f"{tuning.min_improvement} nats for {tuning.patience} measurements (converged), or after {tuning.max_steps} "
        f"steps. Each keeps its best measured coefficients within the guard.{check_sentence}",
        "",
        "| K | steps kept / run | stopped by | held-out copy loss | change from base (95% interval) | copy accuracy "
        f"| perplexity change | KL (nats/token) | guard |{check_header}",
        "|---|---|---|---|---|---|---|---|---|" + ("---|" if checked else ""),
        f"| base | | | {tuning.base_heldout_loss:.4f} | | {tuning.base_heldout_accuracy:.3f} | | | |"
        + (" |" if checked else ""),
    ]
    for c in tuning.candidates:
        low, high = c.loss_change_interval
        check_cell = f" {c.guard_check_summary} |" if checked else ""
        lines.append(f"| {c.k} | {c.steps} / {c.steps_run} | {c.stopped} | {c.heldout_loss:.4f} "
                     f"| [{low:+.4f}, {high:+.4f}] | {c.heldout_accuracy:.3f} | {c.perplexity_change:+.3%} "
                     f"| {c.kl:.5f} | {'within' if c.within_guard else 'outside'} |{check_cell}")
    if tuning.skipped:
        last = tuning.candidates[-1]
        lines += ["", f"Not trained: K={', '.join(map(str, tuning.skipped))}. The damage guard stopped K={last.k} at "
                      f"step {last.steps_run} before it beat the best smaller K or the base, and a larger K, "
                      "scaling more heads per step, is expected to meet the guard sooner."]
    return lines + ["", f"Chosen: {tuning.reason}."]


def _qrhead_section(qrhead: QRHeads | None, repo_hint: str) -> list[str]:
    if qrhead is None:
        return []
    detection = qrhead.detection
    return [
        "## Query-focused retrieval heads",
        "",
        f"QRHead ([arXiv 2506.09944](https://arxiv.org/abs/2506.09944)) heads detected on {detection.data} "
        f"({detection.examples} examples), in rank order: `{','.join(qrhead.heads)}`. "
        "Their attention from a query to each passage scores the passage, so the checkpoint reranks with itself:",
        "",
        "```python",
        "from headpatch import QRRetriever",
        f'retriever = QRRetriever.from_pretrained("{repo_hint}")',
        "retriever.rerank(query, passages, top_k=5)  # [(index, score), ...]",
        "```",
        "",
    ]


def _provenance_section(command: str | None) -> list[str]:
    versions = ", ".join(f"{name} {version}" for name, version in library_versions().items())
    made = f"`{command}`" if command else "the headpatch Python API"
    return ["## Reproduce", "", f"Made by {made} with {versions}.", ""]


def _transformers_loading(repo_hint: str) -> list[str]:
    return [
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        f'model = AutoModelForCausalLM.from_pretrained("{repo_hint}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{repo_hint}")',
        "print(model.config.headpatch)  # how this checkpoint was made",
        "```",
    ]


def _gguf_loading(repo_hint: str, gguf: GGUFCard) -> list[str]:
    model = Path(gguf.file).stem
    return [
        f"`{gguf.file}` is the source GGUF with only its `attn_output` tensors changed; every other tensor, the "
        f"tokenizer and the chat template are the source's, byte for byte. {gguf.fold_summary}",
        "",
        "llama.cpp:",
        "",
        "```sh",
        f"llama-cli -m {gguf.file} -p \"Hello\"",
        "```",
        "",
        "Ollama: a `Modelfile` beside the file (the chat template travels inside the GGUF; the second line gives the "
        "model its whole trained context, which Ollama's default cuts short),",
        "",
        "```",
        f"FROM ./{gguf.file}",
        *([f"PARAMETER num_ctx {gguf.context_length}"] if gguf.context_length else []),
        "```",
        "",
        "then",
        "",
        "```sh",
        f"ollama create {model} -f Modelfile && ollama run {model}",
        "```",
        "",
        "transformers (de-quantizes to float32):",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        f'model = AutoModelForCausalLM.from_pretrained("{repo_hint}", gguf_file="{gguf.file}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{repo_hint}", gguf_file="{gguf.file}")',
        "```",
    ]


@dataclass(frozen=True)
class GGUFCard:
    """What a GGUF export's card says about its file: the name, and how its tensors took the patch."""

    file: str
    fold_summary: str
    context_length: int | None = None  # the GGUF's `<arch>.context_length`


def render_card(record: PatchRecord, repo_hint: str = "path/to/this/checkpoint", base: BaseCard = BaseCard(),
                command: str | None = None, gguf: GGUFCard | None = None) -> str:
    """The README.md of an exported checkpoint (a transformers folder, or a GGUF file when `gguf` is given), keeping
    the base card's license, language and pipeline tag; its last section names the command (as public_command gives
    it) and the library versions that made it."""
    qr_tags = ["qrhead", "retrieval-heads", "reranker"] if record.qrhead is not None else []
    data = ModelCardData(
        base_model=record.base_model,
        base_model_relation="finetune",
        library_name="transformers" if gguf is None else "gguf",
        license=base.license,
        license_name=base.license_name,
        license_link=base.license_link,
        language=list(base.language) or None,
        pipeline_tag=base.pipeline_tag or "text-generation",
        tags=["headpatch", "pear", *qr_tags, *(["gguf"] if gguf is not None else [])],
    )
    pear = record.pear
    body = [
        f"# {record.base_model or record.source} with PEAR head re-weighting",
        "",
        f"Made with headpatch {record.headpatch_version} from `{record.source}`. An ordinary "
        f"{'transformers checkpoint' if gguf is None else 'GGUF file'}: no custom code, no peft, no headpatch needed "
        "to use it.",
        "",
        *_pear_section(pear),
        "",
        "## How to load it",
        "",
        *(_transformers_loading(repo_hint) if gguf is None else _gguf_loading(repo_hint, gguf)),
        "",
        *_figures_section(pear),
        "",
        *_qrhead_section(record.qrhead, repo_hint),
        "The full record (heads, coefficients, settings, results) is in "
        f"{'`config.json` under the key `headpatch`' if gguf is None else 'the GGUF key `headpatch.record`'} and in "
        "`headpatch.json`.",
        "",
        *_provenance_section(command),
    ]
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body)))


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def eval_results(summary: list[dict[str, Any]]) -> list[EvalResult]:
    """The headline rows of a `headpatch eval` report as the Hub's model-index results: dataset `headpatch-<task>`,
    the evaluated model's value, and for a comparison the base model's value beside it (metric name "... (base)")."""
    results = []
    for row in summary:
        values = row["values"]
        own = values.get("patched", values.get("model"))
        for value, suffix in ((own, ""), (values.get("base"), " (base)")):
            if value is None:
                continue
            results.append(EvalResult(task_type="text-generation", dataset_type=f"headpatch-{row['task']}",
                                      dataset_name=f"headpatch-{row['task']}", metric_type=_slug(row["metric"]),
                                      metric_value=round(float(value), 6), metric_name=row["metric"] + suffix))
    return results


def with_evaluation(card_text: str, section: str, summary: list[dict[str, Any]], model_name: str) -> str:
    """A card with an evaluation section (its first line the heading) at the end and the same figures in its
    machine-readable model-index, both replacing an earlier evaluation."""
    card = ModelCard(card_text)
    card.data.eval_results = eval_results(summary) or None
    card.data.model_name = model_name
    heading = section.split("\n", 1)[0]
    text = card.text
    if f"\n{heading}\n" in f"\n{text}":  # an earlier evaluation: replaced up to the next section
        before, _, after = f"\n{text}".partition(f"\n{heading}\n")
        rest = after.split("\n## ", 1)
        text = before[1:] + ("\n## " + rest[1] if len(rest) > 1 else "")
    card.text = text.rstrip("\n") + "\n\n" + section
    return str(card)
