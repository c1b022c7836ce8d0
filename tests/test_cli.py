"""The command line end to end: the smoke grid, listing, the leaderboard, and every bad input ending in one line."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from user_faults import TINY

import registry
from bench.cli import main
from bench.grid import load_grid

SMOKE = load_grid("smoke")


def run_bench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, check=False)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """The smoke grid run once through the real command; the tests below read what it left."""
    work = tmp_path_factory.mktemp("smoke")
    result = run_bench("run", "--grid", "smoke", "--out", "runs", cwd=work)
    return work, result


def done_rows(store: Path) -> list[tuple]:
    with sqlite3.connect(store) as db:
        return db.execute("SELECT cell_id, status, finished_at, metrics FROM cells ORDER BY cell_id").fetchall()


def test_smoke_grid_runs_and_writes_store_and_leaderboard(smoke_run):
    work, result = smoke_run
    assert result.returncode == 0, result.stderr
    rows = done_rows(work / "runs" / "results.sqlite")
    assert len(rows) == len(SMOKE.cells) and {r[1] for r in rows} == {"done"}
    board = (work / "runs" / "leaderboard.md").read_text()  # beside its store: the published one is not touched
    assert not (work / "leaderboard.md").exists()
    assert "## synthetic · grid `smoke`" in board
    for cell in SMOKE.cells:
        assert f"| {cell.arch.label} " in board
    assert "Reference experiment (published figures" in board and "0.5054" in board
    for cell in SMOKE.cells:
        assert (work / "runs" / "checkpoints" / cell.cell_id / "best.pt").exists()
        assert not (work / "runs" / "checkpoints" / cell.cell_id / "last.pt").exists()
    for figure in ("label-efficiency", "curves", "annotations", "predictions"):  # drawn by this run, and linked
        assert (work / "runs" / "plots" / f"synthetic-smoke-{figure}.png").exists()
        assert f"(plots/synthetic-smoke-{figure}.png)" in board


def test_stored_metrics_are_complete(smoke_run):
    work, _ = smoke_run
    with sqlite3.connect(work / "runs" / "results.sqlite") as db:
        metrics, history, provenance = map(json.loads, db.execute(
            "SELECT metrics, history, provenance FROM cells LIMIT 1").fetchone())
    for key in ("best_miou", "final_miou", "final_accuracy", "final_iou", "confusion_matrix",
                "final_per_batch_miou", "first_epoch_seconds", "epoch_seconds", "eval_seconds",
                "train_images_per_second", "peak_memory_mb", "labelled_fraction", "class_names",
                "best_per_batch_miou", "test_miou", "test_accuracy", "test_iou", "test_per_batch_miou",
                "test_confusion_matrix", "test_epoch", "test_tiles"):
        assert key in metrics
    assert metrics["test_tiles"] == 8 and metrics["test_epoch"] == metrics["best_epoch"]  # smoke's test_size
    assert sum(map(sum, metrics["test_confusion_matrix"])) == 8 * 32 * 32
    assert 0.0 <= metrics["best_miou"] <= 1.0 and len(metrics["final_iou"]) == 5
    assert metrics["labelled_fraction"] == pytest.approx(0.1, abs=0.01)
    assert len(history) == SMOKE.cells[0].recipe["epochs"]
    for key in ("code_revision", "libraries", "device", "date", "python"):
        assert key in provenance


def test_rerun_skips_finished_cells(smoke_run):
    work, _ = smoke_run
    store = work / "runs" / "results.sqlite"
    before = done_rows(store)
    result = run_bench("run", "--grid", "smoke", "--out", "runs", cwd=work)
    assert result.returncode == 0
    assert f"{len(SMOKE.cells)} already finished, 0 to run" in result.stdout
    assert done_rows(store) == before


def test_leaderboard_command_regenerates(smoke_run, tmp_path):
    work, _ = smoke_run
    target = tmp_path / "board.md"
    assert main(["leaderboard", "--out", str(work / "runs"), "--leaderboard", str(target)]) == 0
    assert "grid `smoke`" in target.read_text()


def test_export_command_gives_a_run_s_metrics_as_stored(smoke_run, capsys):
    """On a real run's store: one CSV row per cell, its scores equal to the stored ones, a column per class."""
    work, _ = smoke_run
    assert main(["export", "--out", str(work / "runs")]) == 0
    exported = {row["cell_id"]: row for row in csv.DictReader(io.StringIO(capsys.readouterr().out))}
    stored = {cell_id: json.loads(metrics) for cell_id, _, _, metrics in done_rows(work / "runs" / "results.sqlite")}
    assert exported.keys() == stored.keys() == {cell.cell_id for cell in SMOKE.cells}
    for cell_id, metrics in stored.items():
        row = exported[cell_id]
        assert float(row["best_miou"]) == metrics["best_miou"] and int(row["best_epoch"]) == metrics["best_epoch"]
        for name, iou in zip(metrics["class_names"], metrics["final_iou"]):
            assert row[f"final_iou_{name}"] == ("" if iou is None else repr(iou))


