"""Family 7 of the faults: paths that cannot be written (a file where a folder should be, a folder under a file, a
read-only disk) are refused in one line before any work, whichever output they are; a disk that fills up in the
middle of a run stops it in one line, with every finished cell kept, and the same command finishes the rest."""

from __future__ import annotations

import json
import shutil

import pytest
from user_faults import TINY, exported, one_line, read_only, run_main, small_disk, write_grid


@pytest.fixture
def place(tmp_path):
    """A folder with a file (``afile``), a folder (``adir``), and a read-only folder (``ro``, mounted on use)."""
    (tmp_path / "afile").write_text("not a folder\n")
    (tmp_path / "adir").mkdir()
    (tmp_path / "ro").mkdir()
    return tmp_path


BAD_OUTPUTS = {  # name -> (option and value, what the line says); "ro/..." needs the read-only mount
    "--out a file": (["--out", "afile"], "--out: {p}/afile is a file, not a folder"),
    "--out under a file": (["--out", "afile/runs"], "--out: {p}/afile/runs cannot be made: {p}/afile is a file"),
    "--out on a read-only disk": (["--out", "ro/runs"], "--out: {p}/ro/runs cannot be made: {p}/ro is not writable"),
    "--leaderboard a folder": (["--leaderboard", "adir"], "--leaderboard: {p}/adir is a folder, not a file"),
    "--leaderboard under a file": (["--leaderboard", "afile/board.md"], "{p}/afile is a file, not a folder"),
    "--leaderboard on a read-only disk": (["--leaderboard", "ro/board.md"], "{p}/ro is not writable"),
}


@pytest.mark.parametrize("case", BAD_OUTPUTS)
def test_an_output_that_cannot_be_written_is_refused_before_any_training(place, capsys, case):
    options, says = BAD_OUTPUTS[case]
    grid = write_grid(place)
    options = [str(place / value) if index % 2 else value for index, value in enumerate(options)]
    argv = ["run", "--grid", str(grid), "--out", str(place / "runs"), *options]
    if "ro" in case.split() or "read-only" in case:
        with read_only(place / "ro"):
            code, _, err = run_main(capsys, *argv)
    else:
        code, _, err = run_main(capsys, *argv)
    one_line(code, err, 2, says.format(p=place))
    assert not (place / "runs" / "results.sqlite").exists()  # refused before the store was made, and before training


@pytest.mark.parametrize("command, option", [(["perf", "--arch", "unet:base_channels=4,depth=3", "--size", "32",
                                               "--batch-size", "2", "--steps", "1", "--repeats", "1"], "--json"),
                                             (["export", "--out", "RUNS"], "--output")])
@pytest.mark.parametrize("target, says", [("adir", "{p}/adir is a folder, not a file"),
                                          ("afile/x.json", "{p}/afile is a file, not a folder")])
def test_perf_and_export_refuse_an_unwritable_file_before_the_work(place, capsys, command, option, target, says):
    (place / "RUNS").mkdir()
    argv = [str(place / "RUNS") if a == "RUNS" else a for a in command]
    code, stdout, err = run_main(capsys, *argv, option, str(place / target))
    one_line(code, err, 2, f"{option}: " + says.format(p=place))
    assert "measuring" not in stdout


def test_a_cache_folder_that_is_a_file_is_one_line(landcoverai_archive, place, capsys):
    code, _, err = run_main(capsys, "prepare", "landcoverai", "--root", str(landcoverai_archive[0]), "--size", "64",
                            "--cache-dir", str(place / "afile"))
    one_line(code, err, 2, str(place / "afile"))


def test_a_disk_that_fills_up_stops_the_run_in_one_line_and_the_rerun_finishes_it(tmp_path, capsys):
    """Three cells on a disk with room for about one: the run stops where the disk is full (the cell in hand is left
    unfinished, not failed); moved to a disk with room, the same command finishes the others and leaves the first
    as it was."""
    grid = write_grid(tmp_path, TINY.replace("fractions = [0.5]", "fractions = [0.5]\nseeds = [0, 1, 2]"))
    disk = tmp_path / "disk"
    with small_disk(disk, "240k"):
        code, _, err = run_main(capsys, "run", "--grid", str(grid), "--out", str(disk / "runs"))
        one_line(code, err, 2, "run the same command again")
        assert "full" in err or "No space left" in err
        moved = tmp_path / "roomy"
        shutil.copytree(disk / "runs", moved, ignore=shutil.ignore_patterns(".*.tmp"))
    before = {cell["cell_id"]: cell for cell in json.loads(exported(capsys, moved))}
    assert any(cell["status"] == "done" for cell in before.values()), "the disk filled before any cell finished"
    assert all(cell["status"] != "failed" for cell in before.values())  # the machine's fault, not the cell's
    code, stdout, err = run_main(capsys, "run", "--grid", str(grid), "--out", str(moved))
    assert code == 0, err
    after = {cell["cell_id"]: cell for cell in json.loads(exported(capsys, moved))}
    assert len(after) == 3 and all(cell["status"] == "done" for cell in after.values())
    for cell_id, cell in before.items():
        if cell["status"] == "done":
            assert after[cell_id] == cell  # never rewritten
