"""One cell over two processes (DistributedDataParallel, gloo on the CPU) against the same cell in one process.

The two processes are launched once for the module (tests/ddp_worker.py under torch.distributed.run); each test reads
what they wrote."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ddp_worker import fixed_model, one_step_gradients, sharded_acquisition, sharded_evaluation, step_batch
from grids import synthetic_grid
from user_faults import Stop, stop_after

from bench import distributed
from bench.batches import DeviceBatches, TrainBatches
from bench.cell_job import GridData
from bench.data import AugmentedTiles, Normalizer
from bench.grid import parse_grid
from bench.train import check_shares, train_cell
from registry.errors import UserError

WORKER = Path(__file__).with_name("ddp_worker.py")
CPU = torch.device("cpu")
GRID = synthetic_grid("TILES", 6, 4, losses="LOSS", maskers="MASKER", epochs="EPOCHS", batch_size="BATCH",
                      recipe="eval_batch_size = 4\nlr = LR\nRECIPE")
EPOCHS, TILES, BATCH, STOP_AFTER = 5, 48, 8, 2
TRAIN = {"LOSS": '"partial_ce"', "MASKER": '"random_pixels"', "EPOCHS": str(EPOCHS), "TILES": str(TILES),
         "BATCH": str(BATCH), "LR": "0.02", "RECIPE": 'augment = []\nsync_batchnorm = true\noptimizer = "sgd"'}
# the DDP-wrapped model run again by a regulariser, on the device data path with augmentation, without SyncBatchNorm
CONSISTENCY = {"LOSS": '"partial_ce + 0.1 * consistency"', "MASKER": '"random_pixels"', "EPOCHS": "1", "TILES": "8",
               "BATCH": "4", "LR": "0.01", "RECIPE": 'data_path = "device"\naugment = ["hflip", "rot90"]'}
ODD_BATCH = {**CONSISTENCY, "LOSS": '"partial_ce"', "BATCH": "3", "RECIPE": ""}


def write_grid(folder: Path, name: str, fields: dict[str, str]) -> Path:
    text = GRID
    for key, value in fields.items():
        text = text.replace(key, value)
    path = folder / f"{name}.toml"
    path.write_text(text)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(one process: history, metrics; two processes: each rank's report; the grids' folder)."""
    folder = tmp_path_factory.mktemp("ddp")
    paths = [write_grid(folder, name, fields) for name, fields in
             (("train", TRAIN), ("consistency", CONSISTENCY), ("odd", ODD_BATCH))]
    grid = parse_grid(paths[0].read_text(), paths[0])
    cell = grid.cells[0]
    data = GridData(grid).for_cell(cell)  # also fills the dataset cache before the workers read it
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers
    try:
        single = train_cell(cell, data, CPU, folder / "single")
        with pytest.raises(Stop):  # leaves resume/last.pt after epoch STOP_AFTER, for the workers to resume from
            train_cell(cell, data, CPU, folder / "resume", on_epoch=stop_after(STOP_AFTER))
    finally:
        torch.set_num_threads(threads)
    python_path = os.pathsep.join(filter(None, [str(WORKER.parent.parent), os.environ.get("PYTHONPATH")]))
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": python_path}
    completed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
         "--master-port", str(free_port()), str(WORKER), str(folder), *map(str, paths)],
        check=False, capture_output=True, text=True, timeout=240, env=environment)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-5000:]
    reports = [json.loads((folder / f"rank{rank}.json").read_text()) for rank in range(2)]
    return single, reports, folder


