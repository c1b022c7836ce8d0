"""The test split: evaluated once per cell, with the weights of the best validation epoch, and resumable."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from grids import synthetic_grid

import registry
from bench.cell_job import GridData
from bench.data import Normalizer
from bench.device import Precision, choose_precision
from bench.grid import parse_grid
from bench.outputs import OutputFolder
from bench.runner import RunEvents, run_grid
from bench.store import ResultStore
from bench.train import CellData, evaluate_best_on_test, summarize, train_cell

EPOCHS = 3
GRID = synthetic_grid(test_size=6, epochs=EPOCHS, recipe="eval_batch_size = 4\nlr = 0.01")
CPU = torch.device("cpu")


def grid_file(tmp_path: Path, text: str = GRID):
    path = tmp_path / "grid.toml"
    path.write_text(text)
    return parse_grid(text, path)


def reference_scores(model: torch.nn.Module, images: np.ndarray, masks: np.ndarray, mean, std, num_classes: int,
                     batch_size: int) -> dict:
    """Confusion matrix, mIoU, accuracy and per-batch mIoU computed with numpy, apart from bench.metrics."""
    model.eval()
    x = (images.astype(np.float32) / 255 - np.array(mean, np.float32)) / np.array(std, np.float32)
    with torch.no_grad():
        pred = model(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()).argmax(1).numpy()

    def counts(p, t):
        return np.bincount(t.astype(np.int64).ravel() * num_classes + p.ravel(),
                           minlength=num_classes ** 2).reshape(num_classes, num_classes)

    def miou(cm):
        union = cm.sum(0) + cm.sum(1) - np.diag(cm)
        return float(np.mean([cm[c, c] / union[c] for c in range(num_classes) if union[c] > 0]))

    cm = counts(pred, masks)
    batches = [counts(pred[i:i + batch_size], masks[i:i + batch_size]) for i in range(0, len(masks), batch_size)]
    return {"cm": cm.tolist(), "miou": miou(cm), "accuracy": float(np.trace(cm) / cm.sum()),
            "per_batch": float(np.mean([miou(b) for b in batches]))}


def best_weights_model(cell, checkpoint: Path, num_classes: int) -> torch.nn.Module:
    model = registry.create_arch(cell.arch.name, num_classes=num_classes, in_chans=3, **cell.arch.kwargs)
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=False)["model"])
    return model


def test_best_validation_weights_are_scored_on_the_test_split(tmp_path):
    grid = grid_file(tmp_path)
    data = GridData(grid)
    cell = grid.cells[0]
    cell_data = data.for_cell(cell)
    test_images, test_masks = data.dataset.split("test")
    assert cell_data.test_images is test_images and len(test_images) == 6

    history, metrics = train_cell(cell, cell_data, CPU, tmp_path / "ckpt")
    assert metrics["test_tiles"] == 6
    assert metrics["test_epoch"] == metrics["best_epoch"] == max(history, key=lambda h: h["miou"])["epoch"]
    model = best_weights_model(cell, tmp_path / "ckpt" / "best.pt", data.dataset.num_classes)
    expected = reference_scores(model, test_images, test_masks, data.dataset.mean, data.dataset.std,
                                data.dataset.num_classes, batch_size=4)
    assert metrics["test_confusion_matrix"] == expected["cm"]
    assert sum(map(sum, expected["cm"])) == test_masks.size
    assert metrics["test_miou"] == pytest.approx(expected["miou"])
    assert metrics["test_accuracy"] == pytest.approx(expected["accuracy"])
    assert metrics["test_per_batch_miou"] == pytest.approx(expected["per_batch"])
    assert len(metrics["test_iou"]) == data.dataset.num_classes
    # validation figures are untouched by the test pass
    assert metrics["confusion_matrix"] == history[-1]["confusion_matrix"]
    assert sum(map(sum, metrics["confusion_matrix"])) == data.dataset.split("val")[1].size


def test_the_test_pass_uses_the_best_epoch_s_weights_not_the_weights_in_hand():
    """The best epoch's weights (what best.pt holds) predict class 3 everywhere; the model passed in predicts
    otherwise."""
    num_classes = 5
    best = torch.nn.Conv2d(3, num_classes, 1)
    with torch.no_grad():
        best.weight.zero_()
        best.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 5.0, 0.0]))
    in_hand = torch.nn.Conv2d(3, num_classes, 1)
    with torch.no_grad():
        in_hand.weight.zero_()
        in_hand.bias.copy_(torch.tensor([5.0, 0.0, 0.0, 0.0, 0.0]))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    masks = rng.integers(0, num_classes, (5, 8, 8)).astype(np.uint8)
    data = CellData(images, masks.astype(np.int8), images, masks, num_classes, (0.5,) * 3, (0.25,) * 3,
                    test_images=images, test_masks=masks)
    precision = Precision(lambda: torch.autocast("cpu", enabled=False), None, "float32")
    result = evaluate_best_on_test(in_hand, in_hand, {"epoch": 7, "model": best.state_dict()},
                                   (data.test_images, data.test_masks),
                                   num_classes, Normalizer((0.5,) * 3, (0.25,) * 3, CPU), 2, precision)
    cm = np.array(result["test_confusion_matrix"])
    assert cm[:, 3].sum() == masks.size and cm.sum() == masks.size  # everything predicted as class 3
    assert result["test_epoch"] == 7 and result["test_tiles"] == 5
    assert result["test_accuracy"] == pytest.approx(float((masks == 3).mean()))


def test_no_test_split_means_no_test_figures(tmp_path):
    grid = grid_file(tmp_path, GRID.replace("test_size = 6", "test_size = 0").replace(f"epochs = {EPOCHS}",
                                                                                          "epochs = 1"))
    data = GridData(grid)
    cell_data = data.for_cell(grid.cells[0])
    assert not cell_data.has_test
    _, metrics = train_cell(grid.cells[0], cell_data, CPU, tmp_path / "ckpt")
    assert not [key for key in metrics if key.startswith("test_")]


class StopAfterLastEpoch(RunEvents):
    """Interrupts the run after the cell's last epoch is stored, before its test evaluation."""

    def epoch_done(self, cell, record):
        if record["epoch"] == EPOCHS:
            raise KeyboardInterrupt


