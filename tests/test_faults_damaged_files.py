"""Families 2 and 3 of the faults: no instant at which a kill loses a finished cell's work (its resume state stays
until the result is stored), and damaged files that are detected, said in one line, set aside, and recovered from by
the next run on its own: a checkpoint cut short or changed, a best.pt that cannot be read, a dataset cache whose
files were cut or changed after it was prepared."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import warnings

import numpy as np
import pytest
import torch
from user_faults import TINY, bench, exported, fault_plugin, run_main, write_grid

from bench import checkpoints

GRID = TINY.replace("train_size = 8", "train_size = 16").replace("epochs = 1", "epochs = 3")
SAME = ("best_miou", "final_miou", "confusion_matrix", "test_miou", "test_confusion_matrix", "test_epoch")


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The grid run without a fault: the numbers every recovered run must end with."""
    folder = tmp_path_factory.mktemp("straight")
    write_grid(folder, GRID)
    assert bench("run", "--grid", "grid.toml", "--out", "runs", cwd=folder).returncode == 0
    with sqlite3.connect(folder / "runs" / "results.sqlite") as db:
        (metrics,) = db.execute("SELECT metrics FROM cells").fetchone()
    return json.loads(metrics)


def cell_folder(out):
    (folder,) = (path for path in (out / "checkpoints").iterdir() if path.is_dir())
    return folder


def the_cell(capsys, out):
    (cell,) = json.loads(exported(capsys, out))
    return cell


