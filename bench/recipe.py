"""The training recipe: the ``[recipe]`` table of a grid file, its keys and their defaults, the names each key may
take, and its check.

The augmentations are named here once, with the ranges of ``shift_scale_rotate``: both data paths (the DataLoader's,
:mod:`bench.data`, and the device's, :mod:`bench.device_data`) build them from these, so that they draw the same
transforms.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from bench.identity import number_form

if TYPE_CHECKING:
    import torch

    from bench.overrides import Locator

HFLIP, VFLIP, ROT90, ROT90_HALF, SHIFT_SCALE_ROTATE = "hflip", "vflip", "rot90", "rot90_half", "shift_scale_rotate"
AUGMENTATIONS = (HFLIP, VFLIP, ROT90, ROT90_HALF, SHIFT_SCALE_ROTATE)
DEFAULT_AUGMENT = (HFLIP, VFLIP, ROT90)
# The probability that an augmentation touches a tile at all. rot90 always turns it by one of the four quarter turns,
# the identity included; rot90_half (the reference experiment's) does so half the time.
AUGMENT_P = {HFLIP: 0.5, VFLIP: 0.5, ROT90: 1.0, ROT90_HALF: 0.5, SHIFT_SCALE_ROTATE: 0.5}
# shift_scale_rotate, with albumentations' ShiftScaleRotate's defaults; each parameter is drawn uniformly in its range.
SHIFT_LIMIT = 0.0625  # a shift along each axis of up to this share of the side, either way
SCALE_RANGE = (0.9, 1.1)  # a scale in this range
ROTATE_LIMIT = 45.0  # a rotation of up to this many degrees, either way
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine")
DATA_PATHS = ("auto", "device", "loader")
AMP_MODES = ("fp16", "bf16")  # besides true (the card's best) and false
MAX_DEFAULT_WORKERS = 8
# class_weights may name a weighting, computed for each cell from its labelled training pixels (weights_from_counts):
# each class's share to this power, negated. inverse_sqrt_frequency is the milder: rare classes gain weight without the
# rarest taking the loss over.
CLASS_WEIGHTINGS = {"inverse_frequency": 1.0, "inverse_sqrt_frequency": 0.5}
RECIPE_DEFAULTS: dict[str, Any] = {
    "optimizer": "adam",
    "lr": 1e-3,
    "weight_decay": 0.0,
    "momentum": 0.9,  # sgd only
    "schedule": "cosine",
    "warmup_epochs": 0.0,
    "epochs": 10,
    "batch_size": 16,
    "eval_batch_size": None,  # None: twice the training batch
    "augment": list(DEFAULT_AUGMENT),
    "class_weights": None,
    "amp": True,  # on CUDA only (the CPU trains in float32): true (bf16 where the card has it, else fp16), "fp16",
    # "bf16" or false
    # device (batches made on the device), loader (DataLoader + albumentations); auto: device on CUDA
    "data_path": "auto",
    "compile": False,  # torch.compile the model; its compile time is reported apart (first_step_seconds)
    "num_workers": None,  # loader path: None is default_num_workers(device), 0 on the CPU, up to 8 on CUDA
    "sync_batchnorm": False,  # over several processes (bench run --ddp): BatchNorm statistics of the global batch
}
FLOAT_RECIPE_KEYS = ("lr", "weight_decay", "momentum", "warmup_epochs")
FLOAT32_MAX = 3.4028234663852886e38


def weights_from_counts(weighting: str, counts: list[int]) -> list[float]:
    """Class weights from the labelled pixels of each class (``counts``): each present class's share to the power
    ``-CLASS_WEIGHTINGS[weighting]``, scaled so that their mean over the labelled pixels is 1 (the loss keeps its
    scale); a class with no labelled pixel gets the largest weight (it never meets the loss unless pixels of it are
    labelled later)."""
    total = sum(counts)
    exponent = CLASS_WEIGHTINGS[weighting]
    raw = [(count / total) ** -exponent if count else None for count in counts]
    mean = sum(count / total * w for count, w in zip(counts, raw, strict=True) if w is not None)
    largest = max(w for w in raw if w is not None) / mean
    return [w / mean if w is not None else largest for w in raw]


def default_num_workers(device: torch.device) -> int:
    """The DataLoader workers of the loader path when the recipe (or ``bench perf --workers``) names none: 0 on the
    CPU, on CUDA one per CPU core, at most :data:`MAX_DEFAULT_WORKERS`."""
    return min(MAX_DEFAULT_WORKERS, os.cpu_count() or 1) if device.type == "cuda" else 0


def check_recipe(spec: Any, locator: Locator) -> tuple[dict[str, Any], dict[str, Any]]:
    """The checked recipe, with its numbers canonical (``weight_decay = 0`` is 0.0), and the values the grid wrote
    where they differ from those (:attr:`bench.identity.Cell.aliases`)."""
    if not isinstance(spec, dict):
        raise locator.error(f"[recipe] must be a table, not {spec!r}", "recipe", key="recipe")
    locator.check_keys(spec, set(RECIPE_DEFAULTS), table="recipe")
    recipe = {**RECIPE_DEFAULTS, **spec}

    def require(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise locator.error(f"[recipe] {key} = {recipe[key]!r}: {what}", key, "recipe")

    def number(value: Any) -> bool:  # and one that float32, which the optimisers compute in, can hold
        return isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) <= FLOAT32_MAX

    def whole(value: Any, least: int) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= least

    require(recipe["optimizer"] in OPTIMIZERS, "optimizer", f"must be one of {', '.join(OPTIMIZERS)}")
    require(recipe["schedule"] in SCHEDULES, "schedule", f"must be one of {', '.join(SCHEDULES)}")
    require(number(recipe["lr"]) and recipe["lr"] > 0, "lr", "must be a positive number")
    for key in ("weight_decay", "momentum", "warmup_epochs"):
        require(number(recipe[key]) and recipe[key] >= 0, key, "must be a number >= 0")
    for key in ("epochs", "batch_size"):
        require(whole(recipe[key], 1), key, "must be a positive integer")
    require(recipe["eval_batch_size"] is None or whole(recipe["eval_batch_size"], 1), "eval_batch_size",
            "must be a positive integer")
    require(recipe["num_workers"] is None or whole(recipe["num_workers"], 0), "num_workers",
            "must be a non-negative integer")
    augment = recipe["augment"]
    require(isinstance(augment, list) and all(isinstance(a, str) and a in AUGMENTATIONS for a in augment)
            and len(set(augment)) == len(augment), "augment",
            f"must be a list drawn from {', '.join(AUGMENTATIONS)}, each once")
    require(isinstance(recipe["amp"], bool) or recipe["amp"] in AMP_MODES, "amp",
            "must be true, false, " + " or ".join(f'"{mode}"' for mode in AMP_MODES))
    require(isinstance(recipe["compile"], bool), "compile", "must be true or false")
    require(isinstance(recipe["sync_batchnorm"], bool), "sync_batchnorm", "must be true or false")
    require(recipe["data_path"] in DATA_PATHS, "data_path", f"must be one of {', '.join(DATA_PATHS)}")
    weights = recipe["class_weights"]
    require(weights is None or (isinstance(weights, str) and weights in CLASS_WEIGHTINGS)
            or (isinstance(weights, list) and weights and all(number(w) and w > 0 for w in weights)),
            "class_weights", "must be a list of positive numbers, or " + " or ".join(f'"{name}"' for name in
                                                                           CLASS_WEIGHTINGS))
    canonical = {key: float(recipe[key]) for key in FLOAT_RECIPE_KEYS}
    if isinstance(weights, list):
        canonical["class_weights"] = [float(w) for w in weights]
    written = {key: recipe[key] for key, value in canonical.items() if number_form(value) != number_form(recipe[key])}
    return {**recipe, **canonical}, written
