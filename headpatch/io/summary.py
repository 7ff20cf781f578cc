"""A readable summary of the headpatch metadata in a checkpoint's config.json."""

from __future__ import annotations

from typing import Any

from headpatch.errors import HeadpatchError, printable
from headpatch.record import PatchRecord


def metadata_of(config: dict[str, Any], name: str) -> dict[str, Any]:
    """The `headpatch` section of a config, or a clear error when the checkpoint was not made by headpatch."""
    metadata = config.get("headpatch")
    if not isinstance(metadata, dict):
        raise HeadpatchError(f"{name} has no headpatch metadata in its config.json")
    return metadata


def checkpoint_record(config: dict[str, Any], name: str) -> PatchRecord:
    """The checked patch record a checkpoint's config.json carries."""
    return PatchRecord.from_json(metadata_of(config, name), f"the headpatch metadata of {name}")


def metadata_summary(config: dict[str, Any], name: str) -> str:
    """Model identity, PEAR heads with coefficients and Δπ, and QR heads, as plain text lines."""
    record = checkpoint_record(config, name)
    pear = record.pear
    lines = [
        f"checkpoint: {name}",
        f"base model: {record.base_model or record.source}  (made by headpatch {record.headpatch_version}, "
        f"record format {record.format_version})",
        f"architecture: {record.to_json()['architecture']}",
    ]
    if pear is None:
        lines.append("PEAR: none")
    else:
        coefficients = pear.coefficients or {}
        lines.append(f"PEAR: {len(coefficients)} patched heads; location: {pear.location.method}")
        scores = pear.location.scores or {}
        for head, value in coefficients.items():
            score = f"  delta_pi {scores[head]:+.4f}" if head in scores else ""
            lines.append(f"  {head:>7}  coefficient {value:.6f}{score}")
        if pear.training is not None:
            lines.append(f"  held-out copy loss {pear.training.heldout_before.loss} -> "
                         f"{pear.training.heldout_after.loss}")
    if record.qrhead is not None:
        detection = record.qrhead.detection
        lines.append(f"QRHead: {len(record.qrhead.heads)} retrieval heads: {', '.join(record.qrhead.heads)}")
        lines.append(f"  detected on {detection.data} ({detection.examples} examples)")
    else:
        lines.append("QRHead: none")
    return "\n".join(printable(line) for line in lines)  # every string in it comes from a file
