"""The GGUF container read strictly and written back: metadata kept as raw bytes, tensors as byte ranges.

headpatch rewrites a few tensors and keys of a GGUF and must keep every other byte as it was, so this reader keeps
each metadata entry's exact bytes instead of decoding and re-encoding it, and checks what gguf-py's reader does not
(truncation, offsets, sizes), naming the key or tensor at fault. Layout (GGUF v2/v3, little-endian): magic, version,
tensor count, key count; keys; tensor infos; padding to the alignment; tensor data at aligned offsets.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from headpatch.errors import HeadpatchError, printable

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
_MAX_DIMS = 4  # GGML_MAX_DIMS
_STRING, _ARRAY = 8, 9
# Real GGUF metadata nests arrays a level or two deep; a file nesting them deeper is corrupt or hostile, and reading
# it unbounded would overflow Python's stack (a RecursionError traceback) instead of failing with a clear error.
MAX_ARRAY_DEPTH = 64
# value type -> struct format of one element (GGUF's scalar types; 8 string and 9 array are read apart)
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


@dataclass(frozen=True)
class Field:
    """One metadata entry: its key, its value (None for arrays, which are only ever copied) and its exact bytes."""

    key: str
    value: Any
    raw: bytes


@dataclass(frozen=True)
class TensorInfo:
    """One tensor: name, GGML type, dims innermost first (GGUF's `ne`) and its bytes' offset within the data area."""

    name: str
    type: GGMLQuantizationType
    shape: tuple[int, ...]
    offset: int

    @property
    def nbytes(self) -> int:
        """Size of the tensor's data in bytes."""
        return tensor_nbytes(self.type, self.shape)

    @property
    def rows(self) -> int:
        """Number of rows: every dim but the innermost."""
        count = 1
        for dim in self.shape[1:]:
            count *= dim
        return count


@dataclass(frozen=True)
class GGUFFile:
    """A parsed GGUF: where its data area starts, its metadata entries in file order and its tensors."""

    path: Path
    version: int
    fields: tuple[Field, ...]
    tensors: tuple[TensorInfo, ...]
    alignment: int
    data_start: int

    def value(self, key: str, default: Any = None) -> Any:
        """The value of a scalar or string key, or `default` when the file has no such key."""
        return next((field.value for field in self.fields if field.key == key), default)

    def tensor(self, name: str) -> TensorInfo:
        """The tensor named `name`."""
        found = next((tensor for tensor in self.tensors if tensor.name == name), None)
        if found is None:
            raise HeadpatchError(printable(f"{self.path} has no tensor {name}"))
        return found


def tensor_nbytes(qtype: GGMLQuantizationType, shape: tuple[int, ...]) -> int:
    """Bytes a tensor of this type and shape takes; the innermost dim must be whole blocks."""
    block, size = GGML_QUANT_SIZES[qtype]
    count = 1
    for dim in shape:
        count *= dim
    return count // block * size


def aligned(position: int, alignment: int) -> int:
    """`position` rounded up to a multiple of `alignment`."""
    return -(-position // alignment) * alignment


class _Cursor:
    """Reads GGUF values from a buffer, turning a read past its end into an error naming what was being read."""

    def __init__(self, buffer: Any, path: Path) -> None:
        self.buffer, self.path, self.pos, self.what = buffer, path, 0, "the header"

    def take(self, size: int) -> bytes:
        if size < 0 or self.pos + size > len(self.buffer):
            raise HeadpatchError(printable(f"GGUF file {self.path} is truncated or corrupt: {self.what} runs past "
                                           f"the end of the file"))
        data = bytes(self.buffer[self.pos:self.pos + size])
        self.pos += size
        return data

    def scalar(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        raw = self.take(self.scalar("<Q"))
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise HeadpatchError(printable(f"GGUF file {self.path} is corrupt: {self.what} holds a string that is "
                                           "not UTF-8")) from None

    def value(self, value_type: int, depth: int = 0) -> Any:
        if value_type == _STRING:
            return self.string()
        if value_type == _ARRAY:
            if depth >= MAX_ARRAY_DEPTH:
                raise HeadpatchError(printable(f"GGUF file {self.path} is corrupt: {self.what} nests arrays more "
                                               f"than {MAX_ARRAY_DEPTH} deep"))
            element_type, count = self.scalar("<I"), self.scalar("<Q")
            if element_type in _SCALARS:  # fixed size: skipped in one step, so a huge count cannot stall
                self.take(count * struct.calcsize(_SCALARS[element_type]))
            elif element_type in (_STRING, _ARRAY):
                for _ in range(count):
                    self.value(element_type, depth + 1)
            else:
                raise HeadpatchError(printable(f"GGUF file {self.path} is corrupt: {self.what} is an array of "
                                               f"unknown type {element_type}"))
            return None
        if value_type not in _SCALARS:
            raise HeadpatchError(printable(f"GGUF file {self.path} is corrupt: {self.what} has unknown value type "
                                           f"{value_type}"))
        return self.scalar(_SCALARS[value_type])


def _tensor_info(cursor: _Cursor, path: Path, index: int) -> TensorInfo:
    cursor.what = f"tensor info {index}"
    name = cursor.string()
    cursor.what = f"the info of tensor {name}"
    n_dims = cursor.scalar("<I")
    if not 1 <= n_dims <= _MAX_DIMS:
        raise HeadpatchError(printable(f"GGUF file {path} is corrupt: tensor {name} has {n_dims} dims"))
    shape = tuple(cursor.scalar("<Q") for _ in range(n_dims))
    raw_type = cursor.scalar("<I")
    try:
        qtype = GGMLQuantizationType(raw_type)
    except ValueError:
        raise HeadpatchError(printable(f"GGUF file {path}: tensor {name} has unknown type {raw_type}")) from None
    if qtype not in GGML_QUANT_SIZES or shape[0] % GGML_QUANT_SIZES[qtype][0]:
        raise HeadpatchError(printable(f"GGUF file {path} is corrupt: tensor {name} ({qtype.name}, shape "
                                       f"{list(shape)}) is not made of whole blocks"))
    return TensorInfo(name, qtype, shape, cursor.scalar("<Q"))


def _check_data(gguf: GGUFFile, size: int) -> None:
    """Every tensor aligned, inside the file, and apart from the others."""
    end_of_previous, previous = 0, None
    for tensor in sorted(gguf.tensors, key=lambda t: t.offset):
        where = f"GGUF file {gguf.path}: tensor {tensor.name}"
        if tensor.offset % gguf.alignment:
            raise HeadpatchError(printable(f"{where} is not aligned to {gguf.alignment} bytes"))
        if tensor.offset < end_of_previous:
            raise HeadpatchError(printable(f"{where} overlaps tensor {previous}"))
        if gguf.data_start + tensor.offset + tensor.nbytes > size:
            raise HeadpatchError(printable(f"{where} is truncated: its data ends "
                                           f"{gguf.data_start + tensor.offset + tensor.nbytes - size} bytes past the "
                                           "end of the file"))
        end_of_previous, previous = tensor.offset + tensor.nbytes, tensor.name


def parse_gguf(buffer: Any, path: Path) -> GGUFFile:
    """Parse a GGUF held in `buffer` (bytes or a memory map), checking the header and every tensor's place."""
    cursor = _Cursor(buffer, path)
    if cursor.take(4) != MAGIC:
        raise HeadpatchError(printable(f"{path} is not a GGUF file (no GGUF magic)"))
    version = cursor.scalar("<I")
    if version not in (2, 3):
        swapped = "; big-endian GGUF files are not supported" if version > 0xFFFF else ""
        raise HeadpatchError(printable(f"GGUF file {path} has version {version}; headpatch reads versions 2 and 3"
                                       f"{swapped}"))
    tensor_count, field_count = cursor.scalar("<Q"), cursor.scalar("<Q")
    fields = []
    for index in range(field_count):
        start = cursor.pos
        cursor.what = f"metadata entry {index}"
        key = cursor.string()
        cursor.what = f"metadata key {key}"
        value = cursor.value(cursor.scalar("<I"))
        fields.append(Field(key, value, bytes(buffer[start:cursor.pos])))
    tensors = tuple(_tensor_info(cursor, path, index) for index in range(tensor_count))
    alignment = next((field.value for field in fields if field.key == "general.alignment"), DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment % 8:
        raise HeadpatchError(printable(f"GGUF file {path} has an invalid general.alignment {alignment!r}"))
    names = [tensor.name for tensor in tensors]
    if len(set(names)) != len(names):
        raise HeadpatchError(printable(f"GGUF file {path} names a tensor twice"))
    gguf = GGUFFile(path, version, tuple(fields), tensors, alignment, aligned(cursor.pos, alignment))
    _check_data(gguf, len(buffer))
    return gguf


@contextmanager
def open_gguf(path: Path) -> Iterator[tuple[GGUFFile, memoryview]]:
    """Parse the GGUF at `path` and yield it with a read-only view of the whole file (memory-mapped, so reading a
    tensor costs that tensor's bytes only). The view is released when the block ends."""
    try:
        handle: BinaryIO = open(path, "rb")
    except OSError as exc:
        raise HeadpatchError(printable(f"cannot read GGUF file {path}: {exc.strerror}")) from None
    with handle:
        if handle.seek(0, 2) == 0:
            raise HeadpatchError(printable(f"GGUF file {path} is empty"))
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            view = memoryview(mapped)
            try:
                yield parse_gguf(view, path), view
            finally:
                view.release()


def tensor_bytes(gguf: GGUFFile, view: memoryview, tensor: TensorInfo) -> memoryview:
    """The stored bytes of one tensor (a view into the file: copy it before the file is closed)."""
    begin = gguf.data_start + tensor.offset
    return view[begin:begin + tensor.nbytes]


def _string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def string_field(key: str, value: str) -> Field:
    """A new string metadata entry."""
    return Field(key, value, _string(key) + struct.pack("<I", _STRING) + _string(value))


def uint32_field(key: str, value: int) -> Field:
    """A new uint32 metadata entry."""
    return Field(key, value, _string(key) + struct.pack("<II", 4, value))


def header_bytes(version: int, fields: tuple[Field, ...], tensors: tuple[TensorInfo, ...], alignment: int) -> bytes:
    """The header of a GGUF holding these entries (their raw bytes as they are) and tensor infos, padded to the
    alignment so that the data area starts right after it."""
    parts = [MAGIC, struct.pack("<IQQ", version, len(tensors), len(fields)), *(field.raw for field in fields)]
    for tensor in tensors:
        parts += [_string(tensor.name), struct.pack("<I", len(tensor.shape)),
                  struct.pack(f"<{len(tensor.shape)}Q", *tensor.shape), struct.pack("<IQ", tensor.type, tensor.offset)]
    header = b"".join(parts)
    return header + bytes(aligned(len(header), alignment) - len(header))
