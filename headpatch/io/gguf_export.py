"""Write a patched GGUF: the source file with only its `blk.N.attn_output.weight` tensors changed, plus metadata.

The header is rebuilt from the source's own entry bytes (new keys appended, `general.name` and the base-model keys
replaced), every other tensor is copied byte for byte, and the output is staged and renamed, so a failed run leaves
nothing. Memory holds one tensor at a time; the source is memory-mapped.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType
from tqdm.auto import tqdm

from headpatch.errors import HeadpatchError, printable
from headpatch.heads import check_heads
from headpatch.io.atomic import check_output_dir, staged_output
from headpatch.io.card import BaseCard, CardContext, GGUFCard, license_warning, parse_base_card, render_card
from headpatch.io.files import write_record
from headpatch.io.gguf_file import (
    Field,
    GGUFFile,
    TensorInfo,
    aligned,
    header_bytes,
    open_gguf,
    string_field,
    tensor_bytes,
    tensor_nbytes,
    uint32_field,
)
from headpatch.io.gguf_fold import FoldMethod, column_factors, fold_method, fold_tensor, folded_type
from headpatch.pear.fold import by_layer
from headpatch.record import Architecture, PatchRecord, is_hub_id

RECORD_KEY = "headpatch.record"
NAME_SUFFIX = "-pear"
BASE_MODEL_PREFIX = "general.base_model."
# llama.cpp architecture names that transformers loads as another model_type (transformers' GGUF loader renames them).
GGUF_MODEL_TYPES = {
    "gemma3": "gemma3_text", "gemma4": "gemma4_text", "command-r": "cohere", "qwen2moe": "qwen2_moe",
    "qwen3moe": "qwen3_moe", "gpt-oss": "gpt_oss", "minimax-m2": "minimax_m2",
}
_COPY_CHUNK = 64 * 1024 * 1024


def attn_output_name(layer: int) -> str:
    """llama.cpp's name of a layer's attention output projection."""
    return f"blk.{layer}.attn_output.weight"


def gguf_architecture(gguf: GGUFFile) -> Architecture:
    """The head geometry the GGUF's metadata declares, as a record names it."""
    arch = gguf.value("general.architecture")
    if not isinstance(arch, str):
        raise HeadpatchError(printable(f"GGUF file {gguf.path} names no general.architecture"))
    heads = gguf.value(f"{arch}.attention.head_count")
    layers = gguf.value(f"{arch}.block_count")
    if not isinstance(heads, int) or not isinstance(layers, int) or heads <= 0 or layers <= 0:
        raise HeadpatchError(printable(f"GGUF file {gguf.path} does not give one head count and a block count "
                                       f"({arch}.attention.head_count, {arch}.block_count); per-layer head counts "
                                       "are not supported"))
    head_dim = gguf.value(f"{arch}.attention.value_length") or gguf.value(f"{arch}.attention.key_length")
    if not isinstance(head_dim, int) or head_dim <= 0:
        width = gguf.value(f"{arch}.embedding_length")
        head_dim = width // heads if isinstance(width, int) and width > 0 else 0
    if head_dim <= 0:
        raise HeadpatchError(printable(f"GGUF file {gguf.path} does not give its head size"))
    return Architecture(model_type=GGUF_MODEL_TYPES.get(arch, arch), num_layers=layers, num_heads=heads,
                        head_dim=head_dim)


@dataclass(frozen=True)
class PatchedGGUFTensor:
    """One `attn_output` tensor the fold rewrites: the source's, its coefficients per head, and what it becomes."""

    source: TensorInfo
    heads: dict[int, float]
    head_dim: int

    @property
    def factors(self) -> np.ndarray:
        """The factor of each input column."""
        return column_factors(self.source.shape[0], self.head_dim, self.heads)

    @property
    def method(self) -> FoldMethod:
        """How the tensor takes its coefficients."""
        return fold_method(self.source.type, self.factors)

    @property
    def new_type(self) -> GGMLQuantizationType:
        """The tensor's type after the fold."""
        return folded_type(self.source.type, self.factors)