def test_two_processes_train_like_one(runs):
    """Augmentation off and BatchNorm synchronised: each step sees the same global batch with the same statistics,
    and the ranks' losses, weighted by their shares of the labels, average to the loss of the whole batch: what
    remains is float rounding, which training amplifies (SGD here; Adam amplifies it more, measured up to
    0.02 mIoU in a middle epoch of this cell)."""
    (history, metrics), reports, _ = runs
    ddp = reports[0]
    assert [r["world"] for r in reports] == [2, 2] and [r["is_main"] for r in reports] == [True, False]
    assert len(ddp["history"]) == len(history) == EPOCHS
    for ours, theirs in zip(ddp["history"], history):
        assert ours["train_loss"] == pytest.approx(theirs["train_loss"], rel=2e-3)  # measured: 1e-4 at most
        assert ours["miou"] == pytest.approx(theirs["miou"], abs=0.01)  # measured: 6e-4 at most
        assert ours["accuracy"] == pytest.approx(theirs["accuracy"], abs=0.01)
        assert ours["lr"] == theirs["lr"]  # the same schedule: the same steps per epoch
    assert ddp["metrics"]["test_miou"] == pytest.approx(metrics["test_miou"], abs=0.01)
    assert metrics["best_miou"] > 0.15  # it learnt something: the comparison is not of two constant predictions
    assert ddp["metrics"]["train_images_per_second"] > 0
    # every rank ends with the same figures: losses averaged, counts summed, the same best.pt evaluated
    timings = ("train_seconds", "eval_seconds")
    assert [{k: v for k, v in h.items() if k not in timings} for h in reports[1]["history"]] == \
        [{k: v for k, v in h.items() if k not in timings} for h in ddp["history"]]
    assert reports[1]["metrics"]["test_confusion_matrix"] == ddp["metrics"]["test_confusion_matrix"]