def killed_after_epoch(tmp_path, epoch):
    """The grid killed (SIGKILL) right after its cell's resume state of ``epoch`` was written."""
    write_grid(tmp_path, GRID)
    plugin = fault_plugin(tmp_path, "bench.checkpoints:save_resume_state", "SIGKILL", "after", call=epoch)
    result = bench("run", "--grid", "grid.toml", "--out", "runs", "--plugin", str(plugin), cwd=tmp_path)
    assert result.returncode == -9
    return cell_folder(tmp_path / "runs")


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_kill_while_the_finished_cell_is_stored_never_makes_the_rerun_train_it(tmp_path, capsys, straight, when):
    """Killed just before the result is written, the rerun stores it from the resume state without a step; just
    after, the rerun finds it finished and removes the resume state left behind."""
    write_grid(tmp_path, GRID)
    plugin = fault_plugin(tmp_path, "bench.store:ResultStore.finish", "SIGKILL", when)
    assert bench("run", "--grid", "grid.toml", "--out", "runs", "--plugin", str(plugin), cwd=tmp_path).returncode == -9
    killed = the_cell(capsys, tmp_path / "runs")
    assert killed["status"] == ("running" if when == "before" else "done")
    rerun = bench("run", "--grid", "grid.toml", "--out", "runs", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    said = " ".join(rerun.stdout.split())
    assert ("resuming after epoch 3" if when == "before" else "1 already finished, 0 to run") in said
    cell = the_cell(capsys, tmp_path / "runs")
    assert cell["history"] == killed["history"]  # the same epochs, times included: none trained again
    assert {key: cell["metrics"][key] for key in SAME} == {key: straight[key] for key in SAME}
    assert sorted(p.name for p in cell_folder(tmp_path / "runs").iterdir()) == ["best.pt"]


@pytest.mark.parametrize("damage", ["cut short", "a changed byte", "emptied"])
def test_a_damaged_last_pt_is_set_aside_and_the_cell_resumes_from_the_one_before(tmp_path, capsys, straight, damage):
    folder = killed_after_epoch(tmp_path, 2)
    last = folder / "last.pt"
    data = bytearray(last.read_bytes())
    if damage == "cut short":
        data = data[:len(data) // 2]
    elif damage == "a changed byte":
        data[len(data) // 2] ^= 0xFF
    else:
        data = bytearray()
    last.write_bytes(bytes(data))
    rerun = bench("run", "--grid", "grid.toml", "--out", "runs", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    said = " ".join(rerun.stdout.split())
    assert f"{last} is damaged" in said and "set aside as last.pt.damaged; resuming after epoch 1" in said
    assert (folder / "last.pt.damaged").read_bytes() == bytes(data)  # kept for whoever wants to look at it
    cell = the_cell(capsys, tmp_path / "runs")
    assert cell["status"] == "done" and [h["epoch"] for h in cell["history"]] == [1, 2, 3]
    assert {key: cell["metrics"][key] for key in SAME} == {key: straight[key] for key in SAME}


def test_with_both_resume_states_damaged_the_cell_starts_again_and_ends_the_same(tmp_path, capsys, straight):
    folder = killed_after_epoch(tmp_path, 2)
    for name in ("last.pt", "previous.pt"):
        (folder / name).write_bytes((folder / name).read_bytes()[:100])
    rerun = bench("run", "--grid", "grid.toml", "--out", "runs", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert " ".join(rerun.stdout.split()).count("training from the first epoch") == 2
    cell = the_cell(capsys, tmp_path / "runs")
    assert {key: cell["metrics"][key] for key in SAME} == {key: straight[key] for key in SAME}


def test_a_resume_state_of_the_earlier_layout_resumes_with_the_best_pt_beside_it(tmp_path, capsys, straight):
    """An interrupted run of an earlier version left last.pt without the best epoch's weights, which were in
    best.pt: the cell resumes from them, and ends as a run never interrupted."""
    folder = killed_after_epoch(tmp_path, 2)
    state = checkpoints.read(folder / "last.pt")
    best = state.pop("best")
    torch.save(state, folder / "last.pt")
    torch.save({"cell_id": state["cell_id"], "epoch": best["epoch"], "miou": best["miou"], "model": best["model"]},
               folder / "best.pt")
    (folder / "previous.pt").unlink()
    rerun = bench("run", "--grid", "grid.toml", "--out", "runs", cwd=tmp_path)
    assert rerun.returncode == 0 and rerun.stderr == "", rerun.stderr
    cell = the_cell(capsys, tmp_path / "runs")
    assert [h["resumed"] for h in cell["history"]] == [False, False, True]
    assert {key: cell["metrics"][key] for key in SAME} == {key: straight[key] for key in SAME}


def test_every_single_byte_change_and_cut_of_a_checkpoint_is_caught_or_changes_nothing(tmp_path):
    """Checked against the state that was saved: each byte of a small checkpoint flipped in turn (two bits), and
    the file cut at every length; ``read`` either refuses it as damaged or gives back exactly what was saved."""
    layer = torch.nn.Conv2d(2, 3, 1)
    state = {"cell_id": "abc", "epoch": 2, "history": [{"miou": 0.5, "resumed": False}], "model": layer.state_dict()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    original, path = buffer.getvalue(), tmp_path / "x.pt"
    for length in range(len(original)):  # cut anywhere: never taken for a checkpoint
        path.write_bytes(original[:length])
        with pytest.raises(checkpoints.DamagedCheckpoint):
            checkpoints.read(path)
    caught = 0
    for position in range(len(original)):
        for bit in (0x01, 0x80):
            changed = bytearray(original)
            changed[position] ^= bit
            path.write_bytes(bytes(changed))
            try:
                loaded = checkpoints.read(path)
            except checkpoints.DamagedCheckpoint:
                caught += 1
                continue
            # a changed header byte that nothing reads (a timestamp, padding): what is loaded is what was saved
            assert loaded["history"] == state["history"] and loaded["cell_id"] == "abc" and loaded["epoch"] == 2
            assert all(torch.equal(loaded["model"][k], v) for k, v in state["model"].items())
    assert caught > len(original)  # most changes are caught: every byte of the data is under a CRC


def test_a_best_pt_that_cannot_be_read_is_named_by_show_not_drawn(tmp_path, capsys):
    grid = write_grid(tmp_path)
    out = tmp_path / "runs"
    assert run_main(capsys, "run", "--grid", str(grid), "--out", str(out))[0] == 0
    (best,) = out.glob("checkpoints/*/best.pt")
    best.write_bytes(best.read_bytes()[:-10])
    code, stdout, err = run_main(capsys, "show", "--grid", str(grid), "--out", str(out), "--tiles", "1")
    assert code == 0, err
    assert "not drawn" in stdout and "no whole best.pt" in " ".join(stdout.split())


@pytest.mark.parametrize("damage", ["cut short", "changed in place"])
def test_a_damaged_dataset_cache_is_said_removed_and_prepared_again(landcoverai_archive, tmp_path, damage):
    args = ["prepare", "landcoverai", "--root", str(landcoverai_archive[0]), "--size", "64", "--cache-dir",
            str(tmp_path)]
    assert bench(*args, cwd=tmp_path).returncode == 0
    (cache,) = (path for path in tmp_path.iterdir() if path.is_dir())
    images = cache / "train-images.npy"
    good = np.load(images).copy()
    with open(images, "r+b") as f:
        if damage == "cut short":
            f.truncate(images.stat().st_size - 4096)
        else:
            f.seek(-100, os.SEEK_END)
            f.write(b"\x00" * 100)
    result = bench(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith(f"warning: the cache in {cache} is damaged (train-images.npy ")
    assert "preparing it again" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "ready" in result.stdout and np.array_equal(np.load(images), good)
    assert bench(*args, cwd=tmp_path).stderr == ""  # whole again: nothing to say


def test_bench_prepare_reads_every_byte_where_a_run_trusts_sizes_and_times(landcoverai_archive, tmp_path):
    """A changed byte whose file keeps its size and modification time: opening for a run does not read every byte
    to find it; `bench prepare`, the command that says "ready", does."""
    root = str(landcoverai_archive[0])
    args = ["prepare", "landcoverai", "--root", root, "--size", "64", "--cache-dir", str(tmp_path)]
    assert bench(*args, cwd=tmp_path).returncode == 0
    (cache,) = (path for path in tmp_path.iterdir() if path.is_dir())
    masks = cache / "val-masks.npy"
    stat = masks.stat()
    with open(masks, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 1]))
    os.utime(masks, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    from registry.datasets import landcoverai
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # trusted as it is: same size, same time, no warning
        landcoverai.prepare(root, 64, cache_dir=tmp_path)
    result = bench(*args, cwd=tmp_path)
    assert result.returncode == 0 and "val-masks.npy has changed since it was written" in result.stderr
