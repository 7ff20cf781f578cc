"""The patch record: one JSON document that every step reads, extends and writes."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from headpatch._version import __version__
from headpatch.architectures import HeadLayout
from headpatch.errors import HeadpatchError
from headpatch.heads import Head, check_heads, format_head, parse_head, parse_heads
from headpatch.io.atomic import write_text_atomic
from headpatch.pear.locate import MEAN_VECTORS, PROPAGATIONS, LocateOptions, LocateResult
from headpatch.pear.train import TrainOptions, TrainResult

FORMAT_VERSION = 1


def new_record(source: str, base_model: str, layout: HeadLayout) -> dict[str, Any]:
    """An empty record naming the model it belongs to."""
    return {
        "format_version": FORMAT_VERSION,
        "headpatch_version": __version__,
        "source": source,
        "base_model": base_model,
        "architecture": layout.to_dict(),
    }


def with_location(record: dict[str, Any], result: LocateResult, options: LocateOptions, k: int) -> dict[str, Any]:
    """Add the located suppression heads (top-K by Δπ) and the score of every head."""
    total = result.scores.numel()
    if not 1 <= k <= total:
        raise HeadpatchError(f"K={k} is out of range: the model has {total} heads")
    ranked = result.ranked()
    scores = {format_head(head): round(float(result.scores[head]), 6) for head in ranked}
    location = {
        "method": "PEAR mean ablation, delta_pi = logit_ablated / logit_clean - 1 of the copied token",
        "settings": [list(pair) for pair in options.settings],
        "mean_vector": options.mean_vector,
        "mean_vector_meaning": MEAN_VECTORS[options.mean_vector],
        "propagation": options.propagation,
        "propagation_meaning": PROPAGATIONS[options.propagation],
        "seed": options.seed,
        "special_tokens_excluded": True,
        "k": k,
        "seconds": round(result.seconds, 2),
        "scores": scores,
    }
    pear = {"heads": [format_head(head) for head in ranked[:k]], "location": location}
    return {**record, "pear": pear}


def with_training(record: dict[str, Any], result: TrainResult, options: TrainOptions) -> dict[str, Any]:
    """Add learned coefficients and the held-out figures before and after."""
    training = {
        **asdict(options),
        "optimizer": "AdamW, no weight decay, linear schedule with warm-up",
        "loss": "next-token cross-entropy on the copyable second half of proxy sequences",
        "coefficient_dtype": "float32",
        "seconds": round(result.seconds, 2),
        "train_loss_first": round(result.losses[0], 6),
        "train_loss_last": round(result.losses[-1], 6),
        "heldout_before": _evaluation(result.before),
        "heldout_after": _evaluation(result.after),
    }
    coefficients = {format_head(head): round(value, 8) for head, value in result.coefficients.items()}
    return {**record, "pear": {**record["pear"], "coefficients": coefficients, "training": training}}


def _evaluation(evaluation: Any) -> dict[str, Any]:
    return {"loss": round(evaluation.loss, 6), "copy_accuracy": {str(n): round(a, 4) for n, a in evaluation.accuracy.items()}}


def with_top_k(record: dict[str, Any], k: int) -> dict[str, Any]:
    """Re-pick the top K heads from the scores a location step recorded (no re-location needed)."""
    scores = record.get("pear", {}).get("location", {}).get("scores")
    if not scores:
        raise HeadpatchError("the record holds no location scores to choose K heads from; run `headpatch locate`")
    if not 1 <= k <= len(scores):
        raise HeadpatchError(f"K={k} is out of range: the model has {len(scores)} heads")
    ranked = sorted(scores, key=lambda head: scores[head], reverse=True)
    location = {**record["pear"]["location"], "k": k}
    return {**record, "pear": {"heads": ranked[:k], "location": location}}


def located_heads(record: dict[str, Any]) -> list[Head]:
    """The PEAR heads of a record, in rank order."""
    try:
        return parse_heads(record["pear"]["heads"])
    except KeyError as exc:
        raise HeadpatchError("the record holds no PEAR heads; run `headpatch locate` first") from exc


def coefficients_of(record: dict[str, Any]) -> dict[Head, float]:
    """The learned coefficients of a record, keyed by head."""
    try:
        raw = record["pear"]["coefficients"]
    except KeyError as exc:
        raise HeadpatchError("the record holds no coefficients; run `headpatch train` first") from exc
    coefficients = {}
    for key, value in raw.items():
        if not isinstance(value, (int, float)):
            raise HeadpatchError(f"coefficient of head {key} is not a number: {value!r}")
        coefficients[parse_head(key)] = float(value)
    return coefficients


def check_fits(record: dict[str, Any], layout: HeadLayout) -> None:
    """Raise if a record was made for a model with another head geometry, or names heads outside it."""
    recorded = record.get("architecture")
    if recorded is not None and recorded != layout.to_dict():
        raise HeadpatchError(f"the patch was made for another model: {recorded} does not match {layout.to_dict()}")
    pear = record.get("pear", {})
    check_heads(parse_heads(pear.get("heads", [])), layout)
    check_heads(parse_heads(list(pear.get("coefficients", {}))), layout)


def config_metadata(record: dict[str, Any]) -> dict[str, Any]:
    """The record as stored under `headpatch` in config.json: per-head scores of unselected heads left out."""
    metadata = json.loads(json.dumps(record))
    location = metadata.get("pear", {}).get("location")
    if location and "scores" in location:
        location["scores"] = {head: location["scores"][head] for head in metadata["pear"]["heads"]}
    qrhead = metadata.get("qrhead")
    if qrhead and "scores" in qrhead:
        qrhead["scores"] = {head: qrhead["scores"][head] for head in qrhead["heads"]}
    return metadata


def read_record(path: str | Path) -> dict[str, Any]:
    """Read a record, with a one-line error for a missing or malformed file."""
    try:
        record = json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise HeadpatchError(f"{path} does not exist") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise HeadpatchError(f"cannot read {path}: {exc}") from exc
    if not isinstance(record, dict) or record.get("format_version") != FORMAT_VERSION:
        raise HeadpatchError(f"{path} is not a headpatch record (format_version {FORMAT_VERSION})")
    return record


def write_record(record: dict[str, Any], path: str | Path) -> Path:
    """Write a record atomically (temporary file, then rename)."""
    return write_text_atomic(path, json.dumps(record, indent=2) + "\n")
