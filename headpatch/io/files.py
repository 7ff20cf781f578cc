"""Small text files users hand to headpatch (records, data, recipes, configs): read as UTF-8 with one-line errors,
written atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

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
    except (ValueError, RecursionError) as exc:  # ValueError: also int() refusing thousands of digits
        raise HeadpatchError(f"cannot read {f'{what} {path}'.strip()}: not valid JSON ({str(exc)[:200]})") from None


class _StrictYamlLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (plain YAML keeps the last silently) and aliases
    (`*name`), which no headpatch file needs and which let a few hundred bytes expand into gigabytes."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.events.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "YAML aliases (*name) are not allowed", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} appears twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(path: str | Path, what: str = "") -> Any:
    """Parsed YAML of `path` (duplicate keys and aliases refused), with one-line errors naming the place."""
    return parse_yaml(read_text(path, what), str(path))


def parse_yaml(text: str, path: str) -> Any:
    """Parsed YAML text (duplicate keys and aliases refused); errors are one line naming `path` and the place."""
    try:
        return yaml.load(text, Loader=_StrictYamlLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise HeadpatchError(f"{path}: YAML syntax error{where}: {exc.problem}") from None
    except (yaml.YAMLError, RecursionError) as exc:
        raise HeadpatchError(f"{path}: YAML syntax error: {str(exc).splitlines()[0] if str(exc) else exc!r}") from None


def read_record(path: str | Path) -> PatchRecord:
    """A checked patch record from a heads.json, patch.json or headpatch.json file."""
    return PatchRecord.from_text(read_text(path), str(path))


def write_record(record: PatchRecord, path: str | Path) -> Path:
    """Write a record atomically (temporary file, then rename)."""
    return write_text_atomic(path, record.to_text())
