"""What `config.json` -> `headpatch.qrhead` records: the heads, their scores and how they were detected."""

from __future__ import annotations

from headpatch._version import __version__
from headpatch.heads import format_head
from headpatch.qrhead.detect import DetectionResult
from headpatch.qrhead.prompt import LAYOUT
from headpatch.record import Detection, QRHeads, check_k

METHOD = (
    "QRHead (arXiv 2506.09944): attention from the query span to each document's tokens, summed over document tokens,"
    " averaged over query tokens; per head, summed over gold documents and averaged over examples"
)
CALIBRATION = "minus the same attention with the query replaced by 'N/A' (shared-prefix key/value cache reused)"
MASK = "per document, tokens whose calibrated score is <= mean - 2 std are zeroed before summing"


def qrhead_part(result: DetectionResult, k: int, data: str, chat_template: bool) -> QRHeads:
    """The record's QR heads: the top K in rank order, every head's score, and how they were detected."""
    ranked = result.ranked()
    check_k(k, len(ranked))
    detection = Detection(
        method=METHOD, data=data, examples=result.examples, k=k, calibration=CALIBRATION, mask=MASK,
        prompt_layout={**LAYOUT, "turn_markers": "chat template" if chat_template else "plain text"},
        seconds=round(result.seconds, 2), headpatch_version=__version__,
    )
    return QRHeads(heads=tuple(format_head(head) for head in ranked[:k]),
                   scores={format_head(head): round(float(result.scores[head]), 6) for head in ranked},
                   detection=detection)
