"""Safetensors checkpoints read lazily: validated shard headers, the tensor→shard map, one tensor at a time."""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from headpatch.errors import HeadpatchError
from headpatch.io.files import read_json
from headpatch.io.header import MAX_HEADER_BYTES, HeaderError, TensorEntry, data_end, parse_header

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
# Weights in other formats, or second copies of them (Llama's original/, Mistral's consolidated.safetensors): never
# carried into an export, since unpatched copies would let a loader pick the wrong weights.
OTHER_WEIGHT_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.msgpack", "*.gguf", "*.onnx", "*.onnx_data",
                         "*.ot", "*.tflite", "*.safetensors", "*.safetensors.index.json", "original/*", "onnx/*")
TORCH_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
# Path components of letters, digits, '_', '+', '-' and inner dots (so never '..' or a hidden file), ending .safetensors
_SHARD_NAME = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9_.+-]*(/[A-Za-z0-9_+-][A-Za-z0-9_.+-]*)*\.safetensors", re.ASCII)
CONVERSION_HINT = (
    "convert it to safetensors first: python -c \"from transformers import AutoModelForCausalLM as M; "
    "M.from_pretrained('SRC').save_pretrained('DST')\""
)


@dataclass(frozen=True)
class Shard:
    """One safetensors file with its validated header."""

    path: Path
    header_bytes: int  # 8-byte length prefix plus the JSON header
    tensors: dict[str, TensorEntry]


def read_shard(path: Path) -> Shard:
    """Parse and check a safetensors header against the file's size, by the safetensors library's own rules; errors
    name the file and the tensor."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise HeadpatchError(f"{path} is truncated or not a safetensors file ({size} bytes)")
        (length,) = struct.unpack("<Q", prefix)
        if length > MAX_HEADER_BYTES or 8 + length > size:
            raise HeadpatchError(f"{path} is truncated or corrupt: its header claims {length} bytes, file has {size}")
        raw = handle.read(length)
    start = 8 + length
    try:
        tensors = parse_header(raw, start)
        end = data_end(tensors, start)
    except HeaderError as exc:
        raise HeadpatchError(f"{path} is corrupt: {exc}") from None
    if end > size:
        cut = min((e for e in tensors.values() if e.end > size), key=lambda e: (e.begin, e.end))
        raise HeadpatchError(f"{path} is truncated: tensor {cut.name!r} needs bytes up to {cut.end}, the file has "
                             f"{size}")
    if end != size:
        raise HeadpatchError(f"{path} is corrupt: its tensors end at byte {end} but the file has {size}")
    return Shard(path, start, tensors)


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


def read_index(index: Path) -> dict[str, str]:
    """{tensor name: shard file name} of a safetensors index. Shard names become paths in the export and download
    patterns on the Hub, so only plain relative names ending in .safetensors are taken: no '..', no hidden or absolute
    paths, no glob characters, no control characters, no collision with the card or record an export writes."""
    data = read_json(index, "safetensors index")
    mapping = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
        raise HeadpatchError(f"{index} is not a safetensors index: 'weight_map' must map tensor names to shard files")
    for shard in sorted(set(mapping.values())):
        if not _SHARD_NAME.fullmatch(shard):
            raise HeadpatchError(f"{index} names shard {shard!r}, not a plain relative file name ending in "
                                 ".safetensors")
    return mapping


def weight_files(directory: Path) -> dict[str, str]:
    """{tensor name: shard file name} from model.safetensors, or else from the index (transformers' order); every
    file named must lie inside the checkpoint (or its Hub-cache blobs)."""
    index, single = directory / INDEX_FILE, directory / SINGLE_FILE
    if single.is_file():  # transformers' own order when both exist
        _check_inside(directory, SINGLE_FILE)
        return {name: SINGLE_FILE for name in read_shard(single).tensors}
    if index.is_file():
        _check_inside(directory, INDEX_FILE)
        mapping = read_index(index)
        for shard in sorted(set(mapping.values())):
            if not (directory / shard).is_file():
                raise HeadpatchError(f"{index} names shard {shard}, which is missing from {directory}")
            _check_inside(directory, shard)
        return mapping
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


def built_config(directory: Path) -> Any:
    """The transformers config of a local checkpoint directory. transformers validates configs as it builds them and
    fails on a bad one with whatever its check raised (a ZeroDivisionError for 0 attention heads, a validation error
    for a NaN size), so every failure is turned into one message."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(directory)
    except Exception as exc:  # noqa: BLE001 - each model's config class has checks of its own
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HeadpatchError(f"cannot read the config of {directory}: {first}") from exc