class CountSteps(RunEvents):
    def __init__(self):
        self.steps = 0

    def step(self, cell, step, total):
        self.steps += 1


def test_a_cell_stopped_before_its_test_pass_resumes_with_it_without_training(tmp_path):
    grid = grid_file(tmp_path)
    cell = grid.cells[0]
    with pytest.raises(KeyboardInterrupt):
        run_grid(grid, OutputFolder(tmp_path / "runs"), CPU, StopAfterLastEpoch())
    store = ResultStore(tmp_path / "runs" / "results.sqlite")
    stopped = store.get(cell.cell_id)
    store.close()
    assert stopped.status == "interrupted" and len(stopped.history) == EPOCHS and stopped.metrics is None
    assert (tmp_path / "runs" / "checkpoints" / cell.cell_id / "last.pt").exists()

    events = CountSteps()
    summary = run_grid(grid, OutputFolder(tmp_path / "runs"), CPU, events)
    assert summary.done == [cell.cell_id] and events.steps == 0  # no training step taken
    store = ResultStore(tmp_path / "runs" / "results.sqlite")
    resumed = store.get(cell.cell_id)
    store.close()
    assert resumed.status == "done" and resumed.history == stopped.history
    assert not (tmp_path / "runs" / "checkpoints" / cell.cell_id / "last.pt").exists()

    # The same test figures as a run that was never stopped.
    straight = CountSteps()
    run_grid(grid, OutputFolder(tmp_path / "straight"), CPU, straight)
    assert straight.steps == EPOCHS * 2  # 8 tiles in batches of 4
    store = ResultStore(tmp_path / "straight" / "results.sqlite")
    expected = store.get(cell.cell_id).metrics
    store.close()
    for key in ("test_miou", "test_accuracy", "test_confusion_matrix", "test_per_batch_miou", "test_epoch",
                "test_tiles", "best_miou", "best_epoch"):
        assert resumed.metrics[key] == expected[key], key
    assert not math.isnan(resumed.metrics["test_miou"])


@pytest.mark.parametrize("capability, name, dtype, scaled", [
    ((7, 0), "fp16 autocast + loss scaling", torch.float16, True),   # V100: bf16 only emulated
    ((7, 5), "fp16 autocast + loss scaling", torch.float16, True),   # T4
    ((8, 0), "bf16 autocast", torch.bfloat16, False),                # A100
    ((9, 0), "bf16 autocast", torch.bfloat16, False),                # H100
])
@pytest.mark.filterwarnings("ignore:.*CUDA is not available")  # the GradScaler built on this GPU-less machine
def test_precision_follows_the_gpus_compute_capability(monkeypatch, capability, name, dtype, scaled):
    """bf16 only where it has tensor cores; torch.cuda.is_bf16_supported() says yes on a V100 or T4 too (emulation)."""
    asked = []
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: asked.append(device) or capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    precision = choose_precision(torch.device("cuda", 1), amp=True)
    assert (precision.name, precision.dtype, precision.scaler is not None) == (name, dtype, scaled)
    assert asked == [torch.device("cuda", 1)]  # this cell's GPU, not the current one
    assert choose_precision(torch.device("cuda", 1), amp=False).name == "float32"
    assert choose_precision(torch.device("cpu"), amp=True).dtype == torch.float32


def test_summary_names_the_best_epoch_that_best_pt_keeps_when_epochs_tie():
    """train_cell keeps the later of two epochs with the same mIoU in best.pt (and tests it): the summary's best
    epoch must be that one."""
    tiles = np.zeros((2, 8, 8, 3), np.uint8)
    data = CellData(tiles, np.zeros((2, 8, 8), np.int8), tiles, np.zeros((2, 8, 8), np.uint8), 5, (0.5,) * 3,
                    (0.2,) * 3)
    history = [{"epoch": epoch, "miou": miou, "accuracy": 0.5, "iou": [miou] * 5, "per_batch_miou": miou,
                "confusion_matrix": [], "train_seconds": 1.0, "eval_seconds": 1.0}
               for epoch, miou in ((1, 0.3), (2, 0.4), (3, 0.4), (4, 0.2))]
    summary = summarize(history, data, 2, "float32")
    assert (summary["best_epoch"], summary["best_miou"], summary["final_miou"]) == (3, 0.4, 0.2)
