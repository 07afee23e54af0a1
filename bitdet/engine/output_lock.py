"""One run per ``OUTPUT_DIR``: a lock file holding the owner's host and pid.

Two runs writing the same folder overwrite each other's checkpoints and interleave their
event files. The main process of a run creates ``OUTPUT_DIR/bitdet.lock`` exclusively
(``O_EXCL``, which NFS and Lustre honour) and refreshes its time stamp every minute; a second
run stops with an error naming the first. A lock is stale, and is taken over with a warning,
when its process is gone: same host and the pid no longer exists, an earlier incarnation of
the same requeued SLURM job, or no refresh for ``BITDET_LOCK_STALE_S`` seconds (default 600;
a holder on another host that was killed). The lock is removed when the run ends. An
``OUTPUT_DIR`` that is a file or cannot be written stops the run before anything else
(:class:`OutputDirError`, a user error: one line, exit status 2 in the tools).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Union

from bitdet.errors import UserError

__all__ = [
    "LOCK_NAME",
    "OutputDirError",
    "OutputDirLock",
    "OutputDirLocked",
    "acquire_output_lock",
    "release_output_locks",
]

logger = logging.getLogger(__name__)

LOCK_NAME = "bitdet.lock"
_REFRESH_S = 60.0
_SETTLE_S = 5.0  # how long a new lock file may stay empty while its owner writes it
_HELD: List["OutputDirLock"] = []


class OutputDirError(UserError, ValueError):
    """``OUTPUT_DIR`` cannot hold this run: a file, not writable, or locked by another run."""


class OutputDirLocked(OutputDirError):
    """Another live run holds the folder's lock."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _owner() -> Dict[str, object]:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "slurm_restart_count": int(os.environ.get("SLURM_RESTART_COUNT", 0) or 0),
        "command": " ".join(sys.argv),
    }


class OutputDirLock:
    """The lock of one output folder; see the module docstring.

    Args:
        folder: the run's ``OUTPUT_DIR`` (created if absent).
        stale_after_s: seconds without a refresh after which a lock is stale (default
            ``$BITDET_LOCK_STALE_S`` or 600).
    """

    def __init__(
        self, folder: Union[str, os.PathLike], stale_after_s: Optional[float] = None
    ) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.stale_after_s = float(
            stale_after_s
            if stale_after_s is not None
            else os.environ.get("BITDET_LOCK_STALE_S", 600)
        )
        self.owner = _owner()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _read(self) -> Optional[Dict[str, object]]:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # being written, or unreadable: judged by its age alone

    def _read_settled(self) -> Optional[Dict[str, object]]:
        """:meth:`_read`, waiting while a just-created lock is still empty (its owner is writing
        it: two runs started at the same instant), so that the error names the holder."""
        deadline = time.monotonic() + _SETTLE_S
        holder = self._read()
        while holder == {} and time.monotonic() < deadline:
            time.sleep(0.02)
            holder = self._read()
        return holder

    def _unusable(self, error: OSError) -> OutputDirError:
        """The one-line error for a folder that cannot hold the lock file."""
        where = Path(error.filename) if error.filename else self.folder
        existing = next((p for p in (where, *where.parents) if p.exists()), None)
        if existing is not None and not existing.is_dir():
            what = "is a file" if existing == self.folder else f"is under the file {existing}"
            return OutputDirError(
                f"OUTPUT_DIR {self.folder} {what}, not a folder: set another OUTPUT_DIR"
            )
        return OutputDirError(
            f"OUTPUT_DIR {self.folder} cannot be written ({error.strerror or error}: {where}); "
            "set a writable OUTPUT_DIR"
        )

    def _stale_reason(self, holder: Dict[str, object]) -> Optional[str]:
        """Why ``holder`` no longer runs, or None when it may still be running."""
        host, pid = holder.get("host"), holder.get("pid")
        me = self.owner
        if host == me["host"] and pid == me["pid"]:
            return "this process"
        if host == me["host"] and isinstance(pid, int) and not _pid_alive(pid):
            return f"process {pid} on {host} has ended"
        if (
            holder.get("slurm_job_id")
            and holder.get("slurm_job_id") == me["slurm_job_id"]
            and int(holder.get("slurm_restart_count") or 0) < int(me["slurm_restart_count"])
        ):
            return f"it belongs to an earlier run of the requeued SLURM job {me['slurm_job_id']}"
        with contextlib.suppress(FileNotFoundError):
            age = time.time() - self.path.stat().st_mtime
            if age > self.stale_after_s:
                return (
                    f"it was not refreshed for {age:.0f} s (more than {self.stale_after_s:.0f} s)"
                )
        return None

    def acquire(self) -> "OutputDirLock":
        """Take the lock, or take over a stale one.

        Raises:
            OutputDirLocked: a live run holds it; the message names its host, pid and command.
            OutputDirError: the folder is a file (or under one), or cannot be written.
        """
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise self._unusable(e) from None
        text = json.dumps(self.owner, indent=1)
        for _ in range(20):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                holder = self._read_settled()
                if holder is None:
                    continue  # released meanwhile
                reason = self._stale_reason(holder)
                if reason is None:
                    raise OutputDirLocked(
                        f"OUTPUT_DIR {self.folder} is in use by another run "
                        f"(host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, "
                        f"started {holder.get('started', '?')}: {holder.get('command', '?')}). "
                        "Wait for it to finish, set another OUTPUT_DIR, or delete "
                        f"{self.path} if that run is gone"
                    ) from None
                if reason != "this process":
                    logger.warning(
                        "taking over the stale lock %s of host %s, pid %s: %s",
                        self.path,
                        holder.get("host"),
                        holder.get("pid"),
                        reason,
                    )
                # Rename first: of two runs taking over the same stale lock, one rename wins.
                grave = self.path.with_name(f".{LOCK_NAME}.{self.owner['pid']}.stale")
                with contextlib.suppress(FileNotFoundError):
                    os.replace(self.path, grave)
                    grave.unlink()
                continue
            except OSError as e:
                raise self._unusable(e) from None
            with os.fdopen(fd, "w") as f:
                f.write(text + "\n")
            break
        else:
            raise OutputDirLocked(f"could not take the lock {self.path}: other runs keep taking it")
        self._thread = threading.Thread(
            target=self._refresh, name="bitdet-output-lock", daemon=True
        )
        self._thread.start()
        _HELD.append(self)
        return self

    def _refresh(self) -> None:
        while not self._stop.wait(_REFRESH_S):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def release(self) -> None:
        """Remove the lock if this process still holds it."""
        self._stop.set()
        holder = self._read()
        if (
            holder
            and holder.get("host") == self.owner["host"]
            and holder.get("pid") == self.owner["pid"]
        ):
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        if self in _HELD:
            _HELD.remove(self)


def acquire_output_lock(folder: Union[str, os.PathLike]) -> OutputDirLock:
    """Lock ``folder`` for this run (released by :func:`release_output_locks` or at exit)."""
    return OutputDirLock(folder).acquire()


def release_output_locks() -> None:
    """Release every output lock that this process holds."""
    for lock in list(_HELD):
        lock.release()


atexit.register(release_output_locks)
