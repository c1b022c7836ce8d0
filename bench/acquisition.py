"""Active annotation rounds: which pixels the simulated annotator labels next, chosen by the cell's model.

After each round of an ``active`` cell (:class:`registry.maskers.active.Acquisition`), the model scores every pixel of
every training tile that the full mask annotates and the partial mask does not label yet (the *candidates*); the
``per_round`` best of each tile take their label from the full mask. Picks never repeat (a labelled pixel is no
candidate) and never fall on a pixel that the dataset has not annotated (no label to take). Strategies, the pixel
with the higher score first:

- ``entropy``: the entropy of the model's class probabilities at the pixel (PixelPick, Shin et al. 2021);
- ``margin``: minus the gap between the two likeliest classes' probabilities;
- ``random``: uniform draws from (run seed, round, tile), with no model: the baseline that shows what the model's
  choice is worth;
- ``class_balanced``: the classes the model predicts in the tile take turns, the class with the fewest labelled
  pixels in the split first; each takes its candidate of the highest entropy.

Ties go to the lower flat index (row-major). With ``min_distance`` above 1 no two picks of a tile in one round are
closer than it (Euclidean, between pixel centres): a candidate that close to an earlier pick is passed over.

Picks are a pure function of the model's weights, the masks and the seed: over several processes each rank scores
its share of the tiles and the picks are summed, as evaluation counts are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

import registry
from bench import distributed
from bench.data import ACQUIRE_STREAM, Normalizer, class_counts, derive_seed, owned_tensor
from bench.device import Precision
from registry.annotation import Counts, priced
from registry.maskers.active import Acquisition

NO_PICK = -1  # a slot of a tile with fewer candidates than per_round


def uncertainty(probabilities: torch.Tensor, strategy: str) -> torch.Tensor:
    """``[B, H, W]`` scores from class probabilities ``[B, C, H, W]``, higher for a pixel the model is less sure of:
    the margin's (minus the gap between the two likeliest classes) for ``margin``, else the entropy."""
    if strategy == "margin":
        top = probabilities.topk(2, dim=1).values
        return top[:, 1] - top[:, 0]
    return -(probabilities * torch.log(probabilities.clamp_min(1e-12))).sum(1)


class Spacing:
    """The pixels of a ``height`` x ``width`` tile that are closer than ``min_distance`` to a pick so far."""

    def __init__(self, height: int, width: int, min_distance: float):
        reach = max(0, math.ceil(min_distance) - 1)
        offsets = np.arange(-reach, reach + 1)
        self.disk = offsets[:, None] ** 2 + offsets[None, :] ** 2 < min_distance ** 2
        self.reach, self.width = reach, width
        self.taken = np.zeros((height, width), dtype=bool)

    def free(self, index: int) -> bool:
        return not self.taken.flat[index]

    def take(self, index: int) -> None:
        row, column = divmod(int(index), self.width)
        r = self.reach
        top, left = max(0, row - r), max(0, column - r)
        bottom, right = min(self.taken.shape[0], row + r + 1), min(self.width, column + r + 1)
        disk = self.disk[top - row + r:bottom - row + r, left - column + r:right - column + r]
        self.taken[top:bottom, left:right] |= disk
        self.taken.flat[index] = True


def pick_tile(scores: np.ndarray, candidates: np.ndarray, count: int, min_distance: float = 0.0,
              predicted: np.ndarray | None = None, class_turns: Sequence[int] = ()) -> np.ndarray:
    """The flat indices (int64, in the order picked) of up to ``count`` of a tile's ``candidates`` (bool ``[H, W]``),
    by ``scores`` (``[H, W]``, higher first, ties to the lower index). With ``predicted`` (the model's class per pixel)
    the classes of ``class_turns`` take turns, in that order, each taking its best candidate."""
    height, width = scores.shape
    flat = np.flatnonzero(candidates.reshape(-1))
    values = scores.reshape(-1)[flat]
    if predicted is None and min_distance <= 1 and len(flat) > count:
        # The best `count` are all that is needed: those at or above the count-th best score, sorted, and no others
        # (a whole sort of a large tile's candidates for a few picks would dominate the round).
        kept = values >= np.partition(values, len(values) - count)[len(values) - count]
        flat, values = flat[kept], values[kept]
    order = flat[np.argsort(-values, kind="stable")]
    if predicted is None:
        queues = [order]
    else:
        classes = predicted.reshape(-1)[order]
        queues = [order[classes == value] for value in class_turns]
    spacing = Spacing(height, width, min_distance)
    positions = [0] * len(queues)
    turning = [q for q, queue in enumerate(queues) if len(queue)]
    picked: list[int] = []
    while turning and len(picked) < count:
        for q in list(turning):
            queue, position = queues[q], positions[q]
            while position < len(queue) and not spacing.free(queue[position]):
                position += 1
            if position == len(queue):
                turning.remove(q)
                continue
            picked.append(int(queue[position]))
            spacing.take(queue[position])
            positions[q] = position + 1
            if len(picked) == count:
                break
    return np.asarray(picked, dtype=np.int64)


