"""Outputs written whole or not at all: a file or a directory is staged beside its target, fsynced, then renamed."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from headpatch.errors import HeadpatchError


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Replace `path` with `text` so that readers see the old file or the new one, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def check_apart(out: Path, other: Path, what: str) -> None:
    """Refuse an output directory that is, holds or lies inside `other` (`what` names it in the message)."""
    out, other = out.resolve(), other.resolve()
    if out == other or other in out.parents or out in other.parents:
        raise HeadpatchError(f"output directory {out} overlaps {what} {other}")


def check_output_dir(
    out: Path, overwrite: bool, source_dir: Path | None = None, marker: str = "headpatch.json"
) -> None:
    """Refuse an output that overlaps the source, or exists and is not empty, unless `overwrite` is given and it holds
    `marker` (the file every earlier run of the same kind wrote), so --overwrite never deletes an unrelated folder."""
    out = out.resolve()
    if source_dir is not None:
        check_apart(out, source_dir, "the source checkpoint")
    if out.exists():
        if not out.is_dir():
            raise HeadpatchError(f"output path {out} exists and is not a directory")
        if any(out.iterdir()):
            if not overwrite:
                raise HeadpatchError(f"output directory {out} exists and is not empty; pass --overwrite to replace it")
            if not (out / marker).is_file():
                raise HeadpatchError(f"output directory {out} is not empty and holds no {marker} from an earlier run; "
                                     "refusing to replace it even with --overwrite")


def _fsync_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


def publish_dir(staging: Path, out: Path) -> None:
    """Move a finished staging directory into place, replacing `out` only once the new one is complete."""
    _fsync_tree(staging)
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp made it private; the output gets the permissions of a normal mkdir
    if not out.exists():
        staging.rename(out)
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    out.rename(retired / "old")
    try:
        staging.rename(out)
    except BaseException:
        (retired / "old").rename(out)
        raise
    shutil.rmtree(retired, ignore_errors=True)


@contextmanager
def staged_output(out: Path) -> Iterator[Path]:
    """A staging directory beside `out` that becomes `out` only if the block finishes; removed otherwise."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield staging
        publish_dir(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
