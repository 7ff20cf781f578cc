"""Write a patched model as an ordinary transformers checkpoint, atomically, never touching the source."""

from __future__ import annotations

import fnmatch
import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headpatch.architectures import head_layout
from headpatch.errors import HeadpatchError, printable
from headpatch.io.atomic import check_output_dir, staged_output, write_text_atomic
from headpatch.io.card import (
    BaseCard,
    CardContext,
    license_warning,
    read_base_card,
    render_card,
    with_evaluation,
)
from headpatch.io.checkpoint import OTHER_WEIGHT_PATTERNS, built_config, read_index, resolves_inside, source_roots
from headpatch.io.files import write_record
from headpatch.io.stream import check_folds, plan_fold, write_folded_shards
from headpatch.pear.fold import fold_model
from headpatch.record import PatchRecord

WRITTEN_BY_EXPORT = ("config.json", "README.md", "headpatch.json")
# Of those, the ones whose source content flows into the export (the config re-emitted, the card's license and front
# matter): carried_files never looks at them, so they are checked on their own.
READ_BY_EXPORT = ("config.json", "README.md")


def read_source_file(source: Path, name: str) -> Path:
    """The real path of a source file the export reads and republishes; raise if it links outside the source (or,
    for a Hub-cache snapshot, its repository's blobs), where it would publish another file's content. A missing file
    is returned as is: its reader says it is missing."""
    path = source / name
    if (path.exists() or path.is_symlink()) and not resolves_inside(path, source_roots(source)):
        raise HeadpatchError(f"{path} links to a file outside the checkpoint directory")
    # Read through the resolved path, so a link swapped after this check cannot redirect the read.
    return path.resolve() if path.exists() else path


def check_read_files(source: Path) -> None:
    """Refuse a source whose config or card links outside it, before anything is read or written."""
    for name in READ_BY_EXPORT:
        read_source_file(source, name)


def _write_card_and_record(staging: Path, record: PatchRecord, out: Path, base: BaseCard,
                           context: CardContext) -> None:
    card = render_card(record, context.repo_id or out.name, base, context.command)
    (staging / "README.md").write_text(card, encoding="utf-8")
    write_record(record, staging / "headpatch.json")


def export_checkpoint(
    model: Any, tokenizer: Any, record: PatchRecord, out: str | Path, overwrite: bool = False,
    source_dir: str | Path | None = None,
) -> Path:
    """Fold the record's coefficients into a loaded `model` (in place) and save it with metadata and a model card."""
    out = Path(out).resolve()
    check_output_dir(out, overwrite, Path(source_dir) if source_dir else None)
    if source_dir:
        check_read_files(Path(source_dir))
    record = record.published()
    layout = head_layout(model.config)
    record.check_fits(layout)
    coefficients = record.coefficients()
    with staged_output(out, overwrite) as staging:
        fold_model(model, layout, coefficients)
        model.config.headpatch = record.config_metadata()
        model.save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        base = read_base_card(Path(source_dir)) if source_dir else BaseCard()
        _write_card_and_record(staging, record, out, base, CardContext())
    return out


@dataclass(frozen=True)
class Carried:
    """The source files an export copies unchanged, and those it refuses because they link outside the source."""

    files: list[tuple[Path, str]]  # (path, name relative to the source)
    skipped: list[str]


def carried_files(source: Path) -> Carried:
    """Source files an export copies unchanged: no weights of any format (the fold writes its own), no hidden files,
    nothing the export writes itself, and only files that lie inside the source (or, for a Hub-cache snapshot, inside
    its repository's blobs): a link to ~/.cache/huggingface/token must not be published."""
    roots = source_roots(source)
    files, skipped = [], []
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source).as_posix()
        if any(part.startswith(".") for part in path.relative_to(source).parts) or not path.is_file():
            continue
        if relative in WRITTEN_BY_EXPORT:
            continue
        if any(fnmatch.fnmatch(relative, pattern) or fnmatch.fnmatch(path.name, pattern)
               for pattern in OTHER_WEIGHT_PATTERNS):
            continue
        if resolves_inside(path, roots):
            files.append((path, relative))
        else:
            skipped.append(relative)
    return Carried(files, skipped)


def add_evaluation(out: Path, section: str, summary: list[dict[str, Any]]) -> None:
    """Append an evaluation section to an export's model card and put its headline rows in the card's model-index,
    replacing the file atomically."""
    card = out / "README.md"
    if not card.is_file():
        raise HeadpatchError(f"{out} holds no README.md to add the evaluation to; is it an export?")
    write_text_atomic(card, with_evaluation(card.read_text(encoding="utf-8"), section, summary, out.name))


def _warn_stderr(message: str) -> None:
    print(message, file=sys.stderr)


def stream_export(
    source: str | Path, record: PatchRecord, out: str | Path, overwrite: bool = False, show_progress: bool = True,
    warn: Callable[[str], None] = _warn_stderr, context: CardContext = CardContext(),
) -> Path:
    """Fold the record straight over the source's safetensors files into a new checkpoint directory; `warn` gets,
    after the export is written, a line naming the source files not carried because they link outside the source,
    and one when the base model's license is not known. `context` names the Hub repo and the command in the card."""
    source, out = Path(source).resolve(), Path(out).resolve()
    check_output_dir(out, overwrite, source)
    check_read_files(source)
    record = record.published()
    layout = head_layout(built_config(source))
    record.check_fits(layout)
    plan = plan_fold(source, layout, record.coefficients())
    check_folds(plan, layout)
    carried = carried_files(source)
    base = read_base_card(source)
    with staged_output(out, overwrite) as staging:
        for path, relative in carried.files:
            (staging / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, staging / relative)
        if plan.index is not None:
            shutil.copyfile(source / plan.index, staging / plan.index)
            if read_index(staging / plan.index) != plan.weights:  # replaced since it was planned
                raise HeadpatchError(f"{source / plan.index} changed while it was being exported; run the export "
                                     "again")
        write_folded_shards(plan, layout, staging, show_progress)
        raw_config = json.loads(read_source_file(source, "config.json").read_text(encoding="utf-8"))
        raw_config["headpatch"] = record.config_metadata()
        (staging / "config.json").write_text(json.dumps(raw_config, indent=2) + "\n", encoding="utf-8")
        _write_card_and_record(staging, record, out, base, context)
    # said once the export exists, so that an error is always the only line a failed run prints
    if carried.skipped:
        warn(printable(f"not carried (links outside the source): {', '.join(carried.skipped)}"))
    warning = license_warning(base)
    if warning is not None:
        warn(warning)
    return out