def test_prune_lists_then_forgets_the_cells_a_grid_no_longer_has(smoke_run, tmp_path, capsys):
    """The smoke grid without its UNet++: its stored cell is listed (nothing removed), a dry run counts it, --delete
    forgets it and its checkpoints and regenerates the leaderboard; the UNet cell stays."""
    out, board = tmp_path / "runs", tmp_path / "board.md"
    shutil.copytree(smoke_run[0] / "runs", out)
    only_unet = ["--set", 'axes.archs=[{ name = "unet", base_channels = 4, depth = 3 }]']
    (kept,) = [c.cell_id for c in SMOKE.cells if c.arch.name == "unet"]
    (gone,) = [c.cell_id for c in SMOKE.cells if c.arch.name == "unetplusplus"]
    common = ["--grid", "smoke", "--out", str(out), "--leaderboard", str(board), *only_unet]
    capsys.readouterr()

    assert main(["prune", *common]) == 0
    listed = capsys.readouterr().out
    assert gone in listed and kept not in listed and "bench prune --grid smoke --delete" in listed
    assert {row[0] for row in done_rows(out / "results.sqlite")} == {kept, gone} and not board.exists()
    assert main(["run", "--grid", "smoke", "--out", str(out), "--dry-run", *only_unet]) == 0
    assert "1 stored cells of grid smoke are not in it any more" in capsys.readouterr().out

    assert main(["prune", *common, "--delete"]) == 0
    assert "1 cells forgotten" in capsys.readouterr().out
    assert [row[0] for row in done_rows(out / "results.sqlite")] == [kept]
    assert not (out / "checkpoints" / gone).exists() and (out / "checkpoints" / kept / "best.pt").exists()
    assert "| unet " in board.read_text() and "unetplusplus" not in board.read_text()
    assert main(["prune", *common]) == 0
    assert "nothing to prune: every stored cell of grid smoke is in it" in capsys.readouterr().out


def test_prune_without_a_store_is_one_line(tmp_path, capsys):
    assert main(["prune", "--grid", "smoke", "--out", str(tmp_path / "none")]) == 2
    assert capsys.readouterr().err.strip() == f"error: no results store at {tmp_path / 'none' / 'results.sqlite'}: " \
                                              "nothing to prune"


