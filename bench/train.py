"""Training of one cell: one flat loop, evaluated after every epoch, resumable at every epoch boundary.

The model is set up by :mod:`bench.models`, the batches come from :mod:`bench.batches`, each step is
:mod:`bench.step`'s, each evaluation :mod:`bench.scoring`'s. The precision is chosen once (:mod:`bench.device`), and
clocks are read after a device synchronisation, so epoch times are real.

Over several processes (a process group initialised, see :mod:`bench.distributed`) one cell trains with
DistributedDataParallel: ``batch_size`` stays the global batch, each rank trains on its share of every step's batch
(same steps per epoch and learning-rate schedule as one process), each rank evaluates its share of the evaluation
batches and the counts are summed before scoring, and only rank 0 writes checkpoints and calls the callbacks.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

import registry
from bench import checkpoints, distributed
from bench.acquisition import ActiveRounds, acquire, final_round, with_picks
from bench.batches import DeviceBatches, LoaderBatches, TrainBatches
from bench.data import AugmentedTiles, Normalizer, class_counts
from bench.device import Precision, choose_precision, clock, peak_memory_mb
from bench.device_data import fits_on_device, upload
from bench.identity import Cell
from bench.models import build_model
from bench.recipe import default_num_workers, weights_from_counts
from bench.scoring import eval_batch_size, evaluate
from bench.step import backward_and_step, build_optimizer, supervised_loss
from bench.whole_scenes import WholeTestScenes
from registry.errors import UserError


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class CellData:
    """Arrays for one cell: augmented training tiles with partial masks, fully labelled validation tiles (evaluated
    after every epoch) and, when the dataset has them, fully labelled test tiles (evaluated once, with the weights of
    the best validation epoch), and the test scenes to score whole with those weights too, when the dataset has them.
    "Fully labelled": but for the pixels a dataset has not annotated (``-1``), which the metrics leave out."""

    train_images: np.ndarray  # [N, H, W, C]: uint8, uint16 or float32
    train_masks: np.ndarray  # int8 [N, H, W], -1 unlabelled
    val_images: np.ndarray  # [M, H, W, C], as train_images
    val_masks: np.ndarray  # uint8 [M, H, W], or int8/int16 with -1 not annotated
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    test_images: np.ndarray | None = None  # [T, H, W, C], as train_images
    test_masks: np.ndarray | None = None  # as val_masks
    train_annotated: int | None = None  # annotated pixels of the full training masks; None: every pixel is
    test_scenes: WholeTestScenes | None = None  # whole scenes scored with the best weights after the test split
    annotation: dict[str, Any] | None = None  # the partial masks' annotation, priced (registry.annotation.priced)
    rounds: ActiveRounds | None = None  # an active cell's acquisition; then train_masks are its start masks

    @property
    def has_test(self) -> bool:
        return self.test_images is not None and len(self.test_images) > 0

    @property
    def labelled_fraction(self) -> float:
        """The share of the training split's annotated pixels that the partial masks label ("labelled %")."""
        if self.train_annotated is None:
            return float((self.train_masks >= 0).mean())
        return float(np.count_nonzero(self.train_masks >= 0) / self.train_annotated) if self.train_annotated else 0.0


