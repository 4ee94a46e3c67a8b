"""Guarding a run's OUTPUT_DIR: one writer at a time, no silent restarts over a finished run.

* :class:`OutputDirLock` is ``OUTPUT_DIR/.lock``: an exclusive ``flock`` on the file, which holds
  the owner's PID, host and start time. A second run fails at once with
  :class:`OutputDirLockedError` naming that PID. The kernel drops the ``flock`` when the owner dies
  (``kill -9`` included), so a lock file left behind is stale by construction: it is detected,
  reported and taken over. On file systems without ``flock`` (and for a lock file written on
  another host) the recorded PID is checked instead: on this host a PID that no longer exists
  means a stale lock; another host's lock is never broken automatically.
* :func:`previous_run` tells whether a folder holds checkpoints of an earlier run, and
  :func:`move_aside` renames such a folder to ``<folder>.old-<timestamp>`` (nothing is deleted).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import logging
import os
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

from .detection_checkpoint import LAST_CHECKPOINT_FILE

__all__ = [
    "LOCK_FILE",
    "OutputDirLock",
    "OutputDirLockedError",
    "PreviousRun",
    "move_aside",
    "pid_exists",
    "previous_run",
]

logger = logging.getLogger(__name__)

LOCK_FILE = ".lock"


class OutputDirLockedError(RuntimeError):
    """Another live process holds the OUTPUT_DIR lock."""


def pid_exists(pid: int) -> bool:
    """Whether a process with this PID exists on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError as e:  # pragma: no cover - e.g. Windows
        return e.errno != errno.ESRCH
    return True


def _describe_owner(owner: dict[str, Any]) -> str:
    pid = owner.get("pid", "?")
    host = owner.get("host", "?")
    started = owner.get("started", "?")
    command = owner.get("command", "")
    text = f"PID {pid} on {host} (since {started})"
    return f"{text}: {command}" if command else text


class OutputDirLock:
    """An exclusive lock on a run folder: ``with OutputDirLock(folder): ...``.

    Args:
        folder: the folder to lock (created if needed).
        command: recorded in the lock file for the message others get (e.g. "cvpods_train").

    Raises (on :meth:`acquire`):
        OutputDirLockedError: a live process holds the lock; the message names its PID and host.
    """

    def __init__(self, folder: str, command: str = "") -> None:
        self.folder = os.path.abspath(folder)
        self.path = os.path.join(self.folder, LOCK_FILE)
        self.command = command or " ".join(os.path.basename(a) for a in sys.argv[:1])
        self._fd: int | None = None
        self._flock_works = False
        #: The stale lock record this lock replaced (None if there was none), for reports.
        self.stale_record: dict[str, Any] | None = None

    # ------------------------------------------------------------------ public
    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> OutputDirLock:
        """Take the lock or raise :class:`OutputDirLockedError` (never waits)."""
        if self._fd is not None:
            return self
        os.makedirs(self.folder, exist_ok=True)
        for _ in range(20):  # retried only if the file is replaced while we lock it
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if not self._flock(fd):
                    raise self._locked_error(self._read_owner(fd))
                if not self._same_file(fd):
                    os.close(fd)
                    continue
                self._take_over(fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.close(fd)
                raise
            self._fd = fd
            return self
        raise OutputDirLockedError(f"{self.path} keeps being replaced; is another run starting?")

    def release(self) -> None:
        """Remove the lock file and drop the lock (no-op when not held)."""
        if self._fd is None:
            return
        try:
            if self._same_file(self._fd):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self.path)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> OutputDirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def move_folder_aside(self) -> str:
        """Rename the locked folder to ``<folder>.old-<timestamp>`` and drop the lock.

        The lock is held during the rename, so no other run can be writing into the folder;
        the lock file that moved along is removed. Returns the new path. Acquire again to lock
        the (now absent, recreated) folder.
        """
        if self._fd is None:
            raise RuntimeError(f"move_folder_aside: {self.path} is not held")
        target = move_aside(self.folder)
        moved_lock = os.path.join(target, LOCK_FILE)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.remove(moved_lock)
        finally:
            os.close(self._fd)
            self._fd = None
        return target

    def stale_message(self) -> str:
        """What :attr:`stale_record` was ("" if no stale lock was replaced)."""
        if self.stale_record is None:
            return ""
        return (
            f"{self.folder}: removed a stale lock of {_describe_owner(self.stale_record)}, which "
            "no longer runs (it was killed or crashed)"
        )

    @staticmethod
    def holder(folder: str) -> dict[str, Any] | None:
        """The owner recorded in ``folder``'s lock file if it may still be running, else None.

        Only reads the file (its PID is checked on this host); does not take the lock.
        """
        path = os.path.join(os.path.abspath(folder), LOCK_FILE)
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return None
        try:
            owner = OutputDirLock._read_owner(fd)
        finally:
            os.close(fd)
        return owner if owner.get("pid") and _owner_may_be_alive(owner) else None

    # ------------------------------------------------------------------ helpers
    def _flock(self, fd: int) -> bool:
        self._flock_works = False
        if fcntl is None:  # pragma: no cover - Windows: the PID check below decides
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError as e:  # file systems without flock (some network mounts)
            if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                logger.warning(
                    "%s: flock is not supported here (%s); relying on the recorded PID",
                    self.path,
                    e,
                )
                return True
            raise
        self._flock_works = True
        return True

    def _same_file(self, fd: int) -> bool:
        """Whether ``fd`` is still the file at :attr:`path` (not removed / replaced meanwhile)."""
        try:
            current = os.stat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (current.st_dev, current.st_ino) == (mine.st_dev, mine.st_ino)

    @staticmethod
    def _read_owner(fd: int) -> dict[str, Any]:
        for attempt in range(5):  # the owner may be writing its record right now
            os.lseek(fd, 0, os.SEEK_SET)
            data = os.read(fd, 65536)
            try:
                owner = json.loads(data.decode("utf-8")) if data.strip() else {}
            except (UnicodeDecodeError, json.JSONDecodeError):
                owner = {"unreadable": data[:200].decode("utf-8", "replace")}
            if owner or attempt == 4:
                return owner if isinstance(owner, dict) else {}
            time.sleep(0.05)
        return {}

    def _locked_error(self, owner: dict[str, Any]) -> OutputDirLockedError:
        who = _describe_owner(owner) if owner.get("pid") else "another process"
        return OutputDirLockedError(
            f"{self.folder} is in use by {who}; lock file {self.path}. Two runs writing into one "
            "OUTPUT_DIR would mix their logs and delete each other's checkpoints: wait for it to "
            "finish, or give this run another OUTPUT_DIR"
        )

    def _take_over(self, fd: int) -> None:
        """We hold the flock: check the previous record (stale or foreign), write ours."""
        previous = self._read_owner(fd)
        invisible = _owner_is_elsewhere(previous) or not self._flock_works
        if previous.get("pid") and invisible and _owner_may_be_alive(previous):
            # An owner our flock cannot see (another host, or no flock here) that may be alive.
            raise self._locked_error(previous)
        if previous.get("pid") or previous.get("unreadable"):
            self.stale_record = previous
            logger.warning("%s", self.stale_message())
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
            "command": self.command,
        }
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(record) + "\n").encode("utf-8"))
        os.fsync(fd)


