"""Prove a patched GGUF differs from its source only by the record it carries: keys, tensors, and the fold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from headpatch.errors import HeadpatchError, printable
from headpatch.io.gguf_export import BASE_MODEL_PREFIX, NAME_SUFFIX, RECORD_KEY, plan_gguf_export, source_name
from headpatch.io.gguf_file import GGUFFile, open_gguf, tensor_bytes
from headpatch.io.gguf_fold import FoldMethod, dequantized, fold_tensor
from headpatch.io.verify import Verification
from headpatch.record import PatchRecord

_CHANGED_KEYS = ("general.name", RECORD_KEY)


def carried_record(gguf: GGUFFile) -> PatchRecord:
    """The record a patched GGUF carries under `headpatch.record`."""
    text = gguf.value(RECORD_KEY)
    if not isinstance(text, str):
        raise HeadpatchError(printable(f"{gguf.path} carries no {RECORD_KEY} key; is it a headpatch export?"))
    return PatchRecord.from_text(text, f"the {RECORD_KEY} of {gguf.path}")


def _set_by_export(key: str) -> bool:
    return key in _CHANGED_KEYS or key.startswith(BASE_MODEL_PREFIX)


def _key_problems(base: GGUFFile, out: GGUFFile) -> list[str]:
    before = {field.key: field.raw for field in base.fields if not _set_by_export(field.key)}
    after = {field.key: field.raw for field in out.fields if not _set_by_export(field.key)}
    problems = [f"key {key}: missing from the export" for key in before if key not in after]
    problems += [f"key {key}: not in the base" for key in after if key not in before]
    problems += [f"key {key}: changed" for key in before if key in after and before[key] != after[key]]
    name = source_name(base)
    if out.value("general.name") != f"{name}{NAME_SUFFIX}":
        problems.append(f"key general.name: {out.value('general.name')!r}, expected {name + NAME_SUFFIX!r}")
    return problems


def _deviation(expected: np.ndarray, actual: np.ndarray) -> float:
    """Largest difference relative to the largest expected magnitude."""
    scale = float(np.abs(expected).max()) or 1.0
    return float(np.abs(actual - expected).max()) / scale


def verify_gguf(out_path: Path, base_path: Path, show_progress: bool = True) -> Verification:
    """Compare a patched GGUF with its source: every key but the ones the export sets is byte-identical, every tensor
    but the recorded `attn_output` ones is byte-identical, and those hold exactly what folding the record into the
    source gives (block scales equal to float16(base scale × coefficient), integers unchanged; a re-encoded tensor
    equal to quantizing base × coefficients). `notes` gives each patched tensor's largest de-quantized deviation from
    base × coefficients, relative to the tensor's largest value."""
    result = Verification()
    with open_gguf(base_path) as (base, base_view), open_gguf(out_path) as (out, out_view):
        plan = plan_gguf_export(base, carried_record(out))
        result.problems += _key_problems(base, out)
        base_tensors = {tensor.name: tensor for tensor in base.tensors}
        out_tensors = {tensor.name: tensor for tensor in out.tensors}
        result.problems += [f"{name}: missing from the export" for name in base_tensors if name not in out_tensors]
        result.problems += [f"{name}: not in the base" for name in out_tensors if name not in base_tensors]
        for name in tqdm([name for name in base_tensors if name in out_tensors], desc="verify",
                         disable=not show_progress):
            before, after = base_tensors[name], out_tensors[name]
            result.tensors += 1
            patched = plan.patched.get(name)
            expected_type = patched.new_type if patched is not None else before.type
            if before.shape != after.shape or after.type != expected_type:
                result.problems.append(f"{name}: {before.type.name}{list(before.shape)} became "
                                       f"{after.type.name}{list(after.shape)}")
                continue
            stored = bytes(tensor_bytes(out, out_view, after))
            if patched is None:
                if stored != tensor_bytes(base, base_view, before):
                    result.problems.append(f"{name}: changed, but the patch does not touch it")
                continue
            source = bytes(tensor_bytes(base, base_view, before))
            folded = fold_tensor(source, before.type, before.rows, patched.factors, name)
            if stored != folded.data:
                result.problems.append(f"{name}: differs from the source folded with the recorded coefficients")
                continue
            deviation = _deviation(dequantized(source, before.type, before.rows) * patched.factors,
                                   dequantized(stored, after.type, after.rows))
            if folded.method is FoldMethod.REENCODED:
                how = f"re-encoded {before.type.name} -> {after.type.name}"
            else:
                how = f"{folded.method.value} ({before.type.name})"
            result.patched.append(name)
            result.notes.append(f"{name}: {how}, largest deviation from base × coefficient {deviation:.2e} of the "
                                "largest value")
    return result
