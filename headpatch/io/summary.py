"""A readable summary of the headpatch metadata in a checkpoint's config.json."""

from __future__ import annotations

from typing import Any

from headpatch.errors import HeadpatchError


def metadata_of(config: dict[str, Any], name: str) -> dict[str, Any]:
    """The `headpatch` section of a config, or a clear error when the checkpoint was not made by headpatch."""
    metadata = config.get("headpatch")
    if not isinstance(metadata, dict):
        raise HeadpatchError(f"{name} has no headpatch metadata in its config.json")
    return metadata


def metadata_summary(config: dict[str, Any], name: str) -> str:
    """Model identity, PEAR heads with coefficients and Δπ, and QR heads, as plain text lines."""
    metadata = metadata_of(config, name)
    pear = metadata.get("pear", {})
    location = pear.get("location", {})
    lines = [
        f"checkpoint: {name}",
        f"base model: {metadata.get('base_model')}  (made by headpatch {metadata.get('headpatch_version')}, "
        f"record format {metadata.get('format_version')})",
        f"architecture: {metadata.get('architecture')}",
        f"PEAR: {len(pear.get('coefficients', {}))} patched heads; location: {location.get('method')}",
    ]
    scores = location.get("scores", {})
    for head, value in pear.get("coefficients", {}).items():
        score = f"  delta_pi {scores[head]:+.4f}" if head in scores else ""
        lines.append(f"  {head:>7}  coefficient {value:.6f}{score}")
    training = pear.get("training")
    if training:
        before, after = training["heldout_before"]["loss"], training["heldout_after"]["loss"]
        lines.append(f"  held-out copy loss {before} -> {after}")
    qrhead = metadata.get("qrhead")
    if qrhead:
        detection = qrhead.get("detection", {})
        lines.append(f"QRHead: {len(qrhead.get('heads', []))} retrieval heads: {', '.join(qrhead.get('heads', []))}")
        lines.append(f"  detected on {detection.get('data')} ({detection.get('examples')} examples)")
    else:
        lines.append("QRHead: none")
    return "\n".join(lines)
