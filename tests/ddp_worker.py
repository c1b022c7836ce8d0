"""One rank of tests/test_ddp.py, launched by ``python -m torch.distributed.run --nproc-per-node 2``: joins the gloo
process group as ``bench run --ddp`` would, then does what the test checks, each rank writing ``rank<r>.json``.

Usage: ddp_worker.py OUT_DIR TRAIN_GRID CONSISTENCY_GRID ODD_BATCH_GRID (OUT_DIR/resume holds a last.pt to resume)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

import bench.checkpoints
from bench import distributed
from bench.acquisition import acquire
from bench.cell_job import GridData
from bench.data import Normalizer
from bench.device import Precision
from bench.grid import load_grid
from bench.scoring import evaluate
from bench.train import train_cell
from registry.errors import UserError
from registry.maskers.active import Acquisition

CPU = torch.device("cpu")


def fixed_model(num_classes: int) -> torch.nn.Module:
    """A small convolutional model with the same weights on every rank (and in the test's own process)."""
    torch.manual_seed(7)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                               torch.nn.Conv2d(8, num_classes, 1)).eval()


def sharded_evaluation(grid_path: str, batch_size: int) -> dict:
    data = GridData(load_grid(grid_path)).dataset
    images, masks = data.split("val")
    precision = Precision(lambda: torch.autocast("cpu", enabled=False), None, "float32")
    return evaluate(fixed_model(data.num_classes), images, masks, data.num_classes,
                    Normalizer(data.mean, data.std, CPU), batch_size, precision)


def sharded_acquisition(grid_path: str, strategy: str, batch_size: int) -> list[list[int]]:
    """A round's picks by the fixed model on the validation tiles, a third of their pixels labelled already."""
    data = GridData(load_grid(grid_path)).dataset
    images, masks = data.split("val")
    partial = np.where(np.random.default_rng(5).random(masks.shape) < 0.3, masks, -1).astype(np.int8)
    precision = Precision(lambda: torch.autocast("cpu", enabled=False), None, "float32")
    picks = acquire(fixed_model(data.num_classes), images, partial, masks, Acquisition(strategy, 7, 1, 1.5), 1, 0,
                    data.num_classes, Normalizer(data.mean, data.std, CPU), batch_size, precision)
    return picks.tolist()


def step_batch(num_classes: int = 5, partial: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Four images and their labels; ``partial``: most pixels of items 0 and 2 labelled, few of items 1 and 3, so that
    two ranks' shares (items r::2) hold very different numbers of labels."""
    generator = torch.Generator().manual_seed(3)
    images = torch.randn(4, 3, 16, 16, generator=generator)
    target = torch.randint(0, num_classes, (4, 16, 16), generator=generator)
    if partial:
        keep = torch.rand(4, 16, 16, generator=generator) < torch.tensor([0.6, 0.03, 0.6, 0.03]).view(4, 1, 1)
        target = torch.where(keep, target, torch.full_like(target, -1))
    return images, target


def one_step_gradients(model: torch.nn.Module, images: torch.Tensor, target: torch.Tensor,
                       forward: torch.nn.Module | None = None) -> dict:
    """The gradients of one training step of partial cross-entropy (the mean over the labelled pixels) weighted as
    train_cell weighs it (:func:`bench.distributed.supervised_loss_weight`), by parameter; ``forward`` runs ``model``
    (its DDP wrapper)."""
    model.train()
    loss = torch.nn.functional.cross_entropy((forward or model)(images), target, ignore_index=-1)
    (loss * distributed.supervised_loss_weight(target)).backward()
    return {name: p.grad.flatten().tolist() for name, p in model.named_parameters()}


def sharded_step(partial: bool = False) -> dict:
    """One DDP step with synchronised BatchNorm, each rank on its half of a batch: the gradients and running
    statistics of one process on the whole batch."""
    rank, world_size = distributed.world()
    model = distributed.sync_batchnorm(fixed_model(5), CPU)
    ddp = distributed.data_parallel(model, CPU)
    images, target = step_batch(partial=partial)
    gradients = one_step_gradients(model, images[rank::world_size], target[rank::world_size], ddp)
    return {"gradients": gradients, "running_mean": model[1].running_mean.tolist(),
            "running_var": model[1].running_var.tolist()}


def buffer_writes_per_forward() -> dict[str, dict[str, int]]:
    """How many times each buffer of the model is written in one training forward (its version counter's increase),
    run plain and through its DDP wrapper. Any write of the wrapper's own (DDP copying rank 0's BatchNorm statistics
    into the other ranks') makes autograd refuse the backward of an earlier forward whose BatchNorm saved them."""
    writes = {}
    for wrapped in (False, True):
        model = fixed_model(5).train()
        forward = distributed.data_parallel(model, CPU) if wrapped else model
        before = {name: buffer._version for name, buffer in model.named_buffers()}
        forward(step_batch()[0])
        writes["ddp" if wrapped else "plain"] = {name: buffer._version - before[name]
                                                 for name, buffer in model.named_buffers()}
    return writes


def main(out_dir: Path, train_grid: str, consistency_grid: str, odd_grid: str) -> None:
    torch.set_num_threads(1)
    assert distributed.init_process_group(CPU) == CPU
    rank, world_size = distributed.world()
    report: dict = {"rank": rank, "world": world_size, "is_main": distributed.is_main()}

    saved, epochs, steps = [], [], []
    original_write = bench.checkpoints.write

    def write(state, path):
        saved.append(Path(path).name)
        original_write(state, path)

    bench.checkpoints.write = write
    grid = load_grid(train_grid)
    cell = grid.cells[0]
    history, metrics = train_cell(cell, GridData(grid).for_cell(cell), CPU, out_dir / "ckpt",
                                  lambda h: epochs.append(len(h)), lambda step, total: steps.append(step))
    report.update(history=history, metrics=metrics, saved=list(saved), on_epoch=list(epochs), on_step=len(steps))

    history, _ = train_cell(cell, GridData(grid).for_cell(cell), CPU, out_dir / "resume")  # last.pt left by the test
    report["resumed_history"] = history

    report["step"] = sharded_step()
    report["partial_step"] = sharded_step(partial=True)
    report["buffer_writes"] = buffer_writes_per_forward()
    for batch_size in (1, 2, 4):  # 6 validation tiles: 6 batches, 3 (two on rank 0), 2 (of 4 and 2 tiles)
        report[f"evaluation_{batch_size}"] = sharded_evaluation(train_grid, batch_size)
        report[f"acquisition_{batch_size}"] = {strategy: sharded_acquisition(train_grid, strategy, batch_size)
                                               for strategy in ("entropy", "class_balanced")}

    grid = load_grid(consistency_grid)
    cell = grid.cells[0]
    history, _ = train_cell(cell, GridData(grid).for_cell(cell), CPU, out_dir / "ckpt-consistency")
    report["consistency_history"] = history

    grid = load_grid(odd_grid)
    cell = grid.cells[0]
    try:
        train_cell(cell, GridData(grid).for_cell(cell), CPU, out_dir / "ckpt-odd")
        report["odd_batch_error"] = None
    except UserError as err:
        report["odd_batch_error"] = str(err)
    report["odd_batch_checkpoints"] = (out_dir / "ckpt-odd").exists()

    (out_dir / f"rank{rank}.json").write_text(json.dumps(report))
    distributed.close_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), *sys.argv[2:5])
