"""The safetensors header, accepted exactly when the safetensors library accepts it.

A checkpoint headpatch accepts must load afterwards, and a valid one must not be refused, so these rules follow the
library's Rust reader (`SafeTensors::read_metadata`, serde_json underneath) rather than Python's more lenient json:
no NaN or out-of-range numbers anywhere, no lone surrogates, nesting below serde_json's recursion limit, a tensor entry
as an object (or serde's 3-element sequence form) with no repeated field, integer shapes and offsets that fit a u64,
tensors tiling the data area in offset order, and sub-byte dtypes ending on a byte boundary.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

MAX_HEADER_BYTES = 100_000_000  # safetensors' MAX_HEADER_SIZE
_MAX_DEPTH = 127  # serde_json's recursion limit, in nested arrays and objects
_U64_MAX = 2**64 - 1
_ENTRY_FIELDS = ("dtype", "shape", "data_offsets")
# Element sizes in bits of every dtype the format defines (safetensors' Dtype::bitsize).
DTYPE_BITS = {
    "BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32,
    "C64": 64, "F64": 64, "I64": 64, "U64": 64,
}


class HeaderError(ValueError):
    """The header breaks one of the format's rules; the message says which (and names the tensor)."""


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor's bytes lie in its file (absolute offsets: the header's, past the header) and what they hold."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        """Size of the tensor's data in bytes."""
        return self.end - self.begin


class _JsonObject(dict):
    """A parsed JSON object that remembers which of its keys appeared more than once (the last value is kept)."""

    repeated: frozenset[str] = frozenset()


def _object(pairs: list[tuple[str, Any]]) -> _JsonObject:
    result = _JsonObject(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        result.repeated = frozenset(key for key, _ in pairs if key in seen or seen.add(key))
    return result


def _no_constant(name: str) -> float:
    raise HeaderError(f"{name} is not valid JSON")


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise HeaderError(f"number {text[:40]} is out of range")
    return value


def _children(value: Any) -> Iterator[Any]:
    if isinstance(value, dict):
        yield from value.values()
    elif isinstance(value, list):
        yield from value


def _depth(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in _children(item))
    return deepest


def _load(raw: bytes) -> Any:
    try:
        text = raw.decode("utf-8")
        value = json.loads(text, object_pairs_hook=_object, parse_constant=_no_constant, parse_float=_finite)
    except HeaderError:
        raise
    except UnicodeDecodeError as exc:
        raise HeaderError(f"the header is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except RecursionError:
        raise HeaderError("the header nests too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and int() refusing thousands of digits
        raise HeaderError(f"the header is not valid JSON ({str(exc)[:120]})") from None
    if _depth(value) > _MAX_DEPTH:
        raise HeaderError("the header nests too deeply")
    try:  # serde_json refuses a \ud800 escape that pairs with nothing; Python decodes it to a lone surrogate
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise HeaderError("the header holds an unpaired UTF-16 surrogate escape") from None
    return value


def _u64(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _U64_MAX


def _fields(name: str, info: Any) -> tuple[Any, Any, Any]:
    if isinstance(info, dict):
        repeated = sorted(set(getattr(info, "repeated", ())) & set(_ENTRY_FIELDS))
        if repeated:
            raise HeaderError(f"tensor {name!r} repeats the field {repeated[0]!r}")
        missing = [field for field in _ENTRY_FIELDS if field not in info]
        if missing:
            raise HeaderError(f"tensor {name!r} lacks the field {missing[0]!r}")
        return info["dtype"], info["shape"], info["data_offsets"]
    if isinstance(info, list) and len(info) == len(_ENTRY_FIELDS):
        return info[0], info[1], info[2]
    raise HeaderError(f"tensor {name!r} has a malformed entry")


def _entry(name: str, info: Any, data_start: int) -> TensorEntry:
    dtype, shape, offsets = _fields(name, info)
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise HeaderError(f"tensor {name!r} has an unknown dtype {str(dtype)[:40]!r}")
    if not isinstance(shape, list) or not all(_u64(dim) for dim in shape):
        raise HeaderError(f"tensor {name!r} has a malformed shape (dimensions are integers from 0 to 2^64-1)")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_u64(offset) for offset in offsets):
        raise HeaderError(f"tensor {name!r} has malformed data_offsets (two integers from 0 to 2^64-1)")
    return TensorEntry(name, dtype, tuple(shape), data_start + offsets[0], data_start + offsets[1])


def _nbytes(entry: TensorEntry) -> int:
    count = 1
    for dim in entry.shape:  # in order, as the library multiplies: an overflow before a zero dimension still counts
        count *= dim
        if count > _U64_MAX:
            raise HeaderError(f"tensor {entry.name!r}: its shape {list(entry.shape)} overflows a 64-bit size")
    bits = count * DTYPE_BITS[entry.dtype]
    if bits > _U64_MAX:
        raise HeaderError(f"tensor {entry.name!r}: its shape {list(entry.shape)} overflows a 64-bit size")
    if bits % 8:
        raise HeaderError(f"tensor {entry.name!r}: {count} {entry.dtype} elements do not end on a byte boundary")
    return bits // 8


def parse_header(raw: bytes, data_start: int) -> dict[str, TensorEntry]:
    """The tensors of a safetensors header (the JSON bytes after the length prefix), their offsets made absolute by
    `data_start` (where the data area begins in the file); `data_end` then checks how they tile the data area. Raises
    HeaderError for anything the safetensors library would refuse."""
    header = _load(raw)
    if not isinstance(header, dict):
        raise HeaderError("the header is not a JSON object")
    if "__metadata__" in getattr(header, "repeated", ()):
        raise HeaderError("the header repeats '__metadata__'")
    metadata = header.get("__metadata__")
    if metadata is not None and not (
            isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise HeaderError("'__metadata__' must map strings to strings")
    return {name: _entry(name, info, data_start) for name, info in header.items() if name != "__metadata__"}


def data_end(entries: dict[str, TensorEntry], data_start: int) -> int:
    """Check that the tensors tile the data area from `data_start` in offset order, each exactly its shape's size,
    and return where the last one ends (the size the file must have)."""
    position = data_start
    for entry in sorted(entries.values(), key=lambda e: (e.begin, e.end)):
        if entry.begin != position or entry.end < entry.begin:
            raise HeaderError(f"tensor {entry.name!r} starts at data byte {entry.begin - data_start}, expected "
                              f"{position - data_start} (overlapping or gapped tensors)")
        size = _nbytes(entry)
        if entry.end - entry.begin != size:
            raise HeaderError(f"tensor {entry.name!r} has {entry.end - entry.begin} bytes for shape "
                              f"{list(entry.shape)} {entry.dtype} ({size} expected)")
        position = entry.end
    return position
