"""What the fault tests (``test_faults_*.py``) share: the command line driven as a user drives it, the promise checked
(one line on stderr, the exit code, no traceback), the store's content compared through ``bench export``, and ways to
inject faults: read-only and full disks (root only, else skipped), and kills at chosen points (through a plugin that
wraps a function of the harness)."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from grids import synthetic_grid

from bench.cli import main

TINY = synthetic_grid()


def bench(*args: str, cwd: Path, timeout: float = 300, **options) -> subprocess.CompletedProcess:
    """``bench ARGS`` in a new process, as a user types it."""
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, check=False, **options)


def start(*args: str, cwd: Path, output: bool = True) -> subprocess.Popen:
    """``bench ARGS`` started in a new process that takes Ctrl-C as a terminal's foreground job does; its output is
    read back unless ``output`` is false (then it goes nowhere, and waiting for the process waits for it alone, not
    for whichever of its children still holds its output pipes)."""
    where = subprocess.PIPE if output else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, "-m", "bench", *args], cwd=cwd, stdout=where, stderr=where, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    """``bench ARGS`` in this process: (exit code, stdout, stderr). Anything that escapes ``main`` fails the test,
    as a traceback would fail the promise."""
    capsys.readouterr()
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line(code: int, err: str, expected_code: int = 2, *fragments: str) -> str:
    """Assert the promise: exit code ``expected_code``, exactly one line on stderr, starting with ``error:`` (or
    ``interrupted`` for 130), holding every fragment, and no traceback; returns the line."""
    lines = err.strip().splitlines()
    assert code == expected_code, (code, err[-3000:])
    assert "Traceback" not in err, err[-3000:]
    assert len(lines) == 1, err[-3000:]
    assert lines[0].startswith("interrupted" if expected_code == 130 else "error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


class Stop(Exception):
    """Raised by :func:`stop_after`: a training stopped from within, as a kill would stop it."""


def stop_after(epochs: int):
    """An ``on_epoch`` callback of :func:`bench.train.train_cell` that stops the training after ``epochs`` epochs."""
    def on_epoch(history):
        if len(history) == epochs:
            raise Stop
    return on_epoch


def write_grid(folder: Path, text: str | bytes = TINY, name: str = "grid.toml") -> Path:
    path = folder / name
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


def exported(capsys, out: Path) -> str:
    """Every stored field of every cell, through ``bench export --all --format json``."""
    code, text, err = run_main(capsys, "export", "--out", str(out), "--all", "--format", "json")
    assert code == 0, err
    return text


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def folder_state(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with its SHA-256: what must not change."""
    return {str(p.relative_to(folder)): digest(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True, check=False).returncode == 0


@contextmanager
def read_only(folder: Path) -> Iterator[Path]:
    """``folder`` made read-only for everyone, root included (a read-only bind mount); skipped where this process
    may not mount."""
    if os.geteuid() != 0 or not _mount("--bind", str(folder), str(folder)):
        pytest.skip("needs root and mount to make a folder read-only for root")
    try:
        if not _mount("-o", "remount,bind,ro", str(folder)):
            pytest.skip("cannot remount read-only here")
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, check=False)


@contextmanager
def small_disk(folder: Path, size: str) -> Iterator[Path]:
    """A file system of ``size`` (``300k``) mounted on ``folder`` (a tmpfs), to fill up; skipped where this process
    may not mount."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or not _mount("-t", "tmpfs", "-o", f"size={size}", f"faults-{uuid.uuid4().hex[:8]}",
                                       str(folder)):
        pytest.skip("needs root and mount for a small file system")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, check=False)


def copy_store(source: Path, target: Path) -> Path:
    """A copy of the output folder ``source`` (its store and checkpoints) at ``target``."""
    shutil.copytree(source, target)
    return target


def fault_plugin(folder: Path, target: str, signal_name: str, when: str = "before", call: int = 1) -> Path:
    """A plugin module (for ``--plugin``) that sends this process ``signal_name`` (SIGINT, SIGKILL) at the
    ``call``-th call of ``target`` (``module:function`` or ``module:Class.method``), ``before`` or ``after`` the
    call: a fault injected at a chosen point of the harness, with nothing of it in the harness's code."""
    module, _, attribute = target.partition(":")
    owner, _, name = attribute.rpartition(".")
    path = folder / f"fault_{uuid.uuid4().hex[:8]}.py"
    path.write_text(f"""\
import functools, importlib, os, signal
module = importlib.import_module({module!r})
owner = getattr(module, {owner!r}) if {owner!r} else module
original = getattr(owner, {name!r})
calls = [0]

@functools.wraps(original)
def wrapped(*args, **kwargs):
    calls[0] += 1
    if calls[0] == {call} and {when!r} == "before":
        os.kill(os.getpid(), signal.{signal_name})
    result = original(*args, **kwargs)
    if calls[0] == {call} and {when!r} == "after":
        os.kill(os.getpid(), signal.{signal_name})
    return result

setattr(owner, {name!r}, wrapped)
""")
    return path


def refused_leaving_no_complete_cache(prepare, root: Path, kwargs: dict, texts: list[str], while_reading: bool,
                                      cache: Path, dataset: str) -> None:
    """``prepare(root, **kwargs)`` of damaged files raises one line holding each of ``texts``; when the damage is
    only found while reading pixels (``while_reading``), no cache under ``cache`` still claims to be complete; and
    the dataset is never served from a cache of the damaged files."""
    import registry
    from registry.datasets.tile_cache import MANIFEST
    from registry.errors import UserError

    with pytest.raises(UserError) as caught:
        prepare(root, **kwargs)
    message = str(caught.value)
    assert "\n" not in message, message
    for text in texts:
        assert text in message, message
    if while_reading:  # the cache was being rewritten: its completeness mark is gone
        assert not list(cache.glob(f"*/{MANIFEST}"))
    with pytest.raises(UserError):
        registry.create_dataset(dataset, root=str(root), **kwargs)
