"""Staging directories: where a large output is written before it is renamed into place, named so that one a killed
process left behind can be told from one still being written, and removed."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def _prefix(out: Path) -> str:
    return f".{out.name}.partial-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def new_staging_dir(out: Path) -> Path:
    """An empty hidden directory beside `out`, named after it and this process's id."""
    return Path(tempfile.mkdtemp(prefix=f"{_prefix(out)}{os.getpid()}-", dir=out.parent))


def remove_stale_staging(out: Path) -> list[Path]:
    """Remove staging directories of `out` whose process is gone (killed by SIGKILL, the OOM killer or a power cut);
    return them. Their names carry the writer's process id, so a run still writing is left alone."""
    removed = []
    for path in out.parent.glob(_prefix(out) + "*"):
        pid = path.name[len(_prefix(out)):].split("-", 1)[0]
        if path.is_dir() and not path.is_symlink() and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
