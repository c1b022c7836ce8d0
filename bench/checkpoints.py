"""Checkpoint files that neither a kill, a full disk nor a damaged copy can make the harness trust wrongly.

A file is written atomically (:func:`registry.files.write_atomically`): at every instant the target is the old
complete file or the new complete one. ``torch.save`` writes a zip archive whose central directory, at its end,
records each member's size and CRC-32 checksum, so the file carries its own checksums from the moment it is
written: a file cut short (a disk that filled up, an interrupted copy) has no central directory, and a changed byte
of the pickled state or of a tensor fails its member's CRC. :func:`read` checks both before unpickling anything; a
changed byte elsewhere (a header's padding) either changes nothing that is loaded or makes the archive unreadable.

A cell's folder ``<out>/checkpoints/<cell id>/`` holds, while the cell is unfinished, ``last.pt`` (the state after
its last finished epoch: weights, optimizer, schedule, history, and the best epoch's weights) and ``previous.pt``
(the state one epoch earlier, to resume from when ``last.pt`` is damaged); once it is finished, ``best.pt`` (the
weights of its best validation epoch). A damaged file is renamed ``<name>.damaged``, out of the way but kept for
whoever wants to look at it.
"""

from __future__ import annotations

import errno
import io
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from registry.files import write_atomically

LAST, PREVIOUS, BEST = "last.pt", "previous.pt", "best.pt"
RESUME_FILES = (LAST, PREVIOUS)  # newest first


class DamagedCheckpoint(Exception):
    """A checkpoint file that is not whole: cut short, or with bytes that fail their checksum."""


def write(state: dict[str, Any], path: Path) -> None:
    """Save ``state`` at ``path`` atomically. The whole file is serialised in memory first, so that a full disk
    raises ``OSError`` (ENOSPC) from the write rather than whatever torch's zip writer makes of it."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_atomically(path, buffer.getbuffer())


def check(path: Path) -> None:
    """Raise :class:`DamagedCheckpoint` unless ``path`` is a whole zip archive whose members all match the sizes
    and CRC-32 checksums its writer recorded."""
    try:
        with zipfile.ZipFile(path) as archive:
            failing = archive.testzip()
    except (zipfile.BadZipFile, EOFError, ValueError) as err:
        raise DamagedCheckpoint(f"{path} is damaged (not a whole checkpoint: {err})") from None
    # A changed header byte: flags that torch never writes (encryption: RuntimeError), a compression method it never
    # uses (NotImplementedError), an offset outside the file (EINVAL); EIO is the disk's own report of damage.
    except (RuntimeError, NotImplementedError) as err:
        raise DamagedCheckpoint(f"{path} is damaged ({err})") from None
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.EIO):
            raise
        raise DamagedCheckpoint(f"{path} is damaged ({err.strerror})") from None
    if failing is not None:
        raise DamagedCheckpoint(f"{path} is damaged ({failing} fails its CRC-32 checksum)")


def read(path: Path, map_location: Any = "cpu") -> dict[str, Any]:
    """The state saved at ``path``, after :func:`check`; only tensors and plain Python values are unpickled."""
    check(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, ValueError) as err:  # whole and checksummed, yet not a state torch can read
        raise DamagedCheckpoint(f"{path} is damaged (torch cannot read it: {err})") from None


def set_aside(path: Path) -> Path:
    """Rename a damaged file to ``<name>.damaged`` (replacing an older one) and return the new path."""
    target = path.with_name(path.name + ".damaged")
    os.replace(path, target)
    return target


def save_resume_state(state: dict[str, Any], folder: Path) -> None:
    """Write ``last.pt``; the one it replaces becomes ``previous.pt``. A kill between the two renames leaves
    ``previous.pt`` holding the newest finished epoch, which :func:`load_resume_state` then takes."""
    folder.mkdir(parents=True, exist_ok=True)
    last = folder / LAST
    if last.exists():
        os.replace(last, folder / PREVIOUS)
    write(state, last)


def load_resume_state(folder: Path, cell_id: str, map_location: Any,
                      warn: Callable[[str], None]) -> dict[str, Any] | None:
    """The newest whole resume state of cell ``cell_id`` in ``folder`` (``last.pt``, else ``previous.pt``), or None
    when there is none. A damaged file is set aside and reported through ``warn``, so that the next attempt does not
    meet it again; a state of another cell (a folder copied by hand) is ignored."""
    damaged, found = [], None
    for name in RESUME_FILES:
        path = folder / name
        if not path.exists():
            continue
        try:
            state = read(path, map_location)
        except DamagedCheckpoint as err:
            damaged.append(f"{err}; set aside as {set_aside(path).name}")
            continue
        if state.get("cell_id") != cell_id:
            continue
        if "best" not in state:  # written before the state kept the best epoch's weights: they are in best.pt
            state["best"] = _older_best(folder, map_location)
            if state["best"] is None:
                damaged.append(f"{path} has no best epoch's weights beside it (no whole best.pt)")
                continue
        found = state
        break
    then = f"resuming after epoch {found['epoch']}" if found else "training from the first epoch"
    for message in damaged:
        warn(f"{message}; {then}")
    return found


def _older_best(folder: Path, map_location: Any) -> dict[str, Any] | None:
    """The best epoch (``epoch``, ``miou``, ``model``) from ``best.pt``, as an interrupted run of an earlier version
    kept it; None when there is no whole one."""
    try:
        state = read(folder / BEST, map_location)
    except (DamagedCheckpoint, FileNotFoundError):
        return None
    return {key: state[key] for key in ("epoch", "miou", "model")}


def remove_resume_state(folder: Path) -> None:
    """Forget a finished cell's resume state (its optimizer state is only needed to resume); ``best.pt`` stays."""
    for name in RESUME_FILES:
        (folder / name).unlink(missing_ok=True)
