"""The PEAR steps over a loaded model, each taking and returning a plain record."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from headpatch.architectures import head_layout
from headpatch.errors import HeadpatchError
from headpatch.heads import Head, check_heads, format_head
from headpatch.io.export import stream_export
from headpatch.io.hub import checkpoint_dir
from headpatch.loading import LoadedModel
from headpatch.pear.locate import LocateOptions, locate_heads
from headpatch.pear.scaling import scaled_heads
from headpatch.pear.train import TrainOptions, train_coefficients
from headpatch.record import check_fits, coefficients_of, located_heads, new_record, with_location, with_training


def base_record(loaded: LoadedModel) -> dict[str, Any]:
    """An empty record for this model."""
    return new_record(loaded.source.name, loaded.source.base_model, head_layout(loaded.model.config))


def check_k(loaded: LoadedModel, k: int) -> None:
    """Fail before any computation when K cannot be satisfied."""
    total = head_layout(loaded.model.config).total_heads
    if not 1 <= k <= total:
        raise HeadpatchError(f"K={k} is out of range: the model has {total} heads")


def locate_step(loaded: LoadedModel, options: LocateOptions, k: int, show_progress: bool = True) -> dict[str, Any]:
    """Score every head and keep the top K as suppression heads."""
    check_k(loaded, k)
    layout = head_layout(loaded.model.config)
    result = locate_heads(loaded.model, loaded.tokenizer, layout, options, show_progress)
    return with_location(base_record(loaded), result, options, k)


def given_heads_record(loaded: LoadedModel, heads: Sequence[Head]) -> dict[str, Any]:
    """A record for heads the user chose, e.g. a published list."""
    check_heads(heads, head_layout(loaded.model.config))
    location = {"method": "given by the user", "k": len(heads)}
    return {**base_record(loaded), "pear": {"heads": [format_head(h) for h in heads], "location": location}}


def train_step(
    loaded: LoadedModel, record: dict[str, Any], options: TrainOptions, show_progress: bool = True
) -> dict[str, Any]:
    """Learn one coefficient per located head."""
    layout = head_layout(loaded.model.config)
    check_fits(record, layout)
    result = train_coefficients(loaded.model, loaded.tokenizer, layout, located_heads(record), options, show_progress)
    return with_training(record, result, options)


def qrhead_step(
    loaded: LoadedModel, record: dict[str, Any], examples: Sequence[Any], data_name: str, k: int | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Detect QR heads on the model as it will be shipped (its PEAR coefficients applied) and add them."""
    from headpatch.qrhead.detect import default_k, detect_heads
    from headpatch.qrhead.metadata import qrhead_metadata
    from headpatch.qrhead.prompt import uses_chat_template

    k = default_k(loaded.model) if k is None else k
    check_k(loaded, k)
    layout = head_layout(loaded.model.config)
    coefficients = coefficients_of(record) if record.get("pear", {}).get("coefficients") else {}
    with scaled_heads(loaded.model, layout, coefficients):
        result = detect_heads(loaded.model, loaded.tokenizer, examples, show_progress)
    section = qrhead_metadata(
        result, k, data_name, uses_chat_template(loaded.tokenizer), all_scores=True
    )
    return {**record, "qrhead": section}


def export_step(
    loaded: LoadedModel, record: dict[str, Any], out: str | Path, overwrite: bool = False, show_progress: bool = True
) -> Path:
    """Fold the record over the source checkpoint's files (stored dtype and shards kept) and write the export."""
    return stream_export(checkpoint_dir(loaded.source), record, out, overwrite, show_progress)