def build_schedule(optimizer: torch.optim.Optimizer, recipe: dict[str, Any], steps_per_epoch: int):
    """Per-step learning-rate factor: linear warm-up, then constant or cosine decay to zero."""
    total = max(1, recipe["epochs"] * steps_per_epoch)
    warmup = round(recipe["warmup_epochs"] * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if recipe["schedule"] == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build_regularizers(cell: Cell) -> list[tuple[str, float, Any]]:
    """The loss's regularisers as ``(name, weight, reg)``, built once per cell."""
    return [(r["name"], r["weight"], registry.create_regularizer(r["name"], **r["kwargs"]))
            for r in cell.loss.regularizers]


def regularizer_terms(regularizers, outputs, target: torch.Tensor, images: torch.Tensor, progress: float,
                      forward) -> list[torch.Tensor]:
    """Each regulariser's value (unweighted) on the main output: for deep supervision (a list of logits) the last one,
    the output the model gives in eval mode. Those that run the model again get ``forward``, the model as it trains."""
    logits = outputs[-1] if isinstance(outputs, (list, tuple)) else outputs
    return [reg(logits, target, images, progress, model=forward) if getattr(reg, "uses_model", False)
            else reg(logits, target, images, progress) for _, _, reg in regularizers]


def train_cell(cell: Cell, data: CellData, device: torch.device, checkpoint_dir: Path,
               on_epoch: Callable[[list[dict[str, Any]]], None] = lambda history: None,
               on_step: Callable[[int, int], None] = lambda step, total: None,
               on_warning: Callable[[str], None] = lambda message: None) -> tuple[list[dict], dict]:
    """Train ``cell`` and evaluate it after every epoch; returns the per-epoch history and the cell's metrics.

    Resumes from the resume state a previous attempt left in ``checkpoint_dir`` (:mod:`bench.checkpoints`; a
    damaged one is set aside and reported through ``on_warning``); ``on_epoch`` gets the history after every epoch
    (to store it), ``on_step`` the step and step count (to show progress). The resume state is left in place: the
    driver removes it once the result is stored, so that no instant exists where neither holds the finished work.
    ``best.pt`` is written before returning.

    An active cell (``data.rounds``) trains the recipe's epochs once per round; between rounds the model picks the
    pixels that are labelled next (:mod:`bench.acquisition`), and the picks join the resume state at once, so that a
    run stopped in a round resumes it with the same picks. Its figures are its last round's; ``metrics["rounds"]``
    holds each round's.

    Over several processes every rank calls this with the same cell and data; only rank 0 calls the callbacks."""
    recipe = cell.recipe
    rank, world_size = distributed.world()
    if world_size > 1:
        check_shares(recipe["batch_size"], len(data.train_images), world_size)
        device = distributed.rank_device(device)
    torch.manual_seed(cell.seed)  # the same initial weights on every rank (DDP broadcasts rank 0's as well)
    # Checkpoints hold the plain module's weights (model); forward runs the training steps, evaluated the evaluation.
    model, forward, evaluated = build_model(cell.arch, data.num_classes, data.train_images.shape[-1], device,
                                            compile=recipe["compile"], data_parallel=world_size > 1,
                                            sync_batchnorm=recipe["sync_batchnorm"])
    active = data.rounds
    initial_weights = ({name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
                       if active is not None and active.settings.restart else None)
    rounds = 1 if active is None else active.settings.rounds + 1
    epochs = recipe["epochs"]  # per round
    regularizers = build_regularizers(cell)
    precision = choose_precision(device, recipe["amp"])
    normalize = Normalizer(data.mean, data.std, device)
    eval_batch = eval_batch_size(recipe)

    history: list[dict[str, Any]] = []
    start_epoch, round_index, picks = 0, 0, []
    best: dict[str, Any] | None = None  # the round's best epoch so far: {"epoch", "miou", "model"} (CPU weights)
    # Rank 0 first: it sets a damaged file aside (and says so) before the other ranks look.
    if rank == 0:
        state = checkpoints.load_resume_state(checkpoint_dir, cell.cell_id, device, on_warning)
    distributed.barrier()
    if rank != 0:
        state = checkpoints.load_resume_state(checkpoint_dir, cell.cell_id, device, lambda message: None)
    if state is not None:
        model.load_state_dict(state["model"])
        round_index, picks = state.get("round", 0), [p.cpu().numpy() for p in state.get("picks", [])]
    stage = Stage(cell, data, model, picks, normalize)
    val_images, val_masks = eval_tiles(data.val_images, data.val_masks, stage.data_path, device)
    if state is not None:
        stage.optimizer.load_state_dict(state["optimizer"])
        stage.schedule.load_state_dict(state["schedule"])
        if precision.scaler is not None and state.get("scaler"):
            precision.scaler.load_state_dict(state["scaler"])
        history, start_epoch, best = state["history"], state["epoch"], state["best"]
        if best is not None:
            best["model"] = {name: tensor.cpu() for name, tensor in best["model"].items()}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def save_state(epoch: int) -> None:
        if rank == 0:  # the other ranks read last.pt to resume: after the barrier
            checkpoints.save_resume_state(
                {"cell_id": cell.cell_id, "epoch": epoch, "history": history, "model": model.state_dict(),
                 "optimizer": stage.optimizer.state_dict(), "schedule": stage.schedule.state_dict(),
                 "scaler": precision.scaler.state_dict() if precision.scaler is not None else None, "best": best,
                 **({"round": round_index, "picks": [torch.from_numpy(p) for p in picks]} if active else {})},
                checkpoint_dir)

    first_step_seconds = None
    while True:
        for epoch in range(max(start_epoch, round_index * epochs), (round_index + 1) * epochs):
            train_loss, reg_means, train_seconds, first = train_epoch(
                stage, model, forward, regularizers, precision, epoch, epoch - round_index * epochs, on_step)
            first_step_seconds = first_step_seconds if first_step_seconds is not None else first
            started = clock(device)
            result = evaluate(evaluated, val_images, val_masks, data.num_classes, normalize, eval_batch, precision)
            eval_seconds = clock(device) - started
            history.append({
                "epoch": epoch + 1, "train_loss": train_loss, "miou": result["miou"], "accuracy": result["accuracy"],
                "iou": result["iou"], "per_batch_miou": result["per_batch_miou"],
                "confusion_matrix": result["confusion_matrix"], "lr": stage.schedule.get_last_lr()[0],
                "train_seconds": train_seconds, "eval_seconds": eval_seconds, "resumed": epoch == start_epoch > 0,
                **({"round": round_index} if active else {}),
            })
            if regularizers:  # the mean unweighted value of each regulariser over the epoch
                history[-1]["regularizers"] = reg_means
            if best is None or result["miou"] >= best["miou"]:  # every rank keeps it: the same weights everywhere
                weights = model.state_dict().items()
                best = {"epoch": epoch + 1, "miou": result["miou"],
                        "model": {name: tensor.detach().to("cpu", copy=True) for name, tensor in weights}}
            save_state(epoch + 1)
            if rank == 0:
                on_epoch(history)
            distributed.barrier()
        if round_index + 1 == rounds:
            break
        # The round is over: the model picks the next round's pixels, which are kept before anything trains on them.
        round_index += 1
        picks.append(acquire(evaluated, data.train_images, stage.masks, active.full_masks, active.settings,
                             round_index, cell.seed, data.num_classes, normalize, eval_batch, precision))
        if initial_weights is not None:
            model.load_state_dict(initial_weights)
        stage = Stage(cell, data, model, picks, normalize)
        best = None
        save_state(round_index * epochs)
        distributed.barrier()

    # the images an epoch trains on: fewer than its steps' batches hold when the split is smaller than one batch
    images_per_epoch = min(len(data.train_images), len(stage.batches) * recipe["batch_size"])
    finished = data if active is None else replace(data, train_masks=stage.masks, annotation=active.priced(picks))
    metrics = summarize(history, finished, images_per_epoch, precision.name)
    metrics.update(data_path=stage.data_path, compiled=recipe["compile"], first_step_seconds=first_step_seconds)
    if active is not None:
        metrics["rounds"] = active.summaries(history, picks, data.train_masks, data.train_annotated)
    if isinstance(recipe["class_weights"], str):  # the weights it came to (in the last round)
        metrics["class_weights"] = stage.class_weights
    if rank == 0:
        checkpoints.write({"cell_id": cell.cell_id, "config": cell.config, "epoch": best["epoch"],
                           "miou": best["miou"], "model": best["model"],
                           **({"picks": [torch.from_numpy(p) for p in picks]} if active else {})},  # for bench show
                          checkpoint_dir / checkpoints.BEST)
    if data.has_test:  # a run stopped here resumes with the test evaluation, without training again
        test_images, test_masks = eval_tiles(data.test_images, data.test_masks, stage.data_path, device)
        metrics.update(evaluate_best_on_test(model, evaluated, best, (test_images, test_masks),
                                             data.num_classes, normalize, eval_batch, precision))
    if data.test_scenes is not None and rank == 0:  # like the test split: again, after a stop here
        model.load_state_dict(best["model"])
        model.eval()
        metrics["scene"] = data.test_scenes.score(evaluated, normalize, precision, eval_batch, data.train_images)
    metrics["peak_memory_mb"], metrics["peak_memory_kind"] = peak_memory_mb(device)
    return history, metrics


class Stage:
    """What one round of a cell trains with: its partial masks (the start masks with the picks so far), the loss
    (class weights from those masks' labelled pixels, when the recipe names a weighting), the batches, and a fresh
    optimizer and learning-rate schedule for the round's epochs."""

    def __init__(self, cell: Cell, data: CellData, model: torch.nn.Module, picks: list[np.ndarray],
                 normalize: Normalizer):
        recipe = cell.recipe
        self.masks = with_picks(data.train_masks, data.rounds.full_masks, picks) if picks else data.train_masks
        self.class_weights = recipe["class_weights"]
        if isinstance(self.class_weights, str):  # a weighting: from the classes of the pixels the cell has labels of
            self.class_weights = weights_from_counts(self.class_weights, class_counts(self.masks, data.num_classes))
        self.loss_fn = registry.create_loss(cell.loss.name, **cell.loss.kwargs, weight=self.class_weights)
        self.batches, self.data_path = training_batches(cell, replace(data, train_masks=self.masks), normalize)
        self.optimizer = build_optimizer(model, recipe, normalize.device)
        self.schedule = build_schedule(self.optimizer, recipe, len(self.batches))
        self.total_steps = max(1, recipe["epochs"] * len(self.batches))
        self.device, self.lr = normalize.device, recipe["lr"]


def train_epoch(stage: Stage, model: torch.nn.Module, forward, regularizers, precision: Precision, epoch: int,
                round_epoch: int, on_step: Callable[[int, int], None]) -> tuple[float, dict[str, float], float, float]:
    """One epoch of ``stage``'s batches (epoch ``epoch`` of the cell, ``round_epoch`` of its round) by ``forward``
    (``model`` as it trains): the mean training loss, each regulariser's mean unweighted value, the epoch's seconds
    and its first step's (compilation and cuDNN autotuning happen there: reported apart)."""
    device, batches = stage.device, stage.batches
    rank, world_size = distributed.world()
    loss_sum = torch.zeros((), device=device)
    reg_sums = torch.zeros(len(regularizers), device=device)
    model.train()
    started = clock(device)
    first_step_seconds = None
    for step, (images, target) in enumerate(batches.epoch(epoch)):
        with precision.autocast():
            outputs = forward(images)
            loss = supervised_loss(stage.loss_fn, outputs, target) * distributed.supervised_loss_weight(target)
            if regularizers:
                progress = (round_epoch * len(batches) + step) / stage.total_steps
                terms = regularizer_terms(regularizers, outputs, target, images, progress, forward)
                loss = loss + sum(w * term for (_, w, _), term in zip(regularizers, terms))
                reg_sums += torch.stack([term.detach().float() for term in terms])
        backward_and_step(loss, stage.optimizer, precision)
        stage.schedule.step()
        loss_sum += loss.detach()
        if first_step_seconds is None:
            first_step_seconds = clock(device) - started
        if rank == 0:
            on_step(step + 1, len(batches))
    train_seconds = clock(device) - started
    if world_size > 1:  # the ranks' weighted losses averaged: the mean over the batches' labelled pixels
        sums = distributed.all_reduce_sum(torch.cat([loss_sum.view(1), reg_sums.to(loss_sum.dtype)]))
        loss_sum, reg_sums = sums[0] / world_size, sums[1:] / world_size
        distributed.broadcast_buffers(model)  # evaluate, on every rank, the model that rank 0 checkpoints
    train_loss = float(loss_sum) / len(batches)  # one synchronisation per epoch, not per step
    if not math.isfinite(train_loss):
        raise TrainingDiverged(f"training loss became {train_loss} in epoch {epoch + 1} (lr {stage.lr})")
    reg_means = {name: float(value) / len(batches) for (name, _, _), value in zip(regularizers, reg_sums.cpu())}
    return train_loss, reg_means, train_seconds, first_step_seconds


def check_shares(batch_size: int, train_tiles: int, world_size: int) -> None:
    """Refuse, before training, what several processes cannot share out evenly."""
    if batch_size % world_size:
        raise UserError(f"[recipe] batch_size = {batch_size} is the global batch: it must be divisible by the "
                        f"number of processes ({world_size})")
    if train_tiles < world_size:
        raise UserError(f"{train_tiles} training tiles cannot be shared by {world_size} processes")


def evaluate_best_on_test(model, forward, best: dict[str, Any], test: tuple, num_classes: int,
                          normalize: Normalizer, batch_size: int, precision: Precision) -> dict[str, Any]:
    """Evaluate the weights of the best validation epoch (``best``: its ``epoch`` and ``model`` state, what
    ``best.pt`` holds) once on the test split; ``forward`` is the model as it runs (compiled or not), sharing
    ``model``'s weights."""
    model.load_state_dict(best["model"])
    images, masks = test
    result = evaluate(forward, images, masks, num_classes, normalize, batch_size, precision)
    return {**{f"test_{key}": value for key, value in result.items()}, "test_epoch": best["epoch"],
            "test_tiles": len(images)}


def training_batches(cell: Cell, data: CellData, normalize: Normalizer):
    """The recipe's data path and a description of it: ``device`` makes batches on the device from tiles held there
    (or in pinned host memory when they do not fit), ``loader`` uses a DataLoader; ``auto`` is device on CUDA."""
    recipe, device = cell.recipe, normalize.device
    path = recipe["data_path"]
    if path == "auto":
        path = "device" if device.type == "cuda" else "loader"
    if path == "device":
        batches = DeviceBatches(data.train_images, data.train_masks, recipe["augment"], cell.seed,
                                recipe["batch_size"], normalize, *distributed.world())
        return batches, f"device ({'resident' if batches.store.resident else 'pinned host memory'})"
    workers = recipe["num_workers"]
    if workers is None:
        workers = default_num_workers(device)
    tiles = AugmentedTiles(data.train_images, data.train_masks, recipe["augment"], cell.seed)
    batches = TrainBatches(tiles, recipe["batch_size"], workers, device.type == "cuda", *distributed.world())
    return LoaderBatches(batches, normalize), f"loader ({workers} workers)"


def eval_tiles(images: np.ndarray, masks: np.ndarray, data_path: str, device: torch.device):
    """Evaluation tiles for the data path: uploaded once to the device on the device path when they fit, else as
    they are (uploaded batch by batch)."""
    if data_path.startswith("device") and fits_on_device(images.nbytes + masks.nbytes, device):
        return upload(images, device), upload(masks, device)
    return images, masks


def summarize(history: list[dict[str, Any]], data: CellData, images_per_epoch: int, precision: str) -> dict[str, Any]:
    """The cell's figures from its per-epoch history. The first epoch (warm-up, autotuning) is reported apart from the
    median of the others."""
    # The last of tied epochs, the one best.pt keeps (train_cell replaces the best on a tie); an active cell's best
    # of its last round, the one trained with all its labels.
    last_round = [h for h in history if h.get("round") == final_round(history)]
    best = max(reversed(last_round), key=lambda h: h["miou"])
    final = history[-1]
    train_times = [h["train_seconds"] for h in history]
    steady = train_times[1:] or train_times
    epoch_seconds = statistics.median(steady)
    eval_seconds = statistics.median(h["eval_seconds"] for h in history)
    return {
        "best_miou": best["miou"], "best_epoch": best["epoch"], "best_iou": best["iou"],
        "final_miou": final["miou"], "final_accuracy": final["accuracy"], "final_iou": final["iou"],
        "best_per_batch_miou": max(h["per_batch_miou"] for h in history),
        "final_per_batch_miou": final["per_batch_miou"],
        "confusion_matrix": final["confusion_matrix"],
        "epochs": len(history), "first_epoch_seconds": train_times[0], "epoch_seconds": epoch_seconds,
        "eval_seconds": eval_seconds, "train_images_per_second": images_per_epoch / epoch_seconds,
        "eval_images_per_second": len(data.val_images) / eval_seconds,
        "labelled_fraction": data.labelled_fraction, "train_tiles": len(data.train_images),
        "val_tiles": len(data.val_images), "precision": precision,
        **({"annotation": data.annotation} if data.annotation is not None else {}),
    }
