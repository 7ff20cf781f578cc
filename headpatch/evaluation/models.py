"""Which models a run compares, and who each one is: name, location, metadata and a content hash of its weights."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from headpatch.errors import HeadpatchError
from headpatch.io.hub import cached_checkpoint_dir
from headpatch.loading import LoadedModel, gguf_source, load_model
from headpatch.qrhead.prompt import uses_chat_template

WEIGHT_SUFFIXES = (".safetensors", ".bin")
NO_REFERENCE = "none"  # --against none: evaluate the model alone even if its metadata names a source


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_hash(loaded: LoadedModel) -> dict[str, Any]:
    """sha256 of every weight file of the checkpoint, and one sha256 over the list (name and hash of each)."""
    return folder_weights_hash(cached_checkpoint_dir(loaded.source))


def gguf_hash(name: str) -> dict[str, str] | None:
    """The GGUF file a model named `name` was converted from (a .gguf path or a demo alias) and its sha256; None for
    other models. The weight hash covers the de-quantized copy in the cache, which a GGUF export's folder does not
    hold, so a report matches a GGUF export by this one."""
    try:
        path = gguf_source(name)
    except HeadpatchError:
        return None
    return {"file": path.name, "sha256": _file_sha256(path)}


def folder_weights_hash(folder: Path | None, suffixes: tuple[str, ...] = WEIGHT_SUFFIXES) -> dict[str, Any]:
    """weights_hash of the checkpoint directory `folder` (None: not on disk), over its files ending in `suffixes`."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in suffixes) if folder else []
    if not files:
        return {"sha256": None, "files": {}, "note": "weight files not found on disk"}
    hashes = {path.name: _file_sha256(path) for path in files}
    combined = hashlib.sha256("".join(f"{name}:{h}\n" for name, h in hashes.items()).encode()).hexdigest()
    return {"sha256": combined, "files": hashes}


def identity(loaded: LoadedModel) -> dict[str, Any]:
    """What results.json records about a model."""
    config = loaded.model.config
    metadata = getattr(config, "headpatch", None)
    return {
        "name": loaded.source.name,
        "location": loaded.source.location,
        "base_model": loaded.source.base_model,
        "revision": loaded.source.revision,
        "model_type": config.model_type,
        "parameters": sum(p.numel() for p in loaded.model.parameters()),
        "dtype": str(loaded.model.dtype).removeprefix("torch."),
        "chat_template": loaded.tokenizer is not None and uses_chat_template(loaded.tokenizer),
        "weights": weights_hash(loaded),
        "gguf": gguf_hash(loaded.source.name),
        "headpatch": metadata if isinstance(metadata, dict) else None,
    }


def metadata_references(loaded: LoadedModel) -> list[str]:
    """The models an export's metadata names as where it came from: `source` first (what the user typed at export,
    e.g. an alias that loads offline), then `base_model`."""
    return metadata_names(getattr(loaded.model.config, "headpatch", None))


def metadata_names(metadata: Any) -> list[str]:
    """metadata_references from the `headpatch` entry of an export's config.json, read as plain data."""
    if not isinstance(metadata, dict):
        return []
    names = [metadata.get("source"), metadata.get("base_model")]
    return list(dict.fromkeys(n for n in names if isinstance(n, str) and n))


def load_reference(
    loaded: LoadedModel, against: str | None, dtype: str, device: str
) -> tuple[LoadedModel | None, dict[str, Any]]:
    """The model to compare with, and how it was chosen.

    An explicit `against` must load. Without one, the first of the model's metadata references that loads is used; if
    none does (or there is none), the model is evaluated alone and the notes say why.
    """
    if against == NO_REFERENCE:
        return None, {"name": None, "chosen_by": "--against none", "notes": []}
    if against is not None:
        return load_model(against, dtype, device), {"name": against, "chosen_by": "--against", "notes": []}
    notes = []
    own = Path(loaded.source.location).resolve()
    for name in metadata_references(loaded):
        try:
            reference = load_model(name, dtype, device)
        except HeadpatchError as exc:
            notes.append(f"could not load {name} named in config.json headpatch metadata: {exc}")
            continue
        if Path(reference.source.location).resolve() == own:
            notes.append(f"{name} is the model itself")
            continue
        return reference, {"name": name, "chosen_by": "config.json headpatch metadata", "notes": notes}
    if not notes:
        notes.append("config.json names no source model (headpatch.source / base_model)")
    return None, {"name": None, "chosen_by": None, "notes": notes}
