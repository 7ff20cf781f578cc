"""headpatch: make a causal LM read its context better and ship it as an ordinary checkpoint."""

from headpatch._version import __version__
from headpatch.architectures import head_layout, supported_model_types  # noqa: E402
from headpatch.errors import HeadpatchError  # noqa: E402
from headpatch.io.export import export_checkpoint, stream_export  # noqa: E402
from headpatch.io.verify import verify_export  # noqa: E402
from headpatch.loading import load_model  # noqa: E402
from headpatch.pear.fold import fold_model  # noqa: E402
from headpatch.pear.ia3 import save_ia3_adapter  # noqa: E402
from headpatch.pear.locate import LocateOptions, locate_heads  # noqa: E402
from headpatch.pear.scaling import HeadScaling, scaled_heads  # noqa: E402
from headpatch.pear.train import TrainOptions, train_coefficients  # noqa: E402
from headpatch.qrhead import QRRetriever  # noqa: E402

__all__ = [
    "HeadScaling", "HeadpatchError", "__version__", "LocateOptions", "QRRetriever", "TrainOptions", "export_checkpoint", "fold_model",
    "head_layout", "load_model", "locate_heads", "save_ia3_adapter", "scaled_heads", "stream_export",
    "supported_model_types", "train_coefficients", "verify_export",
]
