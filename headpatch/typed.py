"""Typed records from parsed JSON or YAML: a mapping checked against a dataclass, with one-line errors naming the key.

Recipes and patch records are both files a user may edit by hand, so both are read through this one converter:
unknown keys get a "did you mean", missing keys and wrong types name the exact key, and field metadata carries the
value rules (`choices`, `minimum`). Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any

from headpatch.errors import HeadpatchError


def choices(values: typing.Iterable[str]) -> dict[str, tuple[str, ...]]:
    """Field metadata: the value must be one of these."""
    return {"choices": tuple(values)}


def describe(hint: Any) -> str:
    """How an expected type reads in an error message."""
    if dataclasses.is_dataclass(hint):
        return "a mapping of keys"
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType):
        return " or ".join(describe(arg) for arg in args if arg is not type(None)) + " or null"
    if typing.get_origin(hint) is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
        return f"[{', '.join(describe(arg).removeprefix('a ').removeprefix('an ') for arg in args)}] pair"
    if typing.get_origin(hint) is dict:
        return f"a mapping to {describe(args[1]).removeprefix('a ').removeprefix('an ')}s"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[hint]


def _wrong_type(key: str, hint: Any, value: Any) -> HeadpatchError:
    return HeadpatchError(f"{key} must be {describe(hint)}, got {value!r}")


def _scalar(hint: Any, value: Any, key: str, yaml_numbers: bool) -> Any:
    if hint is float:
        if isinstance(value, str) and yaml_numbers:
            try:  # YAML 1.1, which PyYAML reads, takes 5e-3 (no dot) for a string
                value = float(value)
            except ValueError:
                raise _wrong_type(key, hint, value) from None
        if isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, float):
            raise _wrong_type(key, hint, value)
        if not math.isfinite(value):
            raise HeadpatchError(f"{key} must be a finite number, got {value!r}")
        return value
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise _wrong_type(key, hint, value)
    return value


def convert(hint: Any, value: Any, key: str, yaml_numbers: bool = False) -> Any:
    """`value` checked against the type hint, converted where the file gives another form of the same thing."""
    if dataclasses.is_dataclass(hint):
        return build(hint, value, key, yaml_numbers)
    if isinstance(hint, types.UnionType):
        if value is None:
            return None
        (inner,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if dataclasses.is_dataclass(inner) or typing.get_origin(inner) is dict:  # their errors name the exact key
            return convert(inner, value, key, yaml_numbers)
        try:
            return convert(inner, value, key, yaml_numbers)
        except HeadpatchError:
            raise _wrong_type(key, hint, value) from None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        fixed = not (len(args) == 2 and args[1] is Ellipsis)
        if not isinstance(value, list) or (fixed and len(value) != len(args)):
            raise _wrong_type(key, hint, value)
        try:
            return tuple(convert(args[i] if fixed else args[0], item, key, yaml_numbers)
                         for i, item in enumerate(value))
        except HeadpatchError:
            raise _wrong_type(key, hint, value) from None
    if origin is dict:
        if not isinstance(value, dict):
            raise _wrong_type(key, hint, value)
        return {convert(args[0], name, f"{key} key", yaml_numbers): convert(args[1], item, f"{key}.{name}",
                                                                          yaml_numbers)
                for name, item in value.items()}
    return _scalar(hint, value, key, yaml_numbers)


def _check_value(spec: dataclasses.Field, value: Any, key: str) -> None:
    allowed = spec.metadata.get("choices")
    if allowed is not None and value not in allowed:
        raise HeadpatchError(f"{key} must be one of {', '.join(allowed)}; got {value!r}")
    minimum = spec.metadata.get("minimum")
    if minimum is not None and value is not None and value < minimum:
        raise HeadpatchError(f"{key} must be at least {minimum}, got {value!r}")


def file_fields(cls: type) -> dict[str, dataclasses.Field]:
    """The fields of `cls` that a file may set (metadata `in_file: False` marks the ones set by the program)."""
    return {spec.name: spec for spec in dataclasses.fields(cls) if spec.metadata.get("in_file", True)}


def build(cls: type, data: Any, section: str, yaml_numbers: bool = False) -> Any:
    """An instance of dataclass `cls` from a mapping, refusing unknown and missing keys."""
    if not isinstance(data, dict):
        raise HeadpatchError(f"{section or 'the file'} must be a mapping of keys, got {data!r}")
    specs = file_fields(cls)
    where = f"in section '{section}'" if section else "at the top level"
    for key in data:
        if key not in specs:
            close = difflib.get_close_matches(str(key), specs, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(specs)}"
            raise HeadpatchError(f"unknown key '{key}' {where}{hint}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, spec in specs.items():
        key = f"{section}.{name}" if section else name
        if name not in data:
            if spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
                raise HeadpatchError(f"missing key '{name}' {where}")
            continue
        values[name] = convert(hints[name], data[name], key, yaml_numbers)
        _check_value(spec, values[name], key)
    try:
        return cls(**values)
    except HeadpatchError as exc:  # the dataclass's own cross-field rules
        raise HeadpatchError(f"{section}: {exc}" if section else str(exc)) from None


def to_plain(record: Any) -> Any:
    """A dataclass tree as JSON-ready data: fields in declaration order, None fields left out, tuples as lists."""
    if dataclasses.is_dataclass(record):
        return {spec.name: to_plain(getattr(record, spec.name)) for spec in dataclasses.fields(record)
                if getattr(record, spec.name) is not None}
    if isinstance(record, (tuple, list)):
        return [to_plain(item) for item in record]
    if isinstance(record, dict):
        return {name: to_plain(item) for name, item in record.items()}
    return record
