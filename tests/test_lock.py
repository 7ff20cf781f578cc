"""The lock beside an output directory: one run at a time, released when its process dies, nothing left behind."""

import errno
import fcntl
import signal
import subprocess
import sys

import pytest

from headpatch.errors import HeadpatchError
from headpatch.io import lock
from headpatch.io.lock import claimed


def test_a_second_claim_is_refused_and_the_first_leaves_nothing(tmp_path):
    out = tmp_path / "report"
    with claimed(out):
        assert (tmp_path / ".report.lock").is_file()
        with pytest.raises(HeadpatchError, match=f"another run is writing {out}"), claimed(out):
            pass
    assert list(tmp_path.iterdir()) == []
    with claimed(out):  # free again
        pass


def test_no_directory_it_made_is_left_for_a_run_that_wrote_nothing(tmp_path):
    with claimed(tmp_path / "a" / "b" / "report"):
        assert (tmp_path / "a" / "b" / ".report.lock").is_file()
    assert list(tmp_path.iterdir()) == []
    with claimed(tmp_path / "a" / "b" / "report"):
        (tmp_path / "a" / "kept.txt").write_text("written by the run")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "kept.txt"]


def test_a_lock_file_replaced_while_it_was_being_taken_is_taken_again(tmp_path, monkeypatch):
    """A run finishing removes its lock file; one that opened the old file meanwhile must lock the new one."""
    out = tmp_path / "report"
    path = tmp_path / ".report.lock"
    calls = []
    real_flock = fcntl.flock

    def flock_after_removal(handle, operation):
        calls.append(operation)
        if len(calls) == 1:
            path.unlink()  # the other run's clean-up, between this run's open and flock
        return real_flock(handle, operation)

    monkeypatch.setattr(lock.fcntl, "flock", flock_after_removal)
    with claimed(out):
        assert len(calls) == 2 and path.is_file()
        monkeypatch.setattr(lock.fcntl, "flock", real_flock)
        with pytest.raises(HeadpatchError), claimed(out):  # the file now at the path is the one held
            pass


def test_a_filesystem_without_locks_runs_unguarded(tmp_path, monkeypatch):
    def no_locks(handle, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(lock.fcntl, "flock", no_locks)
    with claimed(tmp_path / "report"), claimed(tmp_path / "report"):
        pass


@pytest.mark.slow  # a separate process, killed while it holds the lock
def test_a_killed_run_releases_its_lock(tmp_path):
    out = tmp_path / "report"
    code = ("import time; from pathlib import Path; from headpatch.io.lock import claimed\n"
            f"with claimed(Path({str(out)!r})):\n    print('held', flush=True); time.sleep(600)")
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) as holder:
        try:
            assert holder.stdout.readline().strip() == "held"
            with pytest.raises(HeadpatchError, match="another run is writing"), claimed(out):
                pass
        finally:
            holder.send_signal(signal.SIGKILL)
            holder.wait()
    assert (tmp_path / ".report.lock").exists()  # left behind by the kill, but no longer held
    with claimed(out):
        pass
    assert not (tmp_path / ".report.lock").exists()
