"""Scale the head columns of one GGUF tensor: exactly on its blocks' own scales where it can, else re-encoded.

A head's coefficient multiplies that head's input columns of `attn_output`. GGUF stores each row as a run of blocks of
consecutive columns; every quantized type below de-quantizes a block as (float16 scale) × (integers), plus (float16
min) × (integers) for the asymmetric ones, so when all columns of a block share one factor, multiplying the block's
float16 scale(s) by it scales the block exactly, leaving the integers alone. Where a block straddles heads with
different factors (256-wide K-quant blocks over 64- or 128-wide heads), the tensor is de-quantized, scaled in float32
and quantized again: in its own type when gguf-py can quantize it, else in the nearest type it can.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize, quantize

from headpatch.errors import HeadpatchError, printable

Q = GGMLQuantizationType

# Byte offsets, within one block, of the float16 factors that multiply every value of the block (llama.cpp's
# ggml-common.h block structs: `d`, and `m`/`dmin` for the types with a minimum).
SCALE_OFFSETS: dict[GGMLQuantizationType, tuple[int, ...]] = {
    Q.Q4_0: (0,), Q.Q4_1: (0, 2), Q.Q5_0: (0,), Q.Q5_1: (0, 2), Q.Q8_0: (0,),
    Q.Q2_K: (80, 82), Q.Q3_K: (108,), Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,),
}
# Types scaled value by value (one rounding of the float32 product to the stored type).
ELEMENT_TYPES = (Q.F32, Q.F16, Q.BF16)
# Re-encoding target of a straddling tensor whose type gguf-py cannot quantize: the quantizable type nearest in size
# that keeps a minimum where the source has one. Anything else becomes Q8_0.
REENCODE_AS: dict[GGMLQuantizationType, GGMLQuantizationType] = {
    Q.Q2_K: Q.Q4_1, Q.Q3_K: Q.Q4_0, Q.Q4_K: Q.Q4_1, Q.Q5_K: Q.Q5_1, Q.Q6_K: Q.Q8_0,
}
QUANTIZABLE = (Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0)


class FoldMethod(str, Enum):
    """How a tensor took its coefficients."""

    SCALES = "scales"  # block scales multiplied, integers unchanged: exact up to float16 rounding of each scale
    ELEMENTS = "elements"  # float tensor multiplied value by value
    REENCODED = "re-encoded"  # de-quantized, scaled and quantized again: within the target type's error


@dataclass(frozen=True)
class FoldedTensor:
    """A tensor's new bytes and how they were made."""

    type: GGMLQuantizationType
    data: bytes
    method: FoldMethod


def column_factors(width: int, head_dim: int, heads: dict[int, float]) -> np.ndarray:
    """The factor of each of the `width` input columns: a head's coefficient over its `head_dim` columns, 1 elsewhere."""
    factors = np.ones(width, dtype=np.float32)
    for head, coefficient in heads.items():
        factors[head * head_dim:(head + 1) * head_dim] = coefficient
    return factors


def block_factors(qtype: GGMLQuantizationType, factors: np.ndarray) -> np.ndarray | None:
    """One factor per block of a row when every block's columns share one, else None."""
    per_block = factors.reshape(-1, GGML_QUANT_SIZES[qtype][0])
    return per_block[:, 0] if (per_block == per_block[:, :1]).all() else None


def fold_method(qtype: GGMLQuantizationType, factors: np.ndarray) -> FoldMethod:
    """How a tensor of this type takes these column factors."""
    if qtype in ELEMENT_TYPES:
        return FoldMethod.ELEMENTS
    if qtype in SCALE_OFFSETS and block_factors(qtype, factors) is not None:
        return FoldMethod.SCALES
    return FoldMethod.REENCODED


def reencoded_type(qtype: GGMLQuantizationType) -> GGMLQuantizationType:
    """The type a straddling tensor of type `qtype` is written in."""
    return qtype if qtype in QUANTIZABLE else REENCODE_AS.get(qtype, Q.Q8_0)


def folded_type(qtype: GGMLQuantizationType, factors: np.ndarray) -> GGMLQuantizationType:
    """The type the tensor has after the fold."""
    return reencoded_type(qtype) if fold_method(qtype, factors) is FoldMethod.REENCODED else qtype


def _finite(values: np.ndarray, name: str) -> None:
    if not np.isfinite(values).all():
        raise HeadpatchError(printable(f"folding the coefficients into {name} overflows its stored type; the patch "
                                       "holds a coefficient too large for this model"))


def _scaled_blocks(data: bytes, qtype: GGMLQuantizationType, rows: int, per_block: np.ndarray, name: str) -> bytes:
    _, size = GGML_QUANT_SIZES[qtype]
    blocks = np.frombuffer(data, dtype=np.uint8).reshape(rows, len(per_block), size).copy()
    for offset in SCALE_OFFSETS[qtype]:
        scales = blocks[:, :, offset:offset + 2].copy().view(np.float16)[..., 0]
        with np.errstate(over="ignore"):  # an overflow is reported by the check below, naming the tensor
            new = (scales.astype(np.float32) * per_block).astype(np.float16)
        _finite(new, name)
        blocks[:, :, offset:offset + 2] = new[..., None].view(np.uint8)
    return blocks.tobytes()


def dequantized(data: bytes, qtype: GGMLQuantizationType, rows: int) -> np.ndarray:
    """A tensor's values as float32, one row per row."""
    return dequantize(np.frombuffer(data, dtype=np.uint8).reshape(rows, -1), qtype).reshape(rows, -1)


def fold_tensor(data: bytes, qtype: GGMLQuantizationType, rows: int, factors: np.ndarray, name: str) -> FoldedTensor:
    """The bytes of a tensor of `rows` rows whose columns are multiplied by `factors`; `name` goes into errors."""
    method = fold_method(qtype, factors)
    if method is FoldMethod.SCALES:
        return FoldedTensor(qtype, _scaled_blocks(data, qtype, rows, block_factors(qtype, factors), name), method)
    scaled = dequantized(data, qtype, rows) * factors
    _finite(scaled, name)
    target = qtype if method is FoldMethod.ELEMENTS else reencoded_type(qtype)
    with np.errstate(over="ignore"):  # float16's range is narrower than float32's: checked below
        encoded = np.ascontiguousarray(quantize(scaled, target))
    _finite(dequantized(encoded.tobytes(), target, rows), name)
    return FoldedTensor(target, encoded.tobytes(), method)
