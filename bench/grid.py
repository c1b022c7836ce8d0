"""Grid files: a TOML file under ``tasks/`` naming a dataset, the axes of an experiment, and a training recipe.

A grid expands into cells, one per combination of architecture x loss x masker x label fraction x seed. Everything a
cell needs to be rerun is in its ``config``; the hash of that config is the cell's identity in the results store.
Every mistake in a grid file is reported before anything runs, with the file and line where it stands.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import registry
from registry.errors import UserError

GRID_DIR = Path(__file__).resolve().parent.parent / "tasks"
CONFIG_VERSION = 1  # bump when a change to the training code makes old results incomparable

AUGMENTATIONS = ("hflip", "vflip", "rot90")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine")
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
    "augment": list(AUGMENTATIONS),
    "class_weights": None,
    "amp": True,  # on CUDA only; the CPU trains in float32
    "num_workers": None,  # None: 0 on the CPU, up to 8 on CUDA
}
TOP_KEYS = {"description", "dataset", "axes", "recipe"}
AXIS_KEYS = {"archs", "losses", "maskers", "fractions", "seeds", "include", "exclude"}
FILTER_KEYS = {"arch", "loss", "masker", "fraction", "seed"}


@dataclass(frozen=True)
class Component:
    """One registry entry on an axis: its name, the keyword arguments it is built with, and its label in tables."""

    name: str
    label: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def as_config(self) -> dict[str, Any]:
        return {"name": self.name, "label": self.label, "kwargs": self.kwargs}


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
            "recipe": self.recipe,
        }

    @property
    def cell_id(self) -> str:
        canonical = json.dumps(self.config, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @property
    def label(self) -> str:
        return f"{self.arch.label} · {self.loss.label} · {self.masker.label} {100 * self.fraction:.4g}% · seed {self.seed}"


@dataclass(frozen=True)
class Grid:
    name: str
    path: Path
    description: str
    dataset: Component
    cells: tuple[Cell, ...]


def resolve_grid_path(name_or_path: str) -> Path:
    """A path to a TOML file, or the name of a grid in ``./tasks`` or in the project's own ``tasks/``."""
    candidates = [Path(name_or_path)]
    if not name_or_path.endswith(".toml"):
        candidates += [Path("tasks") / f"{name_or_path}.toml", GRID_DIR / f"{name_or_path}.toml"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    known = ", ".join(list_grids()) or "none"
    raise UserError(f"grid not found: {name_or_path} (known grids: {known})")


def list_grids() -> list[str]:
    return sorted({p.stem for folder in (Path("tasks"), GRID_DIR) if folder.is_dir() for p in folder.glob("*.toml")})


def load_grid(name_or_path: str, epochs: int | None = None) -> Grid:
    """Read and check a grid file; ``epochs`` overrides the recipe's."""
    path = resolve_grid_path(name_or_path)
    return parse_grid(path.read_text(encoding="utf-8"), path, epochs=epochs)


def parse_grid(text: str, path: Path, epochs: int | None = None) -> Grid:
    where = _Locator(text, path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"{path}: not valid TOML: {err}") from None

    where.check_keys(data, TOP_KEYS, table="")
    for required in ("dataset", "axes"):
        if required not in data:
            raise UserError(f"{path}: missing table [{required}]")
    dataset = _component(data["dataset"], "dataset", registry.DATASETS, where)
    axes = data["axes"]
    where.check_keys(axes, AXIS_KEYS, table="axes")
    archs = _axis(axes, "archs", registry.ARCHS, where)
    losses = _axis(axes, "losses", registry.LOSSES, where)
    maskers = _axis(axes, "maskers", registry.MASKERS, where)
    fractions = _fractions(axes, where)
    seeds = _seeds(axes, where)
    recipe = _recipe(data.get("recipe", {}), where, epochs)
    include = _filters(axes, "include", where)
    exclude = _filters(axes, "exclude", where)

    name = path.stem
    cells: dict[str, Cell] = {}
    uses_fraction = {}
    for masker in maskers:
        try:
            uses_fraction[masker.label] = registry.create_masker(masker.name, **masker.kwargs).uses_fraction
        except UserError as err:
            raise where.error(str(err), masker.name) from None
    # Cells sharing partial masks (same seed, masker, fraction) come together, so each set of masks is drawn once.
    for seed, masker in itertools.product(seeds, maskers):
        for fraction, loss, arch in itertools.product(fractions if uses_fraction[masker.label] else [1.0], losses, archs):
            cell = Cell(name, dataset, arch, loss, masker, fraction, seed, recipe)
            keys = {"arch": arch.label, "loss": loss.label, "masker": masker.label, "fraction": fraction, "seed": seed}
            if include and not any(_matches(rule, keys) for rule in include):
                continue
            if any(_matches(rule, keys) for rule in exclude):
                continue
            cells.setdefault(cell.cell_id, cell)
    if not cells:
        raise UserError(f"{path}: the grid has no cells left after include/exclude")
    return Grid(name, path, str(data.get("description", "")), dataset, tuple(cells.values()))


# -- parsing helpers --------------------------------------------------------------------------------------------------


class _Locator:
    """Finds the line of a key or value in the grid's text, so that messages can point at it (tomllib gives the parsed
    data without positions)."""

    def __init__(self, text: str, path: Path):
        self.lines = text.splitlines()
        self.path = path

    def line_of(self, needle: str, table: str = "") -> int | None:
        start = 0
        if table:
            header = re.compile(r"^\s*\[\s*" + re.escape(table) + r"\s*\]")
            start = next((i for i, line in enumerate(self.lines) if header.match(line)), 0)
        pattern = re.compile(r"(^|[\s{,\[])" + re.escape(needle) + r"\s*=|[\"']" + re.escape(needle) + r"[\"']")
        for i in range(start, len(self.lines)):
            if pattern.search(self.lines[i].split("#", 1)[0]):
                return i + 1
        return None

    def error(self, message: str, needle: str, table: str = "") -> UserError:
        line = self.line_of(needle, table)
        return UserError(f"{self.path}{f' line {line}' if line else ''}: {message}")

    def check_keys(self, data: dict, allowed: set[str], table: str) -> None:
        for key in data:
            if key not in allowed:
                close = difflib.get_close_matches(key, sorted(allowed), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; allowed: {', '.join(sorted(allowed))}"
                where = f"[{table}]" if table else "the top level"
                raise self.error(f"unknown key {key!r} in {where}{hint}", key, table)


def _component(spec: Any, kind: str, reg: registry.Registry, where: _Locator) -> Component:
    """An axis entry: ``"unet"`` or ``{name = "unet", label = "unet-16", base_channels = 16}``."""
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise where.error(f"a {kind} must be a name or a table with a 'name' key, not {spec!r}", kind)
    kwargs = {k: v for k, v in spec.items() if k not in ("name", "label")}
    name = spec["name"]
    try:
        reg.entry(name)
    except registry.UnknownNameError as err:
        raise where.error(str(err), name) from None
    label = str(spec.get("label", name))
    return Component(name, label, kwargs)


def _axis(axes: dict, key: str, reg: registry.Registry, where: _Locator) -> list[Component]:
    specs = axes.get(key)
    if not isinstance(specs, list) or not specs:
        raise where.error(f"[axes] {key} must be a non-empty list", key, "axes")
    components = [_component(spec, key[:-1], reg, where) for spec in specs]
    labels = [c.label for c in components]
    for label in labels:
        if labels.count(label) > 1:
            raise where.error(f"two {key} are labelled {label!r}; give them distinct 'label's", key, "axes")
    return components


def _fractions(axes: dict, where: _Locator) -> list[float]:
    fractions = axes.get("fractions", [1.0])
    if not isinstance(fractions, list) or not fractions:
        raise where.error("[axes] fractions must be a non-empty list", "fractions", "axes")
    for value in fractions:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
            raise where.error(f"label fraction {value!r} is outside (0, 1]", "fractions", "axes")
    return [float(v) for v in fractions]


def _seeds(axes: dict, where: _Locator) -> list[int]:
    seeds = axes.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                                           for s in seeds):
        raise where.error("[axes] seeds must be a non-empty list of non-negative integers", "seeds", "axes")
    return seeds


def _filters(axes: dict, key: str, where: _Locator) -> list[dict]:
    rules = axes.get(key, [])
    if not isinstance(rules, list) or not all(isinstance(rule, dict) for rule in rules):
        raise where.error(f"[axes] {key} must be a list of tables such as {{arch = \"unet\", fraction = 0.1}}", key)
    for rule in rules:
        where.check_keys(rule, FILTER_KEYS, table="axes")
    return rules


def _matches(rule: dict, keys: dict) -> bool:
    return all(
        math.isclose(keys[k], v) if isinstance(v, float) else keys[k] == v
        for k, v in rule.items()
    )


def _recipe(spec: dict, where: _Locator, epochs: int | None) -> dict[str, Any]:
    where.check_keys(spec, set(RECIPE_DEFAULTS), table="recipe")
    recipe = {**RECIPE_DEFAULTS, **spec}
    if epochs is not None:
        recipe["epochs"] = epochs

    def require(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise where.error(f"[recipe] {key} = {recipe[key]!r}: {what}", key, "recipe")

    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    require(recipe["optimizer"] in OPTIMIZERS, "optimizer", f"must be one of {', '.join(OPTIMIZERS)}")
    require(recipe["schedule"] in SCHEDULES, "schedule", f"must be one of {', '.join(SCHEDULES)}")
    require(number(recipe["lr"]) and recipe["lr"] > 0, "lr", "must be a positive number")
    for key in ("weight_decay", "momentum", "warmup_epochs"):
        require(number(recipe[key]) and recipe[key] >= 0, key, "must be a number >= 0")
    for key in ("epochs", "batch_size"):
        require(isinstance(recipe[key], int) and not isinstance(recipe[key], bool) and recipe[key] > 0, key,
                "must be a positive integer")
    for key in ("eval_batch_size", "num_workers"):
        value = recipe[key]
        require(value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 0), key,
                "must be a non-negative integer")
    require(isinstance(recipe["augment"], list) and set(recipe["augment"]) <= set(AUGMENTATIONS), "augment",
            f"must be a list drawn from {', '.join(AUGMENTATIONS)}")
    require(isinstance(recipe["amp"], bool), "amp", "must be true or false")
    weights = recipe["class_weights"]
    require(weights is None or (isinstance(weights, list) and weights and all(number(w) and w > 0 for w in weights)),
            "class_weights", "must be a list of positive numbers")
    return recipe
