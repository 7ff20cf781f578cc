"""What `config.json` -> `headpatch.qrhead` records: the heads, their scores and how they were detected."""

from __future__ import annotations

from typing import Any

from headpatch._version import __version__
from headpatch.errors import HeadpatchError
from headpatch.heads import format_head
from headpatch.qrhead.detect import DetectionResult
from headpatch.qrhead.prompt import LAYOUT

METHOD = (
    "QRHead (arXiv 2506.09944): attention from the query span to each document's tokens, summed over document tokens,"
    " averaged over query tokens; per head, summed over gold documents and averaged over examples"
)
CALIBRATION = "minus the same attention with the query replaced by 'N/A' (shared-prefix key/value cache reused)"
MASK = "per document, tokens whose calibrated score is <= mean - 2 std are zeroed before summing"


def qrhead_metadata(
    result: DetectionResult, k: int, data: str, chat_template: bool, all_scores: bool = False
) -> dict[str, Any]:
    """The `headpatch.qrhead` section: top-K heads in rank order with their scores (every head's if `all_scores`)."""
    ranked = result.ranked()
    if not 1 <= k <= len(ranked):
        raise HeadpatchError(f"K={k} is out of range: the model has {len(ranked)} heads")
    scored = ranked if all_scores else ranked[:k]
    return {
        "heads": [format_head(head) for head in ranked[:k]],
        "scores": {format_head(head): round(float(result.scores[head]), 6) for head in scored},
        "detection": {
            "method": METHOD,
            "data": data,
            "examples": result.examples,
            "k": k,
            "calibration": CALIBRATION,
            "mask": MASK,
            "prompt_layout": {**LAYOUT, "turn_markers": "chat template" if chat_template else "plain text"},
            "seconds": round(result.seconds, 2),
            "headpatch_version": __version__,
        },
    }
