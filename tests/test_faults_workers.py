"""Family 1 of the faults: the workers of a run whose driver is killed end with it, and a new run never shares the
output folder with a process of an earlier one: it waits for the last of them to let go of the checkpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from user_faults import TINY, bench, exported, one_line, run_main, start, write_grid

from bench import outputs
from registry.locks import WRITERS_LOCK

GRID = (TINY.replace("train_size = 8", "train_size = 64").replace("epochs = 1", "epochs = 3")
        .replace("fractions = [0.5]", "fractions = [0.5]\nseeds = [0, 1, 2]"))


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for a parent to reap it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


QUIET_EVALUATION = """\
import time
from pathlib import Path
import bench.train
original = bench.train.evaluate

def evaluate(*args, **kwargs):  # a worker busy for long without a word to its driver (a long evaluation, say)
    Path(__file__).with_suffix(".evaluating").touch()
    time.sleep(30)
    return original(*args, **kwargs)

bench.train.evaluate = evaluate
"""


def test_workers_end_with_their_killed_driver_and_the_rerun_loses_nothing(tmp_path, capsys):
    """The workers are in the middle of an evaluation, silent (no pipe to find broken) when the driver is killed:
    they end within a second or two all the same."""
    write_grid(tmp_path, GRID)
    plugin = tmp_path / "quiet_evaluation.py"
    plugin.write_text(QUIET_EVALUATION)
    driver = start("run", "--grid", "grid.toml", "--devices", "cpu,cpu", "--out", "runs", "--plugin", str(plugin),
                   cwd=tmp_path, output=False)
    deadline = time.monotonic() + 240
    while not plugin.with_suffix(".evaluating").exists():
        assert driver.poll() is None and time.monotonic() < deadline, "no cell reached its first evaluation"
        time.sleep(0.05)
    workers = children(driver.pid)
    assert len(workers) >= 2
    driver.kill()  # no clean-up at all, as when a node's driver process is killed
    driver.wait()
    deadline = time.monotonic() + 5
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    survivors = [pid for pid in workers if alive(pid)]
    for pid in survivors:  # do not leave them to the next test
        os.kill(pid, signal.SIGKILL)
    assert not survivors, "workers outlived their driver"

    before = {cell["cell_id"]: cell for cell in json.loads(exported(capsys, tmp_path / "runs"))}
    rerun = bench("run", "--grid", "grid.toml", "--devices", "cpu,cpu", "--out", "runs", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    after = {cell["cell_id"]: cell for cell in json.loads(exported(capsys, tmp_path / "runs"))}
    assert len(after) == 3 and all(cell["status"] == "done" for cell in after.values())
    for cell_id, cell in before.items():
        if cell["status"] == "done":
            assert after[cell_id] == cell


def descendants(pid: int) -> list[int]:
    found = []
    for child in children(pid):
        found += [child, *descendants(child)]
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except FileNotFoundError:
        return ""


def test_ray_tasks_end_when_their_driver_is_killed(tmp_path):
    """The local cluster a run starts is the driver's: killed, its tasks stop too (Ray leaves two agents of its own
    behind, which write nothing: they are ended here, not asserted on)."""
    pytest.importorskip("ray")
    write_grid(tmp_path, GRID)
    plugin = tmp_path / "quiet_evaluation.py"
    plugin.write_text(QUIET_EVALUATION)
    environment = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    driver = subprocess.Popen([sys.executable, "-m", "bench", "run", "--grid", "grid.toml", "--executor", "ray",
                               "--out", "runs", "--plugin", str(plugin)], cwd=tmp_path, env=environment,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not plugin.with_suffix(".evaluating").exists():
        assert driver.poll() is None and time.monotonic() < deadline, "no task reached its first evaluation"
        time.sleep(0.1)
    family = descendants(driver.pid)
    tasks = [pid for pid in family if cmdline(pid).startswith("ray::_run_task")]
    assert tasks
    driver.kill()
    driver.wait()
    deadline = time.monotonic() + 20
    while any(alive(pid) for pid in tasks) and time.monotonic() < deadline:
        time.sleep(0.2)
    survivors = [pid for pid in tasks if alive(pid)]
    for pid in family:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
    assert not survivors, "Ray tasks outlived their driver"


HOLDER = """\
import sys, time
from pathlib import Path
from registry.locks import writers_lock
with writers_lock(Path(sys.argv[1])):
    print("holding", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def hold_writers_lock(folder: Path, seconds: float) -> subprocess.Popen:
    """A process of an earlier run, still writing checkpoints in ``folder`` for ``seconds``."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), str(seconds)], stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline().strip() == "holding"
    return holder


def test_a_run_waits_for_a_process_of_an_earlier_run_still_writing_its_checkpoints(tmp_path):
    write_grid(tmp_path)
    checkpoints = tmp_path / "runs" / "checkpoints"
    holder = hold_writers_lock(checkpoints, 10)  # longer than the run takes to start
    result = bench("run", "--grid", "grid.toml", "--out", "runs", cwd=tmp_path)
    holder.wait()
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == f"waiting for the workers of an earlier run to stop writing in {checkpoints}"
    assert (checkpoints / WRITERS_LOCK).exists()


def test_a_process_that_never_lets_go_is_one_line(tmp_path, capsys, monkeypatch):
    write_grid(tmp_path)
    checkpoints = tmp_path / "runs" / "checkpoints"
    holder = hold_writers_lock(checkpoints, 60)
    monkeypatch.setattr(outputs, "STRAY_WRITERS_TIMEOUT", 0.5)
    try:
        code, _, err = run_main(capsys, "run", "--grid", str(tmp_path / "grid.toml"), "--out", str(tmp_path / "runs"))
    finally:
        holder.kill()
    lines = err.strip().splitlines()
    assert lines[0].startswith("waiting for the workers of an earlier run")
    one_line(code, "\n".join(lines[1:]), 2, f"a process of an earlier run still writes in {checkpoints}")
