"""Locks on folders (``flock``: the system releases a process's locks when it dies, however it dies).

- :func:`folder_lock`, exclusive: for writers that must be alone in a folder (a results store, a cache);
- :func:`writers_lock`, shared, with :func:`wait_for_writers`, exclusive and brief: every process that may write in a
  folder holds the first while it does, and whoever starts a new run in the folder waits with the second until no
  process of an earlier run (a worker whose driver was killed) is left writing there.
"""

from __future__ import annotations

import fcntl
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from registry.errors import UserError

WRITERS_LOCK = ".writers.lock"


def _open_lock(folder: Path, name: str) -> IO:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return open(folder / name, "a")
    except OSError as err:  # a file where the folder should be, a read-only disk, no permission
        raise UserError(f"cannot write in {folder}: {err.strerror or err}") from None


@contextmanager
def folder_lock(folder: Path, busy_message: str, wait: bool = False) -> Iterator[None]:
    """Hold ``folder/.lock`` (creating the folder). If another process holds it: raise UserError(busy_message), or,
    with ``wait``, say busy_message on stderr and block until that process lets go (or dies)."""
    with _open_lock(folder, ".lock") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise UserError(busy_message) from None
            print(busy_message, file=sys.stderr, flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@contextmanager
def writers_lock(folder: Path) -> Iterator[None]:
    """Hold a shared lock on ``folder/.writers.lock`` while writing in ``folder``; many processes can at once."""
    with _open_lock(folder, WRITERS_LOCK) as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)
        yield


def wait_for_writers(folder: Path, timeout: float, announce: str) -> None:
    """Return once no process holds :func:`writers_lock` on ``folder``: at once if none does, else after saying
    ``announce`` on stderr and waiting up to ``timeout`` seconds (then a UserError)."""
    with _open_lock(folder, WRITERS_LOCK) as lock:
        deadline = None
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return  # closing the file lets go at once
            except BlockingIOError:
                if deadline is None:
                    print(announce, file=sys.stderr, flush=True)
                    deadline = time.monotonic() + timeout
                elif time.monotonic() > deadline:
                    raise UserError(f"a process of an earlier run still writes in {folder} after {timeout:.0f} s; "
                                    "stop it (see `fuser -v` on its .writers.lock) and run the command again") from None
                time.sleep(0.1)
