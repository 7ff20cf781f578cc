"""One run per output directory: a lock beside the output, held while a long command writes it."""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from headpatch.errors import HeadpatchError


def _made_parents(directory: Path) -> list[Path]:
    """Create `directory` and any missing parents; return those created, innermost first."""
    missing = [path for path in (directory, *directory.parents) if not path.exists()]
    directory.mkdir(parents=True, exist_ok=True)
    return missing


def _locked(path: Path, output: Path) -> IO[str] | None:
    """An open handle holding the flock on the file now at `path`; None where the filesystem has no locks (some
    network filesystems), which leaves the run unguarded as it was before locks existed."""
    while True:
        try:
            handle = open(path, "a", encoding="utf-8")  # noqa: SIM115 (held until the run ends)
        except FileNotFoundError:  # a finishing run removed the directory it had made: make it again
            path.parent.mkdir(parents=True, exist_ok=True)
            continue
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            handle.close()
            if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                raise HeadpatchError(f"another run is writing {output} (it holds {path}); wait for it to finish or "
                                     "choose another output directory") from None
            return None
        try:
            if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                return handle
        except FileNotFoundError:
            pass
        handle.close()  # the run that held it removed the file meanwhile: lock the one now at `path`


@contextmanager
def claimed(output: Path) -> Iterator[None]:
    """Held while a run writes `output`. A second run to the same output is refused at once, instead of working for
    hours beside the first and then finding its shared files gone and the output already written. The lock (an flock,
    which the system releases if the process dies) is on a hidden file beside OUTPUT; it is removed on the way out,
    with any parent directory this created that nothing filled."""
    output = output.resolve()
    path = output.parent / f".{output.name}.lock"
    made = _made_parents(output.parent)
    try:
        handle = _locked(path, output)
        try:
            yield
        finally:
            if handle is not None:
                path.unlink(missing_ok=True)
                handle.close()
    finally:
        for directory in made:
            try:
                directory.rmdir()
            except OSError:  # not empty: the run wrote something there
                break
