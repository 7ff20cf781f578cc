"""Safetensors checkpoints read lazily: validated shard headers, the tensor→shard map, one tensor at a time."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from headpatch.errors import HeadpatchError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
# Weights in other formats, or second copies of them (Llama's original/, Mistral's consolidated.safetensors): never
# carried into an export, since unpatched copies would let a loader pick the wrong weights.
OTHER_WEIGHT_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.msgpack", "*.gguf", "*.onnx", "*.onnx_data",
                         "*.ot", "*.tflite", "*.safetensors", "*.safetensors.index.json", "original/*", "onnx/*")
TORCH_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
_HEADER_LIMIT = 100 * 1024 * 1024  # the safetensors library refuses bigger headers too
_BYTES_PER_ELEMENT = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                      "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}
CONVERSION_HINT = (
    "convert it to safetensors first: python -c \"from transformers import AutoModelForCausalLM as M; "
    "M.from_pretrained('SRC').save_pretrained('DST')\""
)


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor's bytes lie in its shard (absolute file offsets) and what they hold."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        """Size of the tensor's data in bytes."""
        return self.end - self.begin


@dataclass(frozen=True)
class Shard:
    """One safetensors file with its validated header."""

    path: Path
    header_bytes: int  # 8-byte length prefix plus the JSON header
    tensors: dict[str, TensorEntry]


def read_shard(path: Path) -> Shard:
    """Parse and check a safetensors header against the file's size; errors name the file and the tensor."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise HeadpatchError(f"{path} is truncated or not a safetensors file ({size} bytes)")
        (length,) = struct.unpack("<Q", prefix)
        if length > _HEADER_LIMIT or 8 + length > size:
            raise HeadpatchError(f"{path} is truncated or corrupt: its header claims {length} bytes, file has {size}")
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise HeadpatchError(f"{path} is corrupt: unreadable safetensors header ({exc})") from exc
    if not isinstance(header, dict):
        raise HeadpatchError(f"{path} is corrupt: the safetensors header is not a JSON object")
    start = 8 + length
    tensors = {name: _entry(path, name, info, start) for name, info in header.items() if name != "__metadata__"}
    # Tensors must tile the data area exactly, as the safetensors library requires: an overlap would let the in-place
    # rewrite of one tensor change another.
    position = start
    for entry in sorted(tensors.values(), key=lambda e: (e.begin, e.end)):
        if entry.end > size:
            raise HeadpatchError(
                f"{path} is truncated: tensor {entry.name} needs bytes up to {entry.end}, the file has {size}")
        if entry.begin != position:
            raise HeadpatchError(f"{path} is corrupt: tensor {entry.name} starts at byte {entry.begin}, expected "
                                 f"{position} (overlapping or gapped tensors)")
        position = entry.end
    if position != size:
        raise HeadpatchError(f"{path} is corrupt: its tensors end at byte {position} but the file has {size}")
    return Shard(path, start, tensors)


def _entry(path: Path, name: str, info: object, start: int) -> TensorEntry:
    try:
        dtype, shape, (begin, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]  # type: ignore[index]
        count = 1
        for dim in shape:
            count *= int(dim)
        expected = count * _BYTES_PER_ELEMENT[dtype]
    except (KeyError, TypeError, ValueError) as exc:
        raise HeadpatchError(f"{path} is corrupt: malformed header entry for tensor {name}") from exc
    if not 0 <= begin <= end or end - begin != expected:
        raise HeadpatchError(
            f"{path} is corrupt: tensor {name} has {end - begin} bytes for shape {list(shape)} {dtype}")
    return TensorEntry(name, dtype, shape, start + begin, start + end)


def source_roots(directory: Path) -> tuple[Path, ...]:
    """Where a checkpoint's files may really live: the directory itself, and for a Hub-cache snapshot
    (REPO/snapshots/COMMIT, whose files are links into REPO/blobs) that repository's blobs."""
    directory = directory.resolve()
    blobs = directory.parent.parent / "blobs"
    if directory.parent.name == "snapshots" and blobs.is_dir():
        return directory, blobs.resolve()
    return (directory,)


def resolves_inside(path: Path, roots: tuple[Path, ...]) -> bool:
    """Whether `path`, links followed, is a file under one of `roots` (a link to ~/.cache/... is not)."""
    real = path.resolve()
    return any(root in real.parents for root in roots)


def _check_inside(directory: Path, name: str) -> None:
    # Weights are copied into the export: a link to a file elsewhere would publish that file.
    if not resolves_inside(directory / name, source_roots(directory)):
        raise HeadpatchError(f"{directory / name} links to a file outside the checkpoint directory")


def weight_files(directory: Path) -> dict[str, str]:
    """{tensor name: shard file name} from model.safetensors, or else from the index (transformers' order); every
    file named must lie inside the checkpoint (or its Hub-cache blobs)."""
    index, single = directory / INDEX_FILE, directory / SINGLE_FILE
    if single.is_file():  # transformers' own order when both exist
        _check_inside(directory, SINGLE_FILE)
        return {name: SINGLE_FILE for name in read_shard(single).tensors}
    if index.is_file():
        _check_inside(directory, INDEX_FILE)
        try:
            mapping = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, KeyError, TypeError, json.JSONDecodeError) as exc:
            raise HeadpatchError(f"{index} is not a readable safetensors index: {exc}") from exc
        for shard in sorted(set(mapping.values())):
            if Path(shard).is_absolute() or ".." in Path(shard).parts:
                raise HeadpatchError(f"{index} names shard {shard!r} outside the checkpoint directory")
            if not (directory / shard).is_file():
                raise HeadpatchError(f"{index} names shard {shard}, which is missing from {directory}")
            _check_inside(directory, shard)
        return dict(mapping)
    if any(any(directory.glob(pattern)) for pattern in ("*.bin", "*.pt", "*.pth", "*.h5", "*.msgpack")):
        raise HeadpatchError(f"{directory} has no safetensors weights, only other formats; {CONVERSION_HINT}")
    raise HeadpatchError(f"{directory} holds no {SINGLE_FILE} or {INDEX_FILE}; if the checkpoint has only .bin "
                         f"weights, {CONVERSION_HINT}")


def read_shards(directory: Path, mapping: dict[str, str]) -> dict[str, Shard]:
    """Every shard named by the map, headers validated, checked to hold the tensors the index assigns it."""
    shards = {name: read_shard(directory / name) for name in sorted(set(mapping.values()))}
    for tensor, shard in mapping.items():
        if tensor not in shards[shard].tensors:
            raise HeadpatchError(f"{directory / shard} lacks tensor {tensor}, which the index places there")
    return shards


def read_tensor(shard: Shard, name: str) -> torch.Tensor:
    """Load one tensor from disk without touching the rest of the shard."""
    entry = shard.tensors[name]
    if entry.dtype not in TORCH_DTYPES:
        raise HeadpatchError(f"{shard.path}: tensor {name} is {entry.dtype}; only F32, BF16 and F16 can be patched")
    buffer = bytearray(entry.nbytes)
    with open(shard.path, "rb") as handle:
        handle.seek(entry.begin)
        if handle.readinto(buffer) != entry.nbytes:
            raise HeadpatchError(f"{shard.path} is truncated inside tensor {name}")
    return torch.frombuffer(buffer, dtype=TORCH_DTYPES[entry.dtype]).view(entry.shape)