@dataclass(frozen=True)
class GGUFPlan:
    """Everything a GGUF export writes, decided before anything is written."""

    source: GGUFFile
    fields: tuple[Field, ...]
    tensors: tuple[TensorInfo, ...]  # the output's, in the source's order, with new offsets and types
    patched: dict[str, PatchedGGUFTensor]

    def summary(self) -> str:
        """One sentence on how the patched tensors took the patch (type changes and size changes named)."""
        exact = [t for t in self.patched.values() if t.method is not FoldMethod.REENCODED]
        lines = []
        if exact:
            types = ", ".join(sorted({t.source.type.name for t in exact}))
            how = "on their blocks' float16 scales" if all(t.method is FoldMethod.SCALES for t in exact) else \
                "on their block scales or values"
            lines.append(f"{len(exact)} attn_output tensors ({types}) took the coefficients exactly {how}.")
        for tensor in self.patched.values():
            if tensor.method is FoldMethod.REENCODED:
                before, after = tensor.source.nbytes, tensor_nbytes(tensor.new_type, tensor.source.shape)
                lines.append(f"{tensor.source.name} was re-encoded {tensor.source.type.name} -> "
                             f"{tensor.new_type.name} ({after - before:+,} bytes): its quantization blocks span "
                             "heads with different coefficients.")
        return " ".join(lines)


def export_name(source: Path) -> str:
    """The patched file's name: `-pear` before the quantization suffix (`X.Q4_1.gguf` -> `X-pear.Q4_1.gguf`)."""
    stem = source.name[:-len(".gguf")] if source.name.lower().endswith(".gguf") else source.name
    head, dot, tail = stem.rpartition(".")
    return f"{head}{NAME_SUFFIX}.{tail}.gguf" if dot and head else f"{stem}{NAME_SUFFIX}.gguf"


def source_name(gguf: GGUFFile) -> str:
    """The source model's name: its `general.name`, else the file's name."""
    name = gguf.value("general.name")
    return name if isinstance(name, str) and name else gguf.path.name.removesuffix(".gguf")


def exported_fields(gguf: GGUFFile, record: PatchRecord) -> tuple[Field, ...]:
    """The output's metadata: the source's entries as they are, `general.name` suffixed, the base-model keys naming
    the source, and the record under `headpatch.record`."""
    name = source_name(gguf)
    renamed = string_field("general.name", name + NAME_SUFFIX)
    fields = [renamed if field.key == "general.name" else field for field in gguf.fields
              if not field.key.startswith(BASE_MODEL_PREFIX) and field.key != RECORD_KEY]
    if renamed not in fields:
        fields.append(renamed)
    fields += [uint32_field(BASE_MODEL_PREFIX + "count", 1), string_field(BASE_MODEL_PREFIX + "0.name", name)]
    organization = gguf.value("general.organization")
    if isinstance(organization, str) and organization:
        fields.append(string_field(BASE_MODEL_PREFIX + "0.organization", organization))
    if record.base_model is not None and is_hub_id(record.base_model):
        fields.append(string_field(BASE_MODEL_PREFIX + "0.repo_url", f"https://huggingface.co/{record.base_model}"))
    fields.append(string_field(RECORD_KEY, record.to_text()))
    return tuple(fields)


def plan_gguf_export(gguf: GGUFFile, record: PatchRecord) -> GGUFPlan:
    """Check the record fits the GGUF and decide every output tensor's type and place."""
    architecture = gguf_architecture(gguf)
    record.check_architecture(architecture)
    coefficients = record.coefficients()
    check_heads(coefficients, architecture)
    patched = {}
    for layer, heads in sorted(by_layer(coefficients).items()):
        tensor = gguf.tensor(attn_output_name(layer))
        width = architecture.num_heads * architecture.head_dim
        if len(tensor.shape) != 2 or tensor.shape[0] != width:
            raise HeadpatchError(printable(
                f"the patch does not fit {gguf.path}: tensor {tensor.name} has shape {list(tensor.shape)}, the "
                f"recorded heads need {width} input columns"))
        patched[tensor.name] = PatchedGGUFTensor(tensor, heads, architecture.head_dim)
    position, tensors = 0, {}
    for tensor in sorted(gguf.tensors, key=lambda t: t.offset):
        new_type = patched[tensor.name].new_type if tensor.name in patched else tensor.type
        position = aligned(position, gguf.alignment)
        tensors[tensor.name] = TensorInfo(tensor.name, new_type, tensor.shape, position)
        position += tensors[tensor.name].nbytes
    return GGUFPlan(gguf, exported_fields(gguf, record), tuple(tensors[t.name] for t in gguf.tensors), patched)


