"""What a cell is, and its identity in the results store.

A grid (read by :mod:`bench.grid`) expands into cells, one per combination of architecture x loss x masker x label
fraction x seed. Everything a cell needs to be rerun is in its ``config``; the hash of that config is the cell's
identity. The dataset's location (``root``, ``cache_dir``: :data:`LOCATION_KEYS`) says where the data is, not what it
is: it is passed to the dataset's builder but kept out of the config, so moving the data does not orphan finished
results. Likewise a file argument of an architecture, loss or masker (a name ending in :data:`FILE_SUFFIX`, as
``pretrained_path``) is passed as an absolute path but enters the config as its content's SHA-256: the cell is the
same wherever the file is, and new weights are new cells. A loss's regularisers are part of the loss's config
(``loss.regularizers``, a list of ``{name, weight, kwargs}``), hence of the cell's identity.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry.annotation import PUBLISHED_COSTS

CONFIG_VERSION = 1  # bump when a change to the training code makes old results incomparable
# Recipe keys added after results were stored, each with the value that behaves as the code did before it: at that
# value a key stays out of the cell's identity, so that adding it did not orphan every stored cell.
NEUTRAL_RECIPE: dict[str, Any] = {"sync_batchnorm": False}
LOCATION_KEYS = ("root", "cache_dir")  # dataset keyword arguments that say where the data is, not what it is
FILE_SUFFIX = "_path"  # an architecture's, loss's or masker's argument ending so names a file (pretrained_path)


@dataclass(frozen=True)
class Component:
    """One registry entry on an axis: its name, the keyword arguments it is built with, and its label in tables.

    A loss may carry ``regularizers``: ``{"name", "weight", "kwargs"}`` dicts, added to it in training. They are in
    the config only when there are some, so the identities of plain cells do not change."""

    name: str
    label: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    regularizers: tuple[dict[str, Any], ...] = ()
    files: dict[str, str] = field(default_factory=dict)  # file arguments (FILE_SUFFIX): name -> absolute path
    # Values as the grid wrote them where they differ from the canonical ones (``gamma = 2`` for 2.0): (path in
    # as_config(), written value). Cells stored before numbers were made canonical are found by them (Cell.aliases).
    written: tuple[tuple[tuple, Any], ...] = ()

    @property
    def build_kwargs(self) -> dict[str, Any]:
        """What the builder is called with: the keyword arguments and the file arguments' paths."""
        return {**self.kwargs, **self.files}

    def as_config(self) -> dict[str, Any]:
        """The identity: a file argument counts by its content (``sha256:...``), not by where the file is."""
        kwargs = {**self.kwargs, **{name: f"sha256:{file_digest(path)[:16]}" for name, path in self.files.items()}}
        config = {"name": self.name, "label": self.label, "kwargs": kwargs}
        if self.regularizers:
            config["regularizers"] = [dict(r) for r in self.regularizers]
        return config


def file_digest(path: str) -> str:
    """The SHA-256 of a file's content, computed once per version of the file (its size and modification time)."""
    stat = Path(path).stat()
    return _cached_digest(path, stat.st_size, stat.st_mtime_ns)


@functools.cache
def _cached_digest(path: str, size: int, mtime_ns: int) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def config_id(config: dict[str, Any]) -> str:
    """A cell's identity: the hash of its config."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def number_form(value: Any) -> str:
    """A value's JSON, which tells ``2`` from ``2.0`` (equal in Python): a value written in another form than its
    canonical one is kept as written (``Component.written``, ``Cell.recipe_written``) for the cell's aliases."""
    return json.dumps(value, sort_keys=True, default=str)


@dataclass(frozen=True)
class Cell:
    grid: str
    dataset: Component
    arch: Component
    loss: Component
    masker: Component
    fraction: float
    seed: int
    recipe: dict[str, Any]
    masker_uses_fraction: bool = True  # for the label only: a masker that ignores the fraction runs at 1.0
    recipe_written: dict[str, Any] = field(default_factory=dict)  # recipe values as written, where not canonical

    @property
    def config(self) -> dict[str, Any]:
        return {
            "version": CONFIG_VERSION,
            "grid": self.grid,
            "dataset": self.dataset.as_config(),
            "arch": self.arch.as_config(),
            "loss": self.loss.as_config(),
            "masker": self.masker.as_config(),
            "fraction": self.fraction,
            "seed": self.seed,
            "recipe": {k: v for k, v in self.recipe.items() if k not in NEUTRAL_RECIPE or v != NEUTRAL_RECIPE[k]},
        }

    @property
    def cell_id(self) -> str:
        return config_id(self.config)

    @property
    def aliases(self) -> tuple[str, ...]:
        """Other ids this cell may be stored under: its id with the numbers as the grid wrote them, which is how
        cells were stored before numbers that are equal as numbers (``0`` and ``0.0``) were made one cell."""
        written = [((kind, *path), value) for kind in ("dataset", "arch", "loss", "masker")
                   for path, value in getattr(self, kind).written]
        if not written and not self.recipe_written:
            return ()
        config = json.loads(json.dumps(self.config))
        for path, value in written:
            node = config
            for part in path[:-1]:
                node = node[part]
            node[path[-1]] = value
        for key, value in self.recipe_written.items():
            if key in config["recipe"]:  # a recipe key left out of the identity stays out
                config["recipe"][key] = value
        alias = config_id(config)
        return () if alias == self.cell_id else (alias,)

    @property
    def label(self) -> str:
        annotation = self.masker.label
        if self.masker_uses_fraction:
            annotation += f" {100 * self.fraction:.4g}%"
        return f"{self.arch.label} · {self.loss.label} · {annotation} · seed {self.seed}"


@dataclass(frozen=True)
class Grid:
    """A checked grid file (:func:`bench.grid.load_grid`): its cells, and where each of its components stands."""

    name: str
    path: Path
    description: str
    dataset: Component  # the dataset's identity: its name and the keyword arguments that define its data
    cells: tuple[Cell, ...]
    dataset_location: dict[str, str] = field(default_factory=dict)  # root, cache_dir: absolute paths
    # Where each component stands, for messages about it found after the grid is read: ("archs", label) -> "path
    # line N" or the --set that gave it; ("dataset", name) for the dataset, ("dataset", key) for its arguments.
    places: dict[tuple[str, str], str] = field(default_factory=dict)
    # Seconds per annotation unit ([annotation_cost] over registry.annotation's published figures): what a cell's
    # annotation is priced at, never part of its identity.
    annotation_cost: dict[str, float] = field(default_factory=lambda: dict(PUBLISHED_COSTS))

    def cells_by_id(self) -> dict[str, Cell]:
        """The cells by every id they may be stored under (their id and their aliases)."""
        return {cell_id: cell for cell in self.cells for cell_id in (cell.cell_id, *cell.aliases)}

    def place(self, axis: str, label: str) -> str:
        return self.places.get((axis, label), str(self.path))

    def dataset_place(self, message: str) -> str:
        """Where the dataset's argument that ``message`` names stands, else where the dataset does."""
        named = [key for key in self.dataset.kwargs if re.search(rf"\b{re.escape(key)}\b", message)]
        return self.place("dataset", named[0] if named else self.dataset.name)

    def dataset_kwargs(self) -> dict[str, Any]:
        """Everything the dataset's builder is called with: identity and location."""
        return {**self.dataset.kwargs, **self.dataset_location}