def _owner_is_elsewhere(owner: dict[str, Any]) -> bool:
    """Whether the recorded owner is on another host (its flock may be invisible here)."""
    host = owner.get("host")
    return bool(host) and host != socket.gethostname()


def _owner_may_be_alive(owner: dict[str, Any]) -> bool:
    """False only when the owner is known dead: its PID no longer exists on this host."""
    try:
        pid = int(owner.get("pid", 0))
    except (TypeError, ValueError):
        return False
    if _owner_is_elsewhere(owner):
        return True  # cannot tell; never break another host's lock
    return pid != os.getpid() and pid_exists(pid)


# ---------------------------------------------------------------------------------- previous run


@dataclass
class PreviousRun:
    """What an earlier run left in a folder."""

    folder: str
    checkpoints: list[str]  # file names of the .pth files
    last_checkpoint: str  # the file named by last_checkpoint ("" if none)

    @property
    def finished(self) -> bool:
        return "model_final.pth" in self.checkpoints

    def describe(self) -> str:
        state = "a finished run" if self.finished else "an interrupted run"
        shown = ", ".join(self.checkpoints[:4]) + (", ..." if len(self.checkpoints) > 4 else "")
        newest = f", newest {self.last_checkpoint}" if self.last_checkpoint else ""
        return f"{state} ({len(self.checkpoints)} checkpoint(s): {shown}{newest})"


def previous_run(folder: str) -> PreviousRun | None:
    """The checkpoints an earlier run left in ``folder`` (None if there are none).

    A run is recognised by a ``last_checkpoint`` file or ``model_*.pth`` files; logs or a
    ``config_dump.py`` alone (a run that failed before its first checkpoint) do not count.
    """
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return None
    checkpoints = sorted(n for n in names if n.startswith("model_") and n.endswith(".pth"))
    last = ""
    if LAST_CHECKPOINT_FILE in names:
        with contextlib.suppress(OSError), open(os.path.join(folder, LAST_CHECKPOINT_FILE)) as f:
            last = f.read().strip()
    if not checkpoints and LAST_CHECKPOINT_FILE not in names:
        return None
    return PreviousRun(
        folder=os.path.abspath(folder), checkpoints=checkpoints, last_checkpoint=last
    )


def move_aside(folder: str, now: datetime.datetime | None = None) -> str:
    """Rename ``folder`` to ``<folder>.old-<YYYYmmdd-HHMMSS>`` (``-2``, ``-3``... if taken).

    Returns the new path. Nothing is deleted. To move a run folder, hold its lock and use
    :meth:`OutputDirLock.move_folder_aside`, so that no run is writing into it meanwhile.
    """
    folder = os.path.abspath(folder)
    stamp = (now or datetime.datetime.now()).strftime("%Y%m%d-%H%M%S")
    target = f"{folder}.old-{stamp}"
    index = 2
    while os.path.exists(target):
        target = f"{folder}.old-{stamp}-{index}"
        index += 1
    os.rename(folder, target)
    return target
