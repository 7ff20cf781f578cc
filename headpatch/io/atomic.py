"""Outputs written whole or not at all: a file or a directory is staged beside its target, fsynced, then renamed.

A directory is published with a rename that cannot replace (so two runs racing to one output cannot both win, and a
directory that appears meanwhile is never deleted); SIGTERM and SIGHUP remove the staging directory like Ctrl-C does,
and one left by SIGKILL is removed by the next run to the same output. Every published directory lists the files it
was published with in MANIFEST, so --overwrite replaces an earlier output only when it holds nothing else.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from headpatch.errors import HeadpatchError
from headpatch.staging import new_staging_dir, remove_stale_staging

_RENAME_NOREPLACE = 1  # linux/fs.h
_AT_FDCWD = -100
_CLEANUP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))
_LOCK_WAIT_S = 10.0
MANIFEST = ".headpatch-manifest.json"


def _normal_mode(directory: bool = False) -> int:
    """The mode a plain open() or mkdir() would give under the current umask (mkstemp/mkdtemp make private ones)."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new entry in `directory` durable (a file's fsync does not cover its directory entry)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Replace `path` with UTF-8 `text` so that readers see the old file or the new one, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.chmod(tmp, _normal_mode())
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def overlap(one: Path, other: Path) -> bool:
    """Whether two paths are the same or one lies inside the other, once links are resolved."""
    one, other = Path(one).resolve(), Path(other).resolve()
    return one == other or other in one.parents or one in other.parents


def check_apart(out: Path, other: Path, what: str) -> None:
    """Refuse an output directory that is, holds or lies inside `other` (`what` names it in the message)."""
    if overlap(out, other):
        raise HeadpatchError(f"output directory {out.resolve()} overlaps {what} {other.resolve()}")


def _check_creatable(path: Path, what: str) -> None:
    existing = next(parent for parent in path.parents if parent.exists())
    if not existing.is_dir():
        raise HeadpatchError(f"{what} {path} cannot be created: {existing} is not a directory")


def check_output_file(path: Path, overwrite: bool, source: Path | None = None) -> None:
    """Refuse a file output (a record, a YAML head list) that lies in or on the local source `source` (a checkpoint
    directory or a .gguf file), is a directory, cannot be created, or exists unless `overwrite` is given. Called
    before any model work, so a refused run costs nothing and the source is never written."""
    path = Path(path).resolve()
    if source is not None:
        source = source.resolve()
        if path == source or source in path.parents:
            raise HeadpatchError(f"output file {path} lies inside the source checkpoint {source}")
    if path.is_dir():
        raise HeadpatchError(f"output path {path} is a directory; give a file name")
    _check_creatable(path, "output file")
    if path.exists() and not overwrite:
        raise HeadpatchError(f"output file {path} exists; pass --overwrite to replace it")


def _listed(directory: Path) -> set[str] | None:
    """The names in `directory`'s manifest, or None if it has no readable one."""
    try:
        names = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return {name for name in names if isinstance(name, str)} if isinstance(names, list) else None


def _entries(root: Path) -> Iterator[Path]:
    """Every file, link and other non-directory under `root`, links to directories included, none followed."""
    for directory, dirs, files in os.walk(root):
        for name in [*files, *(d for d in dirs if os.path.islink(os.path.join(directory, d)))]:
            yield Path(directory, name).relative_to(root)


def foreign_files(out: Path, expected: set[str] | None = None) -> list[str]:
    """Files under `out` that no headpatch run published there: each must be listed in the manifest of the nearest
    directory above it that has one (an export's eval/ report has its own). Where `out` itself has no manifest (an
    output of headpatch 0.1), `expected`, the names the replacing output holds, stands in; without it such files are
    not judged."""
    foreign = []
    for relative in sorted(_entries(out)):
        if relative.name == MANIFEST:
            continue
        for depth in range(len(relative.parts) - 1, -1, -1):
            listed = _listed(out.joinpath(*relative.parts[:depth]))
            if listed is None and depth == 0:
                listed = expected
            if listed is not None:
                if "/".join(relative.parts[depth:]) not in listed:
                    foreign.append(relative.as_posix())
                break
    return foreign


def _refuse_foreign(out: Path, foreign: list[str]) -> None:
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise HeadpatchError(f"output directory {out} holds files no headpatch run wrote there ({shown}); --overwrite "
                             "replaces only what an earlier run wrote: move them away or choose another output")


def _write_manifest(staging: Path) -> None:
    names = sorted(path.as_posix() for path in _entries(staging))
    with open(staging / MANIFEST, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(names, indent=1) + "\n")


def check_output_dir(
    out: Path, overwrite: bool, source_dir: Path | None = None, marker: str = "headpatch.json"
) -> None:
    """Refuse an output that overlaps the source, or exists and is not empty, unless `overwrite` is given, it holds
    `marker` (the file every earlier run of the same kind wrote) and nothing an earlier run did not write, so
    --overwrite never deletes an unrelated folder or a file someone added (a clone's .git, a LICENSE)."""
    out = out.resolve()
    if source_dir is not None:
        check_apart(out, source_dir, "the source checkpoint")
    _check_creatable(out, "output directory")
    if out.exists():
        if not out.is_dir():
            raise HeadpatchError(f"output path {out} exists and is not a directory")
        if any(out.iterdir()):
            if not overwrite:
                raise HeadpatchError(f"output directory {out} exists and is not empty; pass --overwrite to replace it")
            if not (out / marker).is_file():
                raise HeadpatchError(f"output directory {out} is not empty and holds no {marker} from an earlier run; "
                                     "refusing to replace it even with --overwrite")
            _refuse_foreign(out, foreign_files(out))


