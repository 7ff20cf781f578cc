"""Fold coefficients straight over safetensors files: untouched tensors copied byte for byte, one tensor in memory."""

from __future__ import annotations

import shutil
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from headpatch.architectures import HeadLayout
from headpatch.errors import HeadpatchError
from headpatch.heads import Head, check_heads
from headpatch.io.checkpoint import INDEX_FILE, SINGLE_FILE, Shard, read_shard, read_shards, read_tensor, weight_files
from headpatch.pear.fold import by_layer, finite_fold


@dataclass(frozen=True)
class PatchedTensor:
    """One output projection on disk and the coefficients its head columns (rows for Conv1D) get."""

    name: str
    shard: str
    layer: int
    heads: dict[int, float]


@dataclass(frozen=True)
class FoldPlan:
    """Everything a streaming fold needs, checked before anything is written."""

    directory: Path
    weights: dict[str, str]  # tensor name -> shard file
    shards: dict[str, Shard]
    patched: tuple[PatchedTensor, ...]
    index: str | None  # the shard index file, when the weights come from one

    def patched_in(self, shard: str) -> list[PatchedTensor]:
        """The patched tensors stored in one shard."""
        return [tensor for tensor in self.patched if tensor.shard == shard]


def disk_tensor_name(layout: HeadLayout, layer: int, names: Collection[str]) -> str:
    """The on-disk name of a layer's o_proj weight, allowing the prefixes checkpoints drop or add around the stack."""
    wanted = layout.o_proj_tensor(layer)
    if wanted in names:
        return wanted
    parts = wanted.split(".")
    # Only the components before the layer stack's name may differ (e.g. "transformer." missing in old GPT-2 files,
    # "model.language_model." in multimodal ones); the stack name, index and projection path must match.
    stack = parts.index(str(layer)) - 1
    tail = ".".join(parts[stack:])
    matches = [name for name in names if name == tail or name.endswith("." + tail)]
    if len(matches) != 1:
        found = "no tensor" if not matches else f"several tensors ({', '.join(sorted(matches)[:3])})"
        raise HeadpatchError(f"the checkpoint has {found} for layer {layer}'s output projection {wanted}")
    return matches[0]


def _expected_shape(layout: HeadLayout) -> tuple[int, int]:
    heads_width = layout.num_heads * layout.head_dim
    if layout.orientation == "conv1d":
        return heads_width, layout.hidden_size
    return layout.hidden_size, heads_width


def plan_fold(directory: Path, layout: HeadLayout, coefficients: dict[Head, float]) -> FoldPlan:
    """Map each patched layer to its tensor and shard, validating every shard header and the patched shapes."""
    check_heads(coefficients, layout)
    mapping = weight_files(directory)
    shards = read_shards(directory, mapping)
    patched = []
    for layer, heads in sorted(by_layer(coefficients).items()):
        name = disk_tensor_name(layout, layer, mapping)
        entry = shards[mapping[name]].tensors[name]
        if entry.shape != _expected_shape(layout):
            raise HeadpatchError(
                f"the patch does not fit {directory / mapping[name]}: tensor {name} has shape {list(entry.shape)}, "
                f"the recorded heads need {list(_expected_shape(layout))}")
        patched.append(PatchedTensor(name, mapping[name], layer, heads))
    index = None if (directory / SINGLE_FILE).is_file() else INDEX_FILE
    return FoldPlan(directory, mapping, shards, tuple(patched), index)


def folded_tensor(shard: Shard, tensor: PatchedTensor, layout: HeadLayout) -> torch.Tensor:
    """The patched tensor's new value read from `shard`: float32 multiply, cast back to the stored dtype, checked
    finite there."""
    return finite_fold(read_tensor(shard, tensor.name), layout, tensor.heads, tensor.name)


def check_folds(plan: FoldPlan, layout: HeadLayout) -> None:
    """Fold every patched tensor once before anything is written, so an overflowing coefficient writes nothing
    (one extra read of the output projections, a small part of the checkpoint)."""
    for tensor in plan.patched:
        folded_tensor(plan.shards[tensor.shard], tensor, layout)


def folded_bytes(shard: Shard, tensor: PatchedTensor, layout: HeadLayout) -> memoryview:
    """The patched tensor's new bytes, same shape and dtype."""
    folded = folded_tensor(shard, tensor, layout).contiguous()
    return memoryview(folded.reshape(-1).view(dtype=torch.uint8).numpy())


def _copy_as_planned(shard: Shard, target: Path) -> Shard:
    """Copy a shard and validate the copy against the plan: a source file replaced since it was planned (another
    header, other offsets) is an error, never an export with wrong offsets. Folding then reads the copy only."""
    shutil.copyfile(shard.path, target)
    copied = read_shard(target)
    if copied.header_bytes != shard.header_bytes or copied.tensors != shard.tensors:
        raise HeadpatchError(f"{shard.path} changed while it was being exported; run the export again")
    return copied


def write_folded_shards(plan: FoldPlan, layout: HeadLayout, destination: Path, show_progress: bool = True) -> list[str]:
    """Write every shard of the plan into `destination`; return the names of the rewritten tensors."""
    total = sum(shard.path.stat().st_size for shard in plan.shards.values())
    rewritten = []
    with tqdm(total=total, unit="B", unit_scale=True, desc="fold", disable=not show_progress) as bar:
        for name, shard in plan.shards.items():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            # A whole-file copy (kernel copy_file_range where available), then the patched ranges overwritten in
            # place: headers and every other tensor stay byte-identical and memory holds one tensor at a time.
            copied = _copy_as_planned(shard, target)
            with open(target, "r+b") as handle:
                for tensor in plan.patched_in(name):
                    new_bytes = folded_bytes(copied, tensor, layout)
                    handle.seek(copied.tensors[tensor.name].begin)
                    handle.write(new_bytes)
                    rewritten.append(tensor.name)
            bar.update(copied.path.stat().st_size)
    return rewritten
