"""Write a patched model as an ordinary transformers checkpoint, atomically, never touching the source."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from headpatch.architectures import head_layout
from headpatch.card import render_card
from headpatch.errors import HeadpatchError
from headpatch.fold import fold_model
from headpatch.record import check_fits, coefficients_of, config_metadata, write_record


def check_output_dir(out: Path, overwrite: bool, source_dir: Path | None = None) -> None:
    """Refuse an output that exists (unless overwrite) or that overlaps the source checkpoint."""
    out = out.resolve()
    if source_dir is not None:
        source_dir = source_dir.resolve()
        if out == source_dir or source_dir in out.parents or out in source_dir.parents:
            raise HeadpatchError(f"output directory {out} overlaps the source checkpoint {source_dir}")
    if out.exists():
        if not out.is_dir():
            raise HeadpatchError(f"output path {out} exists and is not a directory")
        if any(out.iterdir()) and not overwrite:
            raise HeadpatchError(f"output directory {out} exists and is not empty; pass --overwrite to replace it")


def _fsync_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


def publish_dir(staging: Path, out: Path) -> None:
    """Move a finished staging directory into place, replacing `out` only once the new one is complete."""
    _fsync_tree(staging)
    if out.exists():
        retired = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        out.rename(retired / "old")
        staging.rename(out)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        staging.rename(out)


def export_checkpoint(
    model: Any, tokenizer: Any, record: dict[str, Any], out: str | Path, overwrite: bool = False,
    source_dir: str | Path | None = None,
) -> Path:
    """Fold the record's coefficients into `model` (in place) and save it with config metadata and a model card."""
    out = Path(out).resolve()
    check_output_dir(out, overwrite, Path(source_dir) if source_dir else None)
    layout = head_layout(model.config)
    check_fits(record, layout)
    coefficients = coefficients_of(record)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        fold_model(model, layout, coefficients)
        model.config.headpatch = config_metadata(record)
        model.save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        (staging / "README.md").write_text(render_card(record, out.name))
        write_record(record, staging / "headpatch.json")
        publish_dir(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out
