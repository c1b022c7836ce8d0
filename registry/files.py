"""Writing files so that nothing is ever half-written, and checking before any work that a path can be written.

Every file the harness writes for a user (results, checkpoints, caches' records, the leaderboard, its plots, exports)
is written by :func:`write_atomically`: a temporary file beside the target, synced to the disk, renamed over it. A
kill, a Ctrl-C or a full disk at any moment leaves the old file or the new one, never a mix, and no temporary file.
"""

from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path

from registry.errors import UserError


def write_atomically(path: Path, data: bytes | bytearray | memoryview | str) -> None:
    """Put ``data`` (text is written as UTF-8) at ``path`` atomically; its folder must exist."""
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        with open(temporary, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)  # a full disk must not stay full of a half-written file
        raise


@functools.cache
def _sync_file_range():
    """Linux's sync_file_range(2), which Python's os module lacks; None elsewhere."""
    function = getattr(ctypes.CDLL(None, use_errno=True), "sync_file_range", None)
    if function is not None:
        function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return function


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing ``length`` bytes at ``offset`` of ``fd`` to the disk now, without waiting
    (SYNC_FILE_RANGE_WRITE), so that a later fsync has little left to wait for: a large file written piece by piece
    is then on the disk almost as soon as its last piece. Where the call does not exist, nothing happens (the fsync
    does it all); it promises nothing on its own."""
    function = _sync_file_range()
    if function is not None:
        function(fd, offset, length, 2)  # SYNC_FILE_RANGE_WRITE; an error only means the fsync does the work


def folder_problem(folder: Path) -> str | None:
    """Why ``folder`` cannot be created or written in, or None when it can (nothing is created)."""
    folder = Path(folder)
    if folder.exists():
        if not folder.is_dir():
            return f"{folder} is a file, not a folder"
        if not os.access(folder, os.W_OK | os.X_OK):
            return f"{folder} is not writable{_read_only(folder)}"
        return None
    ancestor = folder.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"{folder} cannot be made: {ancestor} is a file, not a folder"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return f"{folder} cannot be made: {ancestor} is not writable{_read_only(ancestor)}"
    return None


def file_problem(path: Path) -> str | None:
    """Why a file cannot be written at ``path`` (made or replaced), or None when it can (nothing is created)."""
    path = Path(path)
    if path.is_dir():
        return f"{path} is a folder, not a file"
    return folder_problem(path.parent)


def require_writable_folder(folder: Path, what: str) -> None:
    problem = folder_problem(folder)
    if problem is not None:
        raise UserError(f"{what}: {problem}")


def require_writable_file(path: Path, what: str) -> None:
    problem = file_problem(path)
    if problem is not None:
        raise UserError(f"{what}: {problem}")


def _read_only(path: Path) -> str:
    """' (a read-only disk)' when the file system holding ``path`` is mounted read-only."""
    try:
        return " (a read-only disk)" if os.statvfs(path).f_flag & os.ST_RDONLY else ""
    except OSError:
        return ""