def test_dry_run_lists_cells_and_trains_nothing(tmp_path, capsys):
    assert main(["run", "--grid", "smoke", "--out", str(tmp_path / "runs"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert all(cell.cell_id in out for cell in SMOKE.cells) and "to run" in out
    assert not (tmp_path / "runs" / "results.sqlite").exists()


@pytest.mark.parametrize("what, expected", [
    ("archs", registry.list_archs()), ("losses", registry.list_losses()), ("maskers", registry.list_maskers()),
    ("datasets", registry.list_datasets()),
])
def test_list_registries(what, expected, capsys):
    assert main(["list", what]) == 0
    assert capsys.readouterr().out.split() == expected


def test_list_with_patterns_and_grids(capsys):
    assert main(["list", "archs", "unet*", "--exclude", "*plus*"]) == 0
    assert capsys.readouterr().out.split() == ["unet"]
    assert main(["list", "grids"]) == 0
    assert {"smoke", "default"} <= set(capsys.readouterr().out.split())


GRID = TINY.replace("train_size = 8", "train_size = 4").replace("batch_size = 4", "batch_size = 2")


@pytest.mark.parametrize("old, new, message", [
    ('name = "unet"', 'name = "unte"', "unknown architecture 'unte'; did you mean 'unet'"),
    ('"partial_ce"', '"partial_cd"', "unknown loss 'partial_cd'"),
    ('"random_pixels"', '"random_pixel"', "unknown masker 'random_pixel'"),
    ('name = "synthetic"', 'name = "synth"', "unknown dataset 'synth'"),
    ("epochs = 1", "epoch = 1", "line 15: unknown key 'epoch' in [recipe]"),
    ("fractions = [0.5]", "fractions = [1.5]", "label fraction 1.5 is outside (0, 1]"),
    ("depth = 3", "depth = 7", "needs tile sides divisible by 64, but 'synthetic' tiles are 32x32"),
    ("tile_size = 32", "tile_size = 34", "needs tile sides divisible by 4, but 'synthetic' tiles are 34x34"),
    ("batch_size = 2", "batch_size = 2\nclass_weights = [1, 2]", "class_weights has 2 values; dataset"),
    ("tile_size = 32", "tile_size = 32\ncolour = 'blue'", "dataset 'synthetic'"),
    ("depth = 3", "depth = 3, widht = 2", "architecture 'unet'"),
])
def test_bad_grid_is_one_line_exit_2_and_store_untouched(smoke_run, tmp_path, old, new, message):
    out = tmp_path / "runs"
    shutil.copytree(smoke_run[0] / "runs", out)
    store = out / "results.sqlite"
    digest = hashlib.sha256(store.read_bytes()).hexdigest()
    grid = tmp_path / "bad.toml"
    grid.write_text(GRID.replace(old, new))
    result = run_bench("run", "--grid", str(grid), "--out", str(out), cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert hashlib.sha256(store.read_bytes()).hexdigest() == digest


@pytest.mark.parametrize("args, message", [
    (["run", "--grid", "no_such_grid"], "grid not found: no_such_grid"),
    (["run", "--grid", "smoke", "--plugin", "no_such_plugin_module"], "cannot import plugin 'no_such_plugin_module'"),
    (["leaderboard", "--out", "empty"], "no results store at empty/results.sqlite"),
    (["run", "--grid", "smoke", "--set", "recipe.lrr=1"], "--set recipe.lrr=1: unknown key 'lrr' in [recipe]"),
    (["run", "--grid", "smoke", "--data-root", "copies"], "dataset 'synthetic': got an unexpected keyword argument"),
])
def test_bad_command_line_is_one_line_exit_2(tmp_path, args, message):
    result = run_bench(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {message}" or message in result.stderr.strip().splitlines()[0]
    assert "Traceback" not in result.stderr


def test_epochs_must_be_positive(capsys):
    with pytest.raises(SystemExit) as info:
        main(["run", "--grid", "smoke", "--epochs", "0"])
    assert info.value.code == 2
    assert "0 is not positive" in capsys.readouterr().err


def test_set_overrides_the_grid_in_a_dry_run(tmp_path, capsys):
    overrides = ["axes.seeds=[0, 1]", "recipe.lr=1e-4", 'recipe.augment=["shift_scale_rotate"]']
    args = ["run", "--grid", "smoke", "--out", str(tmp_path / "runs"), "--dry-run"]
    assert main([*args, *(f"--set={o}" for o in overrides)]) == 0
    out = capsys.readouterr().out
    expected = load_grid("smoke", overrides=overrides)
    assert len(expected.cells) == 2 * len(SMOKE.cells) and f"{len(expected.cells)} cells" in out
    assert all(cell.cell_id in out for cell in expected.cells)
    assert not any(cell.cell_id in out for cell in SMOKE.cells)


def test_data_root_reaches_the_dataset_builder_resolved_from_the_current_folder(tmp_path):
    (tmp_path / "probe_dataset.py").write_text(
        "import json\n"
        "from registry import create_dataset, register_dataset\n"
        "@register_dataset('probe_files')\n"
        "def probe_files(root=None, tile_size=32):\n"
        "    with open('received.json', 'w') as f:\n"
        "        json.dump({'root': root, 'tile_size': tile_size}, f)\n"
        "    return create_dataset('synthetic', tile_size=tile_size, train_size=2, val_size=2, test_size=0)\n"
    )
    grid = tmp_path / "grids" / "files.toml"
    grid.parent.mkdir()
    grid.write_text(GRID.replace('name = "synthetic"\ntile_size = 32\ntrain_size = 4\nval_size = 4\ntest_size = 4',
                                 'name = "probe_files"\nroot = "in/grid/folder"'))
    result = run_bench("run", "--grid", str(grid), "--plugin", "probe_dataset", "--data-root", "copies/lc",
                       "--dry-run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "received.json").read_text()) == {"root": str(tmp_path / "copies" / "lc"),
                                                                    "tile_size": 32}


def test_plugin_registers_an_architecture_used_by_a_grid(tmp_path):
    (tmp_path / "tiny_plugin.py").write_text(
        "import torch\n"
        "from registry import register_arch\n"
        "@register_arch('pixel_linear')\n"
        "def pixel_linear(num_classes, in_chans=3):\n"
        "    model = torch.nn.Conv2d(in_chans, num_classes, 1)\n"
        "    model.size_divisor = 1\n"
        "    return model\n"
    )
    grid = tmp_path / "plugin.toml"
    grid.write_text(GRID.replace('{ name = "unet", base_channels = 4, depth = 3 }', '"pixel_linear"'))
    result = run_bench("run", "--grid", str(grid), "--plugin", "tiny_plugin", "--out", "runs", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "| pixel_linear " in (tmp_path / "runs" / "leaderboard.md").read_text()


def test_failing_cell_is_recorded_and_the_grid_goes_on(tmp_path):
    """A cell that crashes (here: a loss that diverges) is stored as failed with its reason; the others finish."""
    (tmp_path / "nan_plugin.py").write_text(
        "import torch\n"
        "from registry import register_loss\n"
        "@register_loss('always_nan')\n"
        "def always_nan(weight=None):\n"
        "    return lambda logits, target: logits.mean() * float('nan')\n"
    )
    grid = tmp_path / "fail.toml"
    grid.write_text(GRID.replace('losses = ["partial_ce"]', 'losses = ["always_nan", "partial_ce"]'))
    result = run_bench("run", "--grid", str(grid), "--plugin", "nan_plugin.py", "--out", "runs", cwd=tmp_path)
    assert result.returncode == 1
    with sqlite3.connect(tmp_path / "runs" / "results.sqlite") as db:
        rows = dict(db.execute("SELECT label, status FROM cells").fetchall())
        error = db.execute("SELECT error FROM cells WHERE status = 'failed'").fetchone()[0]
    assert sorted(rows.values()) == ["done", "failed"]
    assert "TrainingDiverged: training loss became nan in epoch 1" in error
    assert "Failed cells" in (tmp_path / "runs" / "leaderboard.md").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_requested_without_a_gpu_is_one_line_exit_2(tmp_path):
    result = run_bench("run", "--grid", "smoke", "--device", "cuda", "--out", "runs", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("error: --device cuda: no CUDA device is available")
    assert not (tmp_path / "runs").exists()