def _fold(plan: GGUFPlan, view: memoryview, tensor: PatchedGGUFTensor) -> bytes:
    data = bytes(tensor_bytes(plan.source, view, tensor.source))
    return fold_tensor(data, tensor.source.type, tensor.source.rows, tensor.factors, tensor.source.name).data


def write_gguf(plan: GGUFPlan, view: memoryview, target: Path, show_progress: bool = True) -> None:
    """Write the planned GGUF to `target` (fsynced): header, then every tensor in the source's data order."""
    source = plan.source
    header = header_bytes(source.version, plan.fields, plan.tensors, source.alignment)
    placed = {tensor.name: tensor for tensor in plan.tensors}
    total = sum(tensor.nbytes for tensor in plan.tensors)
    with open(target, "wb") as out, tqdm(total=total, unit="B", unit_scale=True, desc="fold",
                                         disable=not show_progress) as bar:
        out.write(header)
        for tensor in sorted(source.tensors, key=lambda t: t.offset):
            new = placed[tensor.name]
            out.write(bytes(len(header) + new.offset - out.tell()))  # alignment padding
            if tensor.name in plan.patched:
                out.write(_fold(plan, view, plan.patched[tensor.name]))
            else:
                data = tensor_bytes(source, view, tensor)
                for start in range(0, len(data), _COPY_CHUNK):
                    out.write(data[start:start + _COPY_CHUNK])
            bar.update(new.nbytes)
        out.flush()
        os.fsync(out.fileno())


def gguf_base_card(source: Path) -> BaseCard:
    """The license and languages the GGUF's metadata records, as an export's card keeps them."""
    from headpatch.loading import gguf_card

    text = gguf_card(source)
    if text is None:
        return BaseCard(problem=f"{source.name} records no general.license")
    return parse_base_card(text, str(source))


def gguf_export(
    source: str | Path, record: PatchRecord, out: str | Path, overwrite: bool = False, show_progress: bool = True,
    warn: Callable[[str], None] = print, context: CardContext = CardContext(),
) -> Path:
    """Fold the record into a GGUF file; write `out/<name>-pear[.QUANT].gguf`, its model card and headpatch.json.
    `warn` gets the line on how tensors took the patch when one was re-encoded, and one when the license is unknown."""
    source, out = Path(source).resolve(), Path(out).resolve()
    check_output_dir(out, overwrite, source)
    record = record.published()
    base = gguf_base_card(source)
    with open_gguf(source) as (gguf, view):
        plan = plan_gguf_export(gguf, record)
        for tensor in plan.patched.values():  # an overflowing coefficient fails here, before anything is written
            _fold(plan, view, tensor)
        name = export_name(source)
        trained_context = gguf.value(f"{gguf.value('general.architecture')}.context_length")
        card = GGUFCard(name, plan.summary(), trained_context if isinstance(trained_context, int) else None)
        with staged_output(out, overwrite) as staging:
            write_gguf(plan, view, staging / name, show_progress)
            (staging / "README.md").write_text(render_card(record, context.repo_id or out.name, base,
                                                           context.command, card), encoding="utf-8")
            write_record(record, staging / "headpatch.json")
    if any(tensor.method is FoldMethod.REENCODED for tensor in plan.patched.values()):
        warn(printable(plan.summary()))
    warning = license_warning(base)
    if warning is not None:
        warn(warning)
    return out / name
