"""The checks of a grid that build its components, before anything trains.

A builder that refuses its arguments (a UserError, or whatever a plugin's builder raises) becomes one line that says
where the component stands in the grid file, or the ``--set`` that gave it: :func:`build_checked`, the one wrapper of
both stages. When a grid file is read (:func:`bench.grid.parse_grid`), what the file alone shows: each loss and masker
built with its arguments. Once the grid's dataset is built (:func:`check_grid`, which a run and a dry run both call
before the store is touched), what needs its tiles: the architectures' size divisors against the tile sides, the class
weights against the class count, the losses with those weights, what each masker can honour on tiles of this size,
that an active masker's start masks label some pixel, and that no split is left with no annotated pixel at all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import registry
from bench.cell_job import GridData, grid_data
from bench.data import annotated_pixels
from bench.identity import Component, Grid
from bench.models import build_without_weights
from registry.errors import UserError


def builder_failure(kind: str, component: Component, err: Exception) -> str:
    """The message for a builder that raised ``err`` (not a UserError) when called with ``component``'s arguments."""
    arguments = ", ".join(f"{k}={v!r}" for k, v in component.build_kwargs.items()) or "its defaults"
    return f"{kind} {component.name!r} cannot be built with {arguments}: {type(err).__name__}: {err}"


def build_checked(build: Callable[[], Any], kind: str, component: Component, place: str | Callable[[str], str]):
    """``build()``; what it raises becomes a UserError that starts with ``place``, where the component stands (or a
    function of the error's text that says where: a dataset's message names the argument it refuses)."""
    try:
        return build()
    except UserError as err:
        message = str(err)
    except Exception as err:  # noqa: BLE001  (a plugin's builder may raise anything for a bad value)
        message = builder_failure(kind, component, err)
    raise UserError(f"{place(message) if callable(place) else place}: {message}") from None


def check_grid(grid: Grid) -> GridData:
    """The grid's dataset, built, and every check that needs it passed: raises :class:`UserError` naming the
    problem."""
    data = build_checked(lambda: grid_data(grid), "dataset", grid.dataset, grid.dataset_place)
    for split, purpose in (("train", "train on"), ("val", "be evaluated on")):
        if len(data.dataset.split(split)[0]) == 0:
            message = f"dataset {grid.dataset.name!r} has no {split} tiles: a cell needs tiles to {purpose}"
            raise UserError(f"{grid.dataset_place(f'{split}_size')}: {message}")
    for split, purpose in (("train", "train on"), ("val", "be evaluated on"), ("test", "be tested on")):
        # annotated_pixels is None when every pixel is (an empty split included: another check's)
        if split in data.dataset.splits and annotated_pixels(data.dataset.split(split)[1]) == 0:
            message = (f"dataset {grid.dataset.name!r} has no annotated pixel in its {split} split (every mask pixel "
                       f"is -1, not annotated): a cell needs labels to {purpose}")
            raise UserError(f"{grid.place('dataset', grid.dataset.name)}: {message}")
    height, width, channels = data.tile_shape()
    num_classes = data.dataset.num_classes
    weights = grid.cells[0].recipe["class_weights"]
    if isinstance(weights, str):  # a weighting (bench.recipe.CLASS_WEIGHTINGS): one weight per class, when trained
        weights = [1.0] * num_classes
    if weights is not None and len(weights) != num_classes:
        raise UserError(f"{grid.path}: [recipe] class_weights has {len(weights)} values; dataset "
                        f"{grid.dataset.name!r} has {num_classes} classes ({', '.join(data.dataset.class_names)})")
    for arch in {cell.arch.label: cell.arch for cell in grid.cells}.values():
        place = grid.place("archs", arch.label)
        model = build_checked(lambda: build_without_weights(arch, num_classes, channels), "architecture", arch, place)
        if height % model.size_divisor or width % model.size_divisor:
            raise UserError(f"{place}: architecture {arch.label!r} needs tile sides divisible by "
                            f"{model.size_divisor}, but {grid.dataset.name!r} tiles are {height}x{width}")
    for loss in {cell.loss.label: cell.loss for cell in grid.cells}.values():
        build_checked(lambda: registry.create_loss(loss.name, **loss.kwargs, weight=weights), "loss", loss,
                      grid.place("losses", loss.label))
    for masker, fraction in {(c.masker.label, c.fraction): (c.masker, c.fraction) for c in grid.cells}.values():
        place = grid.place("maskers", masker.label)
        built = build_checked(lambda: registry.create_masker(masker.name, **masker.kwargs), "masker", masker, place)
        check = getattr(built, "check", None)
        if check is not None:  # optional: refuses parameters or a fraction a tile of this size cannot honour
            build_checked(lambda: check(height, width, fraction), "masker", masker, place)
        if hasattr(built, "acquisition"):  # round 0 trains on the start masks: they must label something
            cell = next(c for c in grid.cells if c.masker.label == masker.label and c.fraction == fraction)
            if not data.start_keeps_labels(cell):
                raise UserError(f"{place}: masker {masker.label!r}: its start masker labels no pixel of the "
                                f"training split (seed {cell.seed}): round 0 would have nothing to train on")
    return data
