"""Family 8 of the faults: Ctrl-C wherever it comes (while Python imports torch, while a cell trains, while the result
is stored, while the leaderboard and its plots are written, twice in a row) ends in one line and exit code 130, with
nothing half-written, and the same command resumes without training a finished cell again."""

from __future__ import annotations

import json
import shutil
import signal
import time

import pytest
from user_faults import TINY, bench, exported, fault_plugin, folder_state, one_line, start, write_grid

from bench.entry import CtrlC

STARTUP = {  # commands whose start-up (imports, grid, dataset) a Ctrl-C may land in
    "run": ["run", "--grid", "grid.toml", "--out", "runs"],
    "dry-run": ["run", "--grid", "grid.toml", "--out", "runs", "--dry-run"],
    "list": ["list", "archs"],
    "export": ["export", "--out", "runs"],
    "leaderboard": ["leaderboard", "--out", "runs"],
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A folder with the tiny grid and its finished store."""
    folder = tmp_path_factory.mktemp("interrupts")
    write_grid(folder)
    assert bench("run", "--grid", "grid.toml", "--out", "runs", cwd=folder).returncode == 0
    return folder


@pytest.mark.parametrize("command", STARTUP)
def test_ctrl_c_during_start_up_is_one_line_and_130(finished, command):
    """At several moments of the first second or two (importing torch and numpy, reading the grid): every one that
    lands before the command ends gives the same line."""
    interrupted = 0
    for delay in (0.15, 0.4, 0.8, 1.4):
        process = start(*STARTUP[command], cwd=finished)
        time.sleep(delay)
        if process.poll() is not None:  # it ended before the signal: nothing to test at this delay
            process.communicate()
            continue
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=120)
        if process.returncode == 0 and not err:  # the signal came as it was exiting, its work done: not a fault
            continue
        one_line(process.returncode, err, 130)
        interrupted += 1
    assert interrupted >= 2, "the command ended before most of the signals"


def test_a_deferred_ctrl_c_is_noted_and_only_a_second_one_raises():
    """The start-up imports defer the first Ctrl-C (raised inside torch's C++ bindings it would abort the process);
    a second raises, for an import that hangs; everywhere else the first raises; and each puts back the handler it
    found (Python's own, or SIG_IGN in a process started in the background of a shell without job control)."""
    before = signal.getsignal(signal.SIGINT)
    with CtrlC(defer=True) as ctrl_c:
        signal.raise_signal(signal.SIGINT)
        assert ctrl_c.seen
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt), CtrlC() as ctrl_c:
        signal.raise_signal(signal.SIGINT)
    assert ctrl_c.seen and signal.getsignal(signal.SIGINT) is before


def test_ctrl_c_twice_during_training_is_one_line_and_the_rerun_resumes(tmp_path):
    write_grid(tmp_path, TINY.replace("train_size = 8", "train_size = 256").replace("epochs = 1", "epochs = 40"))
    process = start("run", "--grid", "grid.toml", "--out", "runs", cwd=tmp_path)
    deadline = time.monotonic() + 120
    while not list((tmp_path / "runs" / "checkpoints").glob("*/last.pt")) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    one_line(process.returncode, err, 130, "run the same command again to resume")


@pytest.mark.parametrize("target", ["bench.leaderboard:render", "bench.plots:write_atomically",
                                    "bench.leaderboard:write_atomically"])
def test_ctrl_c_while_the_leaderboard_is_written_leaves_the_old_one_or_the_new_one(finished, tmp_path, target):
    """A run whose cells are all finished only regenerates the leaderboard and its plots: a Ctrl-C in the middle
    (before a file is replaced, or just after) leaves every file whole, and no temporary file behind."""
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "grid.toml").write_text((finished / "grid.toml").read_text())
    shutil.copytree(finished / "runs", folder / "runs")
    before = folder_state(folder / "runs")
    for when in ("before", "after"):
        plugin = fault_plugin(folder, target, "SIGINT", when)
        result = bench("run", "--grid", "grid.toml", "--out", "runs", "--plugin", str(plugin), cwd=folder)
        one_line(result.returncode, result.stderr, 130)
        after = folder_state(folder / "runs")
        assert not [name for name in after if name.endswith(".tmp")]
        assert set(after) == set(before)  # nothing missing, nothing new
        for name in ("results.sqlite",):
            assert after[name] == before[name]


def test_ctrl_c_while_a_finished_cell_is_stored_keeps_its_work(tmp_path, capsys):
    """Interrupted just before the result is written: the cell is not done in the store, but its resume state
    holds every epoch, and the rerun stores it without a training step."""
    write_grid(tmp_path, TINY.replace("epochs = 1", "epochs = 2"))
    plugin = fault_plugin(tmp_path, "bench.store:ResultStore.finish", "SIGINT")
    result = bench("run", "--grid", "grid.toml", "--out", "runs", "--plugin", str(plugin), cwd=tmp_path)
    one_line(result.returncode, result.stderr, 130)
    (state,) = json.loads(exported(capsys, tmp_path / "runs"))
    assert state["status"] == "interrupted" and len(state["history"]) == 2
    result = bench("run", "--grid", "grid.toml", "--out", "runs", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "resuming after epoch 2" in " ".join(result.stdout.split())
    (stored,) = json.loads(exported(capsys, tmp_path / "runs"))
    assert stored["status"] == "done" and stored["history"] == state["history"]  # the same epochs, not retrained
