"""The model card of an exported checkpoint: YAML front matter for the Hub, then what changed and how to use it."""

from __future__ import annotations

from huggingface_hub import ModelCard, ModelCardData

from headpatch.record import PatchRecord, Pear, QRHeads


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
        f"{training.batch_size} sequences, n={training.n}, AdamW lr {training.lr}.",
    ]
    return lines


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


def render_card(record: PatchRecord, repo_hint: str = "path/to/this/checkpoint") -> str:
    """The README.md of an exported checkpoint."""
    data = ModelCardData(
        base_model=record.base_model,
        base_model_relation="finetune",
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["headpatch", "pear", *(["qrhead"] if record.qrhead is not None else [])],
    )
    pear = record.pear
    body = [
        f"# {record.base_model or record.source} with PEAR head re-weighting",
        "",
        f"Made with headpatch {record.headpatch_version} from `{record.source}`. An ordinary transformers "
        "checkpoint: no custom code, no peft, no headpatch needed to use it.",
        "",
        *_pear_section(pear),
        "",
        "## How to load it",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        f'model = AutoModelForCausalLM.from_pretrained("{repo_hint}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{repo_hint}")',
        "print(model.config.headpatch)  # how this checkpoint was made",
        "```",
        "",
        *_figures_section(pear),
        "",
        *_qrhead_section(record.qrhead, repo_hint),
        "The full record (heads, coefficients, settings, results) is in `config.json` under the key `headpatch`.",
        "",
    ]
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body)))