def acquire(model, images: np.ndarray, partial: np.ndarray, full: np.ndarray, acquisition: Acquisition,
            round_index: int, seed: int, num_classes: int, normalize: Normalizer, batch_size: int,
            precision: Precision) -> np.ndarray:
    """Round ``round_index``'s picks, int64 ``[N, per_round]`` flat indices into each tile (:data:`NO_PICK` where a
    tile has fewer candidates), by ``model`` (the plain module, in eval mode for this) on the unaugmented training
    ``images``, given their ``partial`` masks so far and the ``full`` ones."""
    strategy, count = acquisition.strategy, acquisition.per_round
    rank, world_size = distributed.world()
    turns = np.argsort(class_counts(partial, num_classes), kind="stable").tolist()  # the fewest labelled first
    picks = torch.zeros(len(images), count, dtype=torch.int64)  # NO_PICK + 1: summed over the ranks
    if strategy != "random":
        model.eval()
    with torch.inference_mode(), precision.autocast():
        for batch, first in enumerate(range(0, len(images), batch_size)):
            if batch % world_size != rank:
                continue
            last = min(first + batch_size, len(images))
            scores = predicted = None
            if strategy != "random":
                inputs, _ = normalize(owned_tensor(images[first:last]), owned_tensor(partial[first:last]))
                probabilities = model(inputs).float().softmax(1)
                scores = uncertainty(probabilities, strategy).cpu().numpy()
                if strategy == "class_balanced":
                    predicted = probabilities.argmax(1).cpu().numpy()
            for index in range(first, last):
                full_mask = np.asarray(full[index])
                candidates = (full_mask >= 0) & (partial[index] < 0)
                if strategy == "random":
                    draws = torch.Generator().manual_seed(derive_seed(seed, ACQUIRE_STREAM, round_index, index))
                    tile_scores = torch.rand(full_mask.shape, generator=draws, dtype=torch.float64).numpy()
                else:
                    tile_scores = scores[index - first]
                chosen = pick_tile(tile_scores, candidates, count, acquisition.min_distance,
                                   None if predicted is None else predicted[index - first], turns)
                picks[index, :len(chosen)] = torch.from_numpy(chosen) + 1
    if world_size > 1:
        picks = distributed.all_reduce_sum(picks.to(normalize.device)).cpu()
    return (picks - 1).numpy()


def with_picks(partial: np.ndarray, full: np.ndarray, rounds: Sequence[np.ndarray]) -> np.ndarray:
    """A copy of the ``partial`` masks with every round's picks (:func:`acquire`) labelled from the ``full`` masks."""
    masks = np.array(partial, copy=True)
    for picks in rounds:
        for index, chosen in enumerate(np.asarray(picks)):
            chosen = chosen[chosen != NO_PICK]
            masks[index].reshape(-1)[chosen] = np.asarray(full[index]).reshape(-1)[chosen]
    return masks


def picked_pixels(rounds: Sequence[np.ndarray]) -> int:
    """How many pixels the rounds' picks label."""
    return sum(int(np.count_nonzero(np.asarray(picks) != NO_PICK)) for picks in rounds)


def final_round(history: Sequence[dict[str, Any]]) -> int | None:
    """The round of a history's last epoch; None for a cell without rounds."""
    return history[-1].get("round")


@dataclass
class ActiveRounds:
    """An active cell's acquisition, as its training needs it: the settings, the training split's full masks (the
    simulated annotator's answers), what the start masks count for the annotator, and the grid's seconds per unit."""

    settings: Acquisition
    full_masks: np.ndarray  # [N, H, W], the dataset's own training masks
    start_counts: Counts  # registry.annotation.tally of the start masks
    costs: dict[str, float]

    def counts(self, picks: Sequence[np.ndarray]) -> Counts:
        """The start masks' counts with one click per pixel picked."""
        return {**self.start_counts, "point": self.start_counts.get("point", 0) + picked_pixels(picks)}

    def priced(self, picks: Sequence[np.ndarray]) -> dict[str, Any]:
        return priced(self.counts(picks), self.costs)

    def summaries(self, history: Sequence[dict[str, Any]], picks: Sequence[np.ndarray], start_masks: np.ndarray,
                  annotated: int | None) -> list[dict[str, Any]]:
        """Each round's figures: its best validation epoch, and what it was trained with (labelled pixels, their
        share of the annotated ones, the annotation priced)."""
        start = int(np.count_nonzero(start_masks >= 0))
        annotated = start_masks.size if annotated is None else annotated
        summaries = []
        for index in range(len(picks) + 1):
            epochs = [h for h in history if h.get("round") == index]
            best = max(reversed(epochs), key=lambda h: h["miou"])
            labelled = start + picked_pixels(picks[:index])
            summaries.append({"round": index, "best_miou": best["miou"], "best_epoch": best["epoch"],
                              "best_iou": best["iou"], "labelled_pixels": labelled,
                              "labelled_fraction": labelled / annotated if annotated else 0.0,
                              "annotation": self.priced(picks[:index])})
        return summaries


def total_epochs(cell) -> int:
    """The epochs a cell trains: the recipe's, once per round for an active cell (:class:`bench.identity.Cell`)."""
    acquisition = getattr(registry.create_masker(cell.masker.name, **cell.masker.kwargs), "acquisition", None)
    return cell.recipe["epochs"] * (1 if acquisition is None else acquisition.rounds + 1)
