"""QRHead: find a model's query-focused retrieval heads and rerank passages with them."""

from headpatch.qrhead.builtin import builtin_examples
from headpatch.qrhead.data import Document, Example, read_examples, write_examples
from headpatch.qrhead.detect import DetectionResult, default_k, detect_heads
from headpatch.qrhead.metadata import qrhead_part
from headpatch.qrhead.retriever import QRRetriever
from headpatch.qrhead.yamlio import HeadSet, read_yaml, write_yaml

__all__ = [
    "DetectionResult", "Document", "Example", "HeadSet", "QRRetriever", "builtin_examples", "default_k",
    "detect_heads", "qrhead_part", "read_examples", "read_yaml", "write_examples", "write_yaml",
]
