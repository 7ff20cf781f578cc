"""headpatch's own version, and the versions of what it runs on, for bug reports and result files."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

__version__ = "0.2.0.dev0"  # unreleased: 0.2 defaults (tuning), not yet tagged

# the distributions whose behaviour headpatch depends on, in the order a bug report lists them
LIBRARIES = ("torch", "transformers", "peft", "huggingface_hub", "accelerate", "safetensors", "gguf")


def library_versions() -> dict[str, str]:
    """headpatch, Python and each library's installed version ("not installed" where absent); imports none of them."""
    found = {"headpatch": __version__, "python": platform.python_version()}
    for name in LIBRARIES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found
