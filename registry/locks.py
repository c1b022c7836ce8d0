"""An exclusive, non-blocking lock on a folder, for writers that must be alone in it (a results store, a cache)."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from registry.errors import UserError


@contextmanager
def folder_lock(folder: Path, busy_message: str) -> Iterator[None]:
    """Hold ``folder/.lock`` (creating the folder); if another process holds it, raise UserError(busy_message)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(busy_message) from None
        yield
