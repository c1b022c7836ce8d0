"""An exclusive lock on a folder, for writers that must be alone in it (a results store, a cache)."""

from __future__ import annotations

import fcntl
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from registry.errors import UserError


@contextmanager
def folder_lock(folder: Path, busy_message: str, wait: bool = False) -> Iterator[None]:
    """Hold ``folder/.lock`` (creating the folder). If another process holds it: raise UserError(busy_message), or,
    with ``wait``, say busy_message on stderr and block until that process lets go (or dies: the system releases a
    dead process's lock)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise UserError(busy_message) from None
            print(busy_message, file=sys.stderr, flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield
