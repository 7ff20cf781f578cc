"""Small text files users hand to headpatch (records, data, recipes, configs): read as UTF-8 with one-line errors,
written atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from headpatch.errors import HeadpatchError
from headpatch.io.atomic import write_text_atomic
from headpatch.record import PatchRecord


def read_text(path: str | Path, what: str = "") -> str:
    """The text of `path`; a missing or unreadable file is one HeadpatchError line naming it (and `what` it is)."""
    name = f"{what} {path}".strip()
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise HeadpatchError(f"{name} does not exist") from None
    except IsADirectoryError:
        raise HeadpatchError(f"{name} is a directory, not a file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise HeadpatchError(f"cannot read {name}: {exc}") from None


def read_json(path: str | Path, what: str = "") -> Any:
    """Parsed JSON of `path`, with one-line errors for a missing, unreadable or malformed file."""
    text = read_text(path, what)
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise HeadpatchError(f"cannot read {f'{what} {path}'.strip()}: not valid JSON ({exc})") from None


def read_record(path: str | Path) -> PatchRecord:
    """A checked patch record from a heads.json, patch.json or headpatch.json file."""
    return PatchRecord.from_text(read_text(path), str(path))


def write_record(record: PatchRecord, path: str | Path) -> Path:
    """Write a record atomically (temporary file, then rename)."""
    return write_text_atomic(path, record.to_text())
