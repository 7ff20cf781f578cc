"""headpatch: make a causal LM read its context better and ship it as an ordinary checkpoint.

The public API is imported lazily, so that `import headpatch.record` (or the CLI's `--help`) loads no torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from headpatch._version import __version__
from headpatch.errors import HeadpatchError

_API = {
    "ExportJob": "headpatch.options", "LocateOptions": "headpatch.options", "TrainOptions": "headpatch.options",
    "QRHeadOptions": "headpatch.options", "TuneOptions": "headpatch.options", "PatchRecord": "headpatch.record",
    "head_layout": "headpatch.architectures", "supported_model_types": "headpatch.architectures",
    "load_model": "headpatch.loading", "run_export": "headpatch.pipeline",
    "locate_heads": "headpatch.pear.locate", "train_coefficients": "headpatch.pear.train", "tune": "headpatch.pear.tune",
    "HeadScaling": "headpatch.pear.scaling", "scaled_heads": "headpatch.pear.scaling",
    "fold_model": "headpatch.pear.fold", "save_ia3_adapter": "headpatch.pear.ia3",
    "export_checkpoint": "headpatch.io.export", "stream_export": "headpatch.io.export",
    "verify_export": "headpatch.io.verify", "QRRetriever": "headpatch.qrhead.retriever",
}
__all__ = ["HeadpatchError", "__version__", *sorted(_API)]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'headpatch' has no attribute {name!r}")
    return getattr(importlib.import_module(_API[name]), name)