@pytest.mark.parametrize("step", ["step", "partial_step"])
def test_two_ranks_step_with_the_gradients_of_one_process(runs, step):
    """Synchronised BatchNorm on the CPU, and the loss of each rank weighted by its share of the labelled pixels: with
    full labels, and with partial ones where one rank's share holds 20 times the other's labels."""
    _, reports, _ = runs
    model = fixed_model(5)
    images, target = step_batch(partial=step == "partial_step")
    labelled = [int((target[rank::2] >= 0).sum()) for rank in range(2)]
    assert labelled == [512, 512] if step == "step" else labelled[0] > 10 * labelled[1] > 0
    gradients = one_step_gradients(model, images, target)
    for report in reports:
        for name, values in gradients.items():
            np.testing.assert_allclose(report[step]["gradients"][name], values, rtol=1e-4, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(report[step]["running_mean"], model[1].running_mean, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(report[step]["running_var"], model[1].running_var, rtol=1e-5, atol=1e-7)


def test_two_processes_resume_from_one_process_checkpoint(runs):
    """Every rank loads last.pt (written here by one process, stopped after epoch STOP_AFTER) and trains on."""
    (history, _), reports, folder = runs
    for report in reports:
        resumed = report["resumed_history"]
        assert [h["epoch"] for h in resumed] == list(range(1, EPOCHS + 1))
        assert [h["resumed"] for h in resumed] == [False] * STOP_AFTER + [True] + [False] * (EPOCHS - STOP_AFTER - 1)
        assert [h["train_loss"] for h in resumed[:STOP_AFTER]] == [h["train_loss"] for h in history[:STOP_AFTER]]
        assert resumed[-1]["miou"] == pytest.approx(history[-1]["miou"], abs=0.01)
    assert torch.load(folder / "resume" / "last.pt", weights_only=True)["epoch"] == EPOCHS  # for the driver to remove


def test_only_rank_0_writes_and_calls_back(runs):
    _, (main, other), folder = runs
    assert main["saved"].count("last.pt") == EPOCHS and "best.pt" in main["saved"] and len(set(main["saved"])) == 2
    assert main["on_epoch"] == list(range(1, EPOCHS + 1)) and main["on_step"] == EPOCHS * TILES // BATCH
    assert other["saved"] == [] and other["on_epoch"] == [] and other["on_step"] == 0
    assert (folder / "ckpt" / "best.pt").exists() and (folder / "ckpt" / "last.pt").exists()


@pytest.mark.parametrize("batch_size", [1, 2, 4])
def test_sharded_evaluation_equals_one_process(runs, batch_size):
    _, reports, folder = runs
    alone = sharded_evaluation(str(folder / "train.toml"), batch_size)
    for report in reports:
        assert report[f"evaluation_{batch_size}"] == alone  # exact: integer counts summed before scoring


@pytest.mark.parametrize("batch_size", [1, 2, 4])
def test_sharded_acquisition_picks_what_one_process_picks(runs, batch_size):
    _, reports, folder = runs
    alone = {strategy: sharded_acquisition(str(folder / "train.toml"), strategy, batch_size)
             for strategy in ("entropy", "class_balanced")}
    assert any(pick >= 0 for tile in alone["entropy"] for pick in tile)
    for report in reports:
        assert report[f"acquisition_{batch_size}"] == alone


def test_a_regulariser_that_runs_the_model_trains_under_ddp(runs):
    _, reports, _ = runs
    history = reports[0]["consistency_history"]
    assert len(history) == 1 and math.isfinite(history[0]["train_loss"])
    assert math.isfinite(history[0]["regularizers"]["consistency"])


def test_a_training_forward_through_ddp_writes_the_buffers_as_the_plain_model_does(runs):
    """No in-place write of DDP's own (rank 0's BatchNorm statistics copied into the other ranks'): it would break the
    backward of the step's earlier forwards, which a regulariser that runs the model again makes."""
    _, reports, _ = runs
    for report in reports:
        writes = report["buffer_writes"]
        assert set(writes["plain"]) == {"1.running_mean", "1.running_var", "1.num_batches_tracked"}
        assert writes["ddp"] == writes["plain"], report["rank"]


def test_a_batch_not_divisible_by_the_processes_is_refused_before_training(runs):
    _, reports, _ = runs
    for report in reports:
        assert "batch_size = 3" in report["odd_batch_error"] and "(2)" in report["odd_batch_error"]
        assert not report["odd_batch_checkpoints"]


def test_without_torchrun_the_process_group_is_refused_in_one_line(monkeypatch):
    for name in distributed.TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(UserError, match="--ddp needs a process group: launch with torchrun --nproc-per-node N"):
        distributed.init_process_group(CPU)
    assert distributed.world() == (0, 1) and distributed.is_main()


def test_check_shares():
    check_shares(4, 8, 2)
    with pytest.raises(UserError, match="divisible"):
        check_shares(6, 8, 4)
    with pytest.raises(UserError, match="3 training tiles"):
        check_shares(4, 3, 4)


# -- batches shared out, in one process -----------------------------------------------------------------------------


def tiles(count: int = 10, side: int = 16):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (count, side, side, 3), dtype=np.uint8)
    masks = rng.integers(-1, 5, (count, side, side)).astype(np.int8)
    return images, masks


@pytest.mark.parametrize("augment", [[], ["hflip", "vflip", "rot90", "shift_scale_rotate"]])
def test_loader_shares_are_the_single_process_batches_split(augment):
    images, masks = tiles()
    whole = TrainBatches(AugmentedTiles(images, masks, augment, 3), 4, 0, False)
    shares = [TrainBatches(AugmentedTiles(images, masks, augment, 3), 4, 0, False, rank, 2) for rank in range(2)]
    assert len(whole) == len(shares[0]) == 2
    for (x, y), (x0, y0), (x1, y1) in zip(whole.epoch(1), shares[0].epoch(1), shares[1].epoch(1)):
        assert torch.equal(x[0::2], x0) and torch.equal(x[1::2], x1)
        assert torch.equal(y[0::2], y0) and torch.equal(y[1::2], y1)


@pytest.mark.parametrize("augment", [[], ["hflip", "vflip", "rot90", "shift_scale_rotate"]])
def test_device_shares_are_the_single_process_batches_split(augment):
    images, masks = tiles()
    normalize = Normalizer((0.5,) * 3, (0.25,) * 3, CPU)
    whole = DeviceBatches(images, masks, augment, 3, 4, normalize)
    shares = [DeviceBatches(images, masks, augment, 3, 4, normalize, rank, 2) for rank in range(2)]
    for (x, y), (x0, y0), (x1, y1) in zip(whole.epoch(1), shares[0].epoch(1), shares[1].epoch(1)):
        torch.testing.assert_close(x[0::2], x0, rtol=0, atol=1e-5)
        torch.testing.assert_close(x[1::2], x1, rtol=0, atol=1e-5)
        assert torch.equal(y[0::2], y0) and torch.equal(y[1::2], y1)
