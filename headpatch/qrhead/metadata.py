"""What `config.json` -> `headpatch.qrhead` records: the heads, their scores and how they were detected."""

from __future__ import annotations

from headpatch._version import __version__
from headpatch.heads import format_head
from headpatch.qrhead.detect import DetectionResult
from headpatch.qrhead.prompt import CHAT_TEMPLATE, DEFAULT_LAYOUT, LAYOUT, PromptLayout
from headpatch.record import Detection, QRHeads, check_k

METHOD = (
    "QRHead (arXiv 2506.09944): attention from the query span to each document's tokens, summed over document tokens,"
    " averaged over query tokens; per head, summed over gold documents and averaged over examples"
)
CALIBRATION = "minus the same attention with the query replaced by 'N/A' (shared-prefix key/value cache reused)"
MASK = "per document, tokens whose calibrated score is <= mean - 2 std are zeroed before summing"


def turn_markers(layout: PromptLayout, chat_template: bool) -> str:
    """How the record describes the prompt's turn markers."""
    if layout.name != CHAT_TEMPLATE:
        return f"the public QRHead implementation's hard-coded {layout.name.removeprefix('qrhead-')} frame"
    return "chat template" if chat_template else "plain text"


def qrhead_part(result: DetectionResult, k: int, data: str, chat_template: bool,
                layout: PromptLayout = DEFAULT_LAYOUT) -> QRHeads:
    """The record's QR heads: the top K in rank order, every head's score, and how they were detected (`layout`
    named, so that a retriever reading the record frames its prompts the same way)."""
    ranked = result.ranked()
    check_k(k, len(ranked))
    detection = Detection(
        method=METHOD, data=data, examples=result.examples, k=k, calibration=CALIBRATION, mask=MASK,
        prompt_layout={**LAYOUT, "turn_markers": turn_markers(layout, chat_template), "layout": layout.name},
        seconds=round(result.seconds, 2), headpatch_version=__version__,
    )
    return QRHeads(heads=tuple(format_head(head) for head in ranked[:k]),
                   scores={format_head(head): round(float(result.scores[head]), 6) for head in ranked},
                   detection=detection)