def _renameat2() -> object | None:
    try:
        return ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # not Linux, or a C library older than glibc 2.28
        return None


def _rename_locked(source: Path, target: Path) -> None:
    """The fallback where the kernel cannot refuse the replacement: a lock file beside `target` serialises the
    check-then-rename of every headpatch run."""
    lock = target.parent / f".{target.name}.lock"
    deadline = time.monotonic() + _LOCK_WAIT_S
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            if time.monotonic() > deadline:
                raise HeadpatchError(f"{lock} has been held for {_LOCK_WAIT_S:.0f} s; remove it if no export of "
                                     f"{target} is running") from None
            time.sleep(0.05)
    try:
        if os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target))
        os.rename(source, target)
    finally:
        os.close(fd)
        lock.unlink()


def rename_noreplace(source: Path, target: Path) -> None:
    """Rename `source` to `target`, raising FileExistsError if `target` exists (a plain rename silently replaces an
    empty directory, or a file): renameat2(RENAME_NOREPLACE) where the kernel has it, a lock file otherwise."""
    call = _renameat2()
    if call is not None:
        if call(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), _RENAME_NOREPLACE) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.ENOSYS, errno.EINVAL):  # those two: this kernel or filesystem lacks the flag
            raise OSError(code, os.strerror(code), str(target))
    _rename_locked(source, target)


def _fsync_tree(root: Path) -> None:
    for path in [*root.rglob("*"), root]:
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        elif path.is_dir():
            fsync_dir(path)


def _taken(out: Path) -> HeadpatchError:
    return HeadpatchError(f"output directory {out} was created or filled by someone else while this run wrote "
                          "(another export to the same output?); nothing was replaced")


def _publish_new(staging: Path, out: Path) -> None:
    """Publish where `out` was absent or empty when checked: an empty `out` is removed (rmdir fails if it has been
    filled since), then the rename refuses an `out` that appeared meanwhile."""
    if out.is_dir() and not out.is_symlink():
        try:
            out.rmdir()
        except OSError:
            raise _taken(out) from None
    try:
        rename_noreplace(staging, out)
    except FileExistsError:
        raise _taken(out) from None


def _publish_over(staging: Path, out: Path, marker: str) -> None:
    """Replace an earlier run's output (checked again now: it must still hold `marker`): moved aside, the new one
    renamed in without replacing, the old one put back if that fails."""
    check_output_dir(out, True, marker=marker)
    _refuse_foreign(out, foreign_files(out, expected=_listed(staging)))  # publish_dir wrote staging's manifest
    retired = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    out.rename(retired / "old")
    try:
        rename_noreplace(staging, out)
    except FileExistsError:
        raise HeadpatchError(f"output directory {out} was recreated by someone else while this run wrote; the "
                             f"earlier output is kept at {retired / 'old'}") from None
    except BaseException:
        (retired / "old").rename(out)
        raise
    shutil.rmtree(retired, ignore_errors=True)


def publish_dir(staging: Path, out: Path, overwrite: bool = False, marker: str = "headpatch.json") -> None:
    """Move a finished staging directory into place: never over anything that appeared since the output was checked,
    and over an earlier run's output (holding `marker`) only with `overwrite`."""
    _write_manifest(staging)
    _fsync_tree(staging)
    staging.chmod(_normal_mode(directory=True))
    if overwrite and out.exists() and any(out.iterdir()):
        _publish_over(staging, out, marker)
    else:
        _publish_new(staging, out)
    fsync_dir(out.parent)


class _Terminated(BaseException):
    """SIGTERM or SIGHUP arrived: unwinds like KeyboardInterrupt so the staging directory is removed, then the
    process exits with 128 + the signal number, as the shell reports a signalled process."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise _Terminated(signum)


@contextmanager
def _cleanup_on_signals() -> Iterator[None]:
    """While the block runs, SIGTERM and SIGHUP (timeout, Slurm, docker stop, a closed terminal) unwind it instead of
    killing the process on the spot; only the main thread can install handlers, elsewhere nothing changes."""
    try:
        previous = {signum: signal.signal(signum, _raise_terminated) for signum in _CLEANUP_SIGNALS}
    except ValueError:
        yield
        return
    try:
        yield
    except _Terminated as exc:
        raise SystemExit(128 + exc.signum) from None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextmanager
def staged_output(out: Path, overwrite: bool = False, marker: str = "headpatch.json") -> Iterator[Path]:
    """A staging directory beside `out` that becomes `out` only if the block finishes; removed otherwise, on SIGTERM
    and SIGHUP too. `overwrite` and `marker` as for check_output_dir, checked again when publishing."""
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(out)
    with _cleanup_on_signals():
        staging = new_staging_dir(out)
        try:
            yield staging
            publish_dir(staging, out, overwrite, marker)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
