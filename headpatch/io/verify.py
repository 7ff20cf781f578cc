"""Prove an export changed only the patched head columns, by exactly the recorded factors, tensor by tensor."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from headpatch.architectures import HeadLayout, head_layout
from headpatch.errors import HeadpatchError
from headpatch.io.checkpoint import Shard, built_config, read_shards, read_tensor, weight_files
from headpatch.io.files import read_json
from headpatch.io.stream import plan_fold
from headpatch.io.summary import checkpoint_record
from headpatch.pear.fold import fold_weight

_CHUNK = 16 * 1024 * 1024


@dataclass
class Verification:
    """What a comparison found: tensors checked, tensors patched as recorded, and every unexpected difference."""

    tensors: int = 0
    patched: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # how each patched tensor took the patch, where that varies

    @property
    def ok(self) -> bool:
        """True when nothing but the recorded patch differs."""
        return not self.problems


def _same_bytes(first: Shard, second: Shard, name: str) -> bool:
    a, b = first.tensors[name], second.tensors[name]
    with open(first.path, "rb") as left, open(second.path, "rb") as right:
        left.seek(a.begin)
        right.seek(b.begin)
        remaining = a.nbytes
        while remaining:
            size = min(_CHUNK, remaining)
            if left.read(size) != right.read(size):
                return False
            remaining -= size
    return True


def _patched_problem(base: Shard, out: Shard, name: str, layout: HeadLayout, heads: dict[int, float]) -> str | None:
    expected = fold_weight(read_tensor(base, name), layout, heads)
    actual = read_tensor(out, name)
    if not torch.isfinite(actual).all():  # inf == inf: an overflowed patch would otherwise pass as recorded
        return f"{name}: holds non-finite values (inf or NaN)"
    if torch.equal(expected, actual):
        return None
    diff = (expected.float() - actual.float()).abs().max().item()
    return f"{name}: differs from base × recorded coefficients (max abs diff {diff:.3g})"


def verify_export(out_dir: Path, base_dir: Path, show_progress: bool = True) -> Verification:
    """Compare an export with its base: same names, shapes and dtypes; bytes equal except the recorded patch."""
    config = read_json(out_dir / "config.json")
    if not isinstance(config, dict):
        raise HeadpatchError(f"{out_dir / 'config.json'} is not a JSON object")
    record = checkpoint_record(config, str(out_dir))
    layout = head_layout(built_config(base_dir))
    plan = plan_fold(base_dir, layout, record.coefficients())
    heads_of = {tensor.name: tensor.heads for tensor in plan.patched}
    base_map, out_map = plan.weights, weight_files(out_dir)
    base_shards, out_shards = plan.shards, read_shards(out_dir, out_map)
    result = Verification()
    result.problems += [f"{name}: missing from the export" for name in sorted(set(base_map) - set(out_map))]
    result.problems += [f"{name}: not in the base" for name in sorted(set(out_map) - set(base_map))]
    for name in tqdm(sorted(set(base_map) & set(out_map)), desc="verify", disable=not show_progress):
        base, out = base_shards[base_map[name]], out_shards[out_map[name]]
        before, after = base.tensors[name], out.tensors[name]
        result.tensors += 1
        if (before.dtype, before.shape) != (after.dtype, after.shape):
            result.problems.append(
                f"{name}: {before.dtype}{list(before.shape)} became {after.dtype}{list(after.shape)}")
        elif name in heads_of:
            problem = _patched_problem(base, out, name, layout, heads_of[name])
            if problem:
                result.problems.append(problem)
            else:
                result.patched.append(name)
        elif not _same_bytes(base, out, name):
            result.problems.append(f"{name}: changed, but the patch does not touch it")
    return result
