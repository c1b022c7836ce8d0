"""Grid files: a TOML file under ``tasks/`` naming a dataset, the axes of an experiment, and a training recipe.

A grid expands into cells, one per combination of architecture x loss x masker x label fraction x seed. Everything a
cell needs to be rerun is in its ``config``; the hash of that config is the cell's identity in the results store.
The dataset's location (``root``, ``cache_dir``) says where the data is, not what it is: it is passed to the dataset's
builder but kept out of the config, so moving the data does not orphan finished results. Likewise a file argument of
an architecture, loss or masker (a name ending in ``_path``, as ``pretrained_path``) is passed as an absolute path but
enters the config as its content's SHA-256: the cell is the same wherever the file is, and new weights are new cells.

A loss on the losses axis may carry regularisers, terms on the unlabelled pixels from ``registry.REGULARIZERS``: an
expression ``"partial_ce + 0.1 * entropy + gated_crf"`` (one loss, then ``+ weight * name`` terms; no weight means 1)
or a table
``{ name = "partial_ce", label = "...", regularizers = [{ name = "entropy", weight = 0.1, rampup = 0.2 }] }``.
They are part of the loss's config (``loss.regularizers``, a list of ``{name, weight, kwargs}``), hence of the cell's
identity; the label defaults to the expression.

Overrides from the command line (``--set recipe.lr=1e-4``) are applied to the parsed file before it is checked. Every
mistake is reported before anything runs, with the file and line where it stands, or the ``--set`` it came from.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import importlib.metadata
import inspect
import itertools
import json
import math
import re
import tomllib
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import registry
from registry.arguments import canonical_arguments
from registry.errors import UserError

GRID_DIR = Path(__file__).resolve().parent.parent / "tasks"  # a checkout (or an editable install) of the project
DISTRIBUTION = "partialseg-bench"
CONFIG_VERSION = 1  # bump when a change to the training code makes old results incomparable

AUGMENTATIONS = ("hflip", "vflip", "rot90", "rot90_half", "shift_scale_rotate")
DEFAULT_AUGMENT = ("hflip", "vflip", "rot90")
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
    "augment": list(DEFAULT_AUGMENT),
    "class_weights": None,
    "amp": True,  # on CUDA only (the CPU trains in float32): true (bf16 where the card has it, else fp16), "fp16",
    # "bf16" or false
    # device (batches made on the device), loader (DataLoader + albumentations); auto: device on CUDA
    "data_path": "auto",
    "compile": False,  # torch.compile the model; its compile time is reported apart (first_step_seconds)
    "num_workers": None,  # loader path: None is 0 on the CPU, up to 8 on CUDA
    "sync_batchnorm": False,  # over several processes (bench run --ddp): BatchNorm statistics of the global batch
}
# Recipe keys added after results were stored, each with the value that behaves as the code did before it: at that
# value a key stays out of the cell's identity, so that adding it did not orphan every stored cell.
NEUTRAL_RECIPE: dict[str, Any] = {"sync_batchnorm": False}
DATA_PATHS = ("auto", "device", "loader")
AMP_MODES = ("fp16", "bf16")  # besides true (the card's best) and false
TOP_KEYS = {"description", "dataset", "axes", "recipe"}
AXIS_KEYS = {"archs", "losses", "maskers", "fractions", "seeds", "include", "exclude"}
FILTER_KEYS = {"arch", "loss", "masker", "fraction", "seed"}
LOCATION_KEYS = ("root", "cache_dir")  # dataset keyword arguments that say where the data is, not what it is
FILE_SUFFIX = "_path"  # an architecture's, loss's or masker's argument ending so names a file (pretrained_path)
_OVERRIDE_KEY = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
_BARE_WORD = re.compile(r"^[^\s\[\]{}\"'=#,]+$")  # taken as a string when it is not a TOML value: adamw, /data/x


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
    return _digest(path, stat.st_size, stat.st_mtime_ns)


@functools.cache
def _digest(path: str, size: int, mtime_ns: int) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def config_id(config: dict[str, Any]) -> str:
    """A cell's identity: the hash of its config."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


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
    name: str
    path: Path
    description: str
    dataset: Component  # the dataset's identity: its name and the keyword arguments that define its data
    cells: tuple[Cell, ...]
    dataset_location: dict[str, str] = field(default_factory=dict)  # root, cache_dir: absolute paths
    # Where each component stands, for messages about it found after the grid is read: ("archs", label) -> "path
    # line N" or the --set that gave it; ("dataset", name) for the dataset, ("dataset", key) for its arguments.
    places: dict[tuple[str, str], str] = field(default_factory=dict)

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


def resolve_grid_path(name_or_path: str) -> Path:
    """A path to a TOML file, or the name of a grid in ``./tasks`` or among the project's own grids."""
    candidates = [Path(name_or_path)]
    if not name_or_path.endswith(".toml"):
        candidates += [folder / f"{name_or_path}.toml" for folder in grid_dirs()]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    known = ", ".join(list_grids()) or "none"
    raise UserError(f"grid not found: {name_or_path} (known grids: {known})")


def grid_dirs() -> list[Path]:
    """Where grids are looked up by name, first match wins: the user's ``./tasks``, then the project's own grids."""
    folders = (Path("tasks"), GRID_DIR, installed_grid_dir())
    return [folder for folder in folders if folder is not None and folder.is_dir()]


@functools.cache
def installed_grid_dir() -> Path | None:
    """The project's grids as a wheel installs them (``<prefix>/share/partialseg-bench/tasks``, see pyproject.toml's
    data-files): a non-editable install has no ``tasks/`` beside the package. The distribution's file list says
    where the prefix is, whatever the install scheme (venv, ``--user``, ``--prefix``)."""
    try:
        files = importlib.metadata.distribution(DISTRIBUTION).files or ()
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.suffix == ".toml" and file.parent.name == "tasks":
            return Path(file.locate()).resolve().parent
    return None


def list_grids() -> list[str]:
    return sorted({p.stem for folder in grid_dirs() for p in folder.glob("*.toml")})


def load_grid(name_or_path: str, epochs: int | None = None, overrides: Sequence[str] = (),
              data_root: str | Path | None = None) -> Grid:
    """Read and check a grid file. ``overrides`` are ``KEY=VALUE`` strings (``recipe.lr=1e-4``); ``epochs`` is the same
    as ``recipe.epochs=N``; ``data_root`` sets the dataset's ``root`` (a relative one is taken from the current
    folder)."""
    path = resolve_grid_path(name_or_path)
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise UserError(f"{path} line {line}: not UTF-8 text (byte 0x{data[err.start]:02x}); save the grid as "
                        "UTF-8") from None
    return parse_grid(text, path, epochs=epochs, overrides=overrides, data_root=data_root)


def parse_grid(text: str, path: Path, epochs: int | None = None, overrides: Sequence[str] = (),
               data_root: str | Path | None = None) -> Grid:
    where = _Locator(text, path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"{path}: not valid TOML: {err}") from None
    if epochs is not None:
        apply_override(data, "recipe.epochs", epochs, f"--epochs {epochs}", where)
    for argument in overrides:
        key, value = parse_override(argument)
        apply_override(data, key, value, f"--set {argument}", where)
    if data_root is not None:
        data_root = Path(data_root).expanduser().resolve()
        apply_override(data, "dataset.root", str(data_root), f"--data-root {data_root}", where)

    where.check_keys(data, TOP_KEYS, table="")
    for required in ("dataset", "axes"):
        if required not in data:
            raise UserError(f"{path}: missing table [{required}]")
    if not isinstance(data.get("description", ""), str):
        raise where.error(f"description must be a string, not {data['description']!r}", "description")
    dataset, location = _dataset(data["dataset"], where)
    axes = data["axes"]
    if not isinstance(axes, dict):
        raise where.error(f"[axes] must be a table (archs = [...], losses = [...], ...), not {axes!r}", "axes",
                          key="axes")
    where.check_keys(axes, AXIS_KEYS, table="axes")
    archs = _axis(axes, "archs", registry.ARCHS, where)
    losses = _axis(axes, "losses", registry.LOSSES, where)
    for loss in losses:  # built once here, so that a bad argument is reported with its line
        built(lambda: registry.create_loss(loss.name, **loss.kwargs), "loss", loss, where, "axes.losses")
    maskers = _axis(axes, "maskers", registry.MASKERS, where)
    fractions = _fractions(axes, where)
    seeds = _seeds(axes, where)
    recipe, recipe_written = _recipe(data.get("recipe", {}), where)
    include = _filters(axes, "include", where)
    exclude = _filters(axes, "exclude", where)

    name = path.stem
    cells: dict[str, Cell] = {}
    uses_fraction = {}
    for masker in maskers:
        uses_fraction[masker.label] = built(lambda: registry.create_masker(masker.name, **masker.kwargs), "masker",
                                            masker, where, "axes.maskers").uses_fraction
    # Cells sharing partial masks (same seed, masker, fraction) come together, so each set of masks is drawn once.
    for seed, masker in itertools.product(seeds, maskers):
        for fraction, loss, arch in itertools.product(fractions if uses_fraction[masker.label] else [1.0],
                                                      losses, archs):
            cell = Cell(name, dataset, arch, loss, masker, fraction, seed, recipe, uses_fraction[masker.label],
                        recipe_written)
            keys = {"arch": arch.label, "loss": loss.label, "masker": masker.label, "fraction": fraction, "seed": seed}
            if include and not any(_matches(rule, keys) for rule in include):
                continue
            if any(_matches(rule, keys) for rule in exclude):
                continue
            cells.setdefault(cell.cell_id, cell)
    if not cells:
        raise UserError(f"{path}: the grid has no cells left after include/exclude")
    places = {("dataset", dataset.name): where.prefix("name", "dataset", key="dataset.name")}
    places.update({("dataset", key): where.prefix(key, "dataset", key=f"dataset.{key}") for key in dataset.kwargs})
    for axis, components in (("archs", archs), ("losses", losses), ("maskers", maskers)):
        for component in components:
            places[axis, component.label] = where.prefix(component.name, key=f"axes.{axis}")
    return Grid(name, path, data.get("description", ""), dataset, tuple(cells.values()), location, places)


def built(build, kind: str, component: Component, where: _Locator, key: str):
    """``build()``, with whatever it raises for the grid's arguments reported with the line (or --set) where the
    component stands: a builder's UserError as it is, anything else as a builder that cannot take them."""
    try:
        return build()
    except UserError as err:
        raise where.error(str(err), component.name, key=key) from None
    except Exception as err:  # noqa: BLE001  (a plugin's builder may raise anything for a bad value)
        raise where.error(builder_failure(kind, component, err), component.name, key=key) from None


def builder_failure(kind: str, component: Component, err: Exception) -> str:
    arguments = ", ".join(f"{k}={v!r}" for k, v in component.build_kwargs.items()) or "its defaults"
    return f"{kind} {component.name!r} cannot be built with {arguments}: {type(err).__name__}: {err}"


# -- overrides --------------------------------------------------------------------------------------------------------


def command_line_value(text: str) -> Any:
    """A value typed on the command line (``--set``, ``--arch``), read as TOML (``1e-4``, ``[0, 1]``, ``"adamw"``,
    ``{name = "unet", base_channels = 8}``); a bare word that is not TOML (``adamw``, ``/data/x``) is a string.
    Anything else raises ValueError."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        if _BARE_WORD.match(text):
            return text
        raise ValueError(f"{text!r} is not a TOML value (quote strings that hold spaces or punctuation: "
                         "'KEY=\"a b\"')") from None


def parse_override(argument: str) -> tuple[str, Any]:
    """``KEY=VALUE`` -> (dotted key, value), the value read by :func:`command_line_value`."""
    key, equals, text = argument.partition("=")
    key, text = key.strip(), text.strip()
    if not equals or not _OVERRIDE_KEY.match(key):
        raise UserError(f"--set {argument}: expected KEY=VALUE with a dotted KEY, such as recipe.lr=1e-4")
    try:
        return key, command_line_value(text)
    except ValueError as err:
        raise UserError(f"--set {argument}: {err}") from None


def apply_override(data: dict, key: str, value: Any, origin: str, where: _Locator) -> None:
    """Set ``data[a][b]...[z] = value`` for ``key`` ``a.b....z``, creating missing tables; ``where`` remembers that
    the key comes from ``origin``, so that a mistake in it is reported as the override's, not as the file's."""
    node = data
    parts = key.split(".")
    for depth, part in enumerate(parts[:-1]):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"{origin}: {'.'.join(parts[:depth + 1])} is not a table")
    node[parts[-1]] = value
    where.overridden[key] = origin


# -- parsing helpers --------------------------------------------------------------------------------------------------


class _Locator:
    """Finds the line of a key or value in the grid's text, so that messages can point at it (tomllib gives the parsed
    data without positions)."""

    def __init__(self, text: str, path: Path):
        self.lines = text.splitlines()
        self.path = path
        self.overridden: dict[str, str] = {}  # dotted key -> the command-line argument that set it

    def origin(self, key: str) -> str | None:
        """The override that set ``key``, a table above it, or a key below it (the latest wins); None if the file."""
        found = None
        for overridden, origin in self.overridden.items():
            if any(a == b or a.startswith(b + ".") for a, b in ((key, overridden), (overridden, key))):
                found = origin
        return found

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

    def prefix(self, needle: str, table: str = "", key: str | None = None) -> str:
        """Where the value at dotted ``key`` (default: ``table.needle``) comes from: the override that set it, or
        the file and the line where ``needle`` stands."""
        origin = self.origin(key or ".".join(filter(None, (table, needle))))
        if origin is not None:
            return origin
        line = self.line_of(needle, table)
        return f"{self.path}{f' line {line}' if line else ''}"

    def error(self, message: str, needle: str, table: str = "", key: str | None = None) -> UserError:
        """A mistake about the value at ``key``, named by :meth:`prefix`."""
        return UserError(f"{self.prefix(needle, table, key)}: {message}")

    def check_keys(self, data: dict, allowed: set[str], table: str, key: str | None = None) -> None:
        for name in data:
            if name not in allowed:
                close = difflib.get_close_matches(name, sorted(allowed), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; allowed: {', '.join(sorted(allowed))}"
                where = f"[{table}]" if table else "the top level"
                raise self.error(f"unknown key {name!r} in {where}{hint}", name, table,
                                 key=".".join(filter(None, (key or table, name))))


def _component(spec: Any, kind: str, reg: registry.Registry, where: _Locator, key: str) -> Component:
    """An axis entry: ``"unet"`` or ``{name = "unet", label = "unet-16", base_channels = 16}``; ``key`` is where it
    stands (``axes.archs``, or ``dataset``, a table whose fields are keys of their own). Keyword arguments that its
    builder does not take are refused here, before anything runs."""
    def field_key(name: str) -> str:
        return f"{key}.{name}" if kind == "dataset" else key

    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        article = "an" if reg.kind[0] in "aeiou" else "a"
        raise where.error(f"{article} {reg.kind} must be a name or a table with a 'name' key, not {spec!r}", kind,
                          key=field_key("name"))
    kwargs = {k: v for k, v in spec.items() if k not in ("name", "label")}
    name = spec["name"]
    try:
        builder = reg.entry(name).builder
    except registry.UnknownNameError as err:
        raise where.error(str(err), name, key=field_key("name")) from None
    try:
        signature = inspect.signature(builder)
        signature.bind_partial(**kwargs)
    except TypeError as err:
        unknown = next((k for k in kwargs if repr(k) in str(err)), name)
        # The harness gives architectures their class and channel counts: not the user's to set, so not offered.
        offered = [p for p in signature.parameters if p not in ("num_classes", "in_chans")]
        takes = f" (it takes {', '.join(offered)})" if offered else " (it takes no argument)"
        raise where.error(f"{reg.kind} {name!r}: {err}{takes}", unknown, key=field_key(unknown)) from None
    except ValueError:  # no inspectable signature: the builder will say
        pass
    written = kwargs
    try:
        kwargs = canonical_arguments(reg.kind, name, builder, written)
    except UserError as err:
        wrong = next((k for k in written if f": {k} must be" in str(err)), name)
        raise where.error(str(err), wrong, key=field_key(wrong)) from None
    changed = tuple((("kwargs", k), value) for k, value in written.items()
                    if _number_form(kwargs[k]) != _number_form(value))
    if "label" in spec and not _is_label(spec["label"]):
        raise where.error(f"{reg.kind} {name!r}: label must be a non-empty line of text (no tab or line break), not "
                          f"{spec['label']!r}", "label", key=field_key("label"))
    label = spec.get("label", name)
    if kind == "dataset":  # its paths are locations (LOCATION_KEYS): see _dataset
        return Component(name, label, kwargs, written=changed)
    files = {k: _file_argument(k, v, where, key) for k, v in kwargs.items()
             if k.endswith(FILE_SUFFIX) and v is not None}
    return Component(name, label, {k: v for k, v in kwargs.items() if k not in files}, files=files,
                     written=tuple(entry for entry in changed if entry[0][1] not in files))


def _is_label(value: Any) -> bool:
    """A label is shown in tables, legends and file listings: some text, on one line, with no control character."""
    return isinstance(value, str) and bool(value.strip()) and not any(unicodedata.category(c) == "Cc" for c in value)


def _number_form(value: Any) -> str:
    """A value's JSON, which tells ``2`` from ``2.0`` (equal in Python)."""
    return json.dumps(value, sort_keys=True, default=str)


def _file_argument(name: str, value: Any, where: _Locator, key: str) -> str:
    """A file argument as an absolute path, a relative one taken from the grid file's folder (from the current folder
    when the command line set it), ``~`` expanded; the file must exist: its content is part of the cell's identity."""
    if not isinstance(value, (str, Path)) or not str(value):
        raise where.error(f"{name} must be a path to a file, not {value!r}", name, key=key)
    base = Path.cwd() if where.origin(key) else where.path.parent
    path = (base / Path(value).expanduser()).resolve()
    if not path.is_file():
        raise where.error(f"{name} {str(value)!r}: no such file ({path})", name, key=key)
    return str(path)


def _dataset(spec: Any, where: _Locator) -> tuple[Component, dict[str, str]]:
    """The dataset's identity, and its location: ``root`` and ``cache_dir``, absolute, a relative one taken from the
    grid file's folder (from the current folder when the command line set it), ``~`` expanded."""
    dataset = _component(spec, "dataset", registry.DATASETS, where, key="dataset")
    location = {}
    for name in LOCATION_KEYS:
        value = dataset.kwargs.get(name)
        if value is None:
            continue
        if not isinstance(value, (str, Path)) or not str(value):
            raise where.error(f"[dataset] {name} must be a path, not {value!r}", name, "dataset")
        base = Path.cwd() if where.origin(f"dataset.{name}") else where.path.parent
        location[name] = str((base / Path(value).expanduser()).resolve())
    identity = {k: v for k, v in dataset.kwargs.items() if k not in LOCATION_KEYS}
    written = tuple(entry for entry in dataset.written if entry[0][1] not in LOCATION_KEYS)
    return Component(dataset.name, dataset.label, identity, written=written), location


def _axis(axes: dict, key: str, reg: registry.Registry, where: _Locator) -> list[Component]:
    specs = axes.get(key)
    if not isinstance(specs, list) or not specs:
        raise where.error(f"[axes] {key} must be a non-empty list", key, "axes")
    if key == "losses":
        components = [_loss(spec, where) for spec in specs]
    else:
        components = [_component(spec, key[:-1], reg, where, key=f"axes.{key}") for spec in specs]
    if key == "losses":
        for loss in components:
            if "weight" in loss.kwargs:  # the harness passes [recipe] class_weights as the loss's `weight`
                raise where.error(f"loss {loss.name!r}: class weights go in [recipe] class_weights, not in the "
                                  "loss's table", "weight", key="axes.losses")
    labels = [c.label for c in components]
    for label in labels:
        if labels.count(label) > 1:
            raise where.error(f"two {key} are labelled {label!r}; give them distinct 'label's", key, "axes")
    return components


_TERM = re.compile(r"^(?:(?P<weight>[^*]+?)\s*\*\s*)?(?P<name>[A-Za-z_][\w.:-]*)$")


def _expression_label(base: str, regularizers: Sequence[dict[str, Any]]) -> str:
    terms = [base] + [r["name"] if r["weight"] == 1 else f"{r['weight']:g} * {r['name']}" for r in regularizers]
    return " + ".join(terms)


def _regularizer(name: Any, weight: Any, kwargs: dict[str, Any], where: _Locator, needle: str) -> dict[str, Any]:
    """One regulariser term, checked: a known name (else the close matches), a positive finite weight, keyword
    arguments its builder takes (it is built once here, so a bad value is reported with its line)."""
    if not isinstance(name, str):
        raise where.error(f"a regularizer must be a name or a table with a 'name' key, not {name!r}", needle,
                          key="axes.losses")
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight <= 0:
        raise where.error(f"regularizer {name!r}: weight must be a positive finite number, not {weight!r}", needle,
                          key="axes.losses")
    try:
        builder = registry.REGULARIZERS.entry(name).builder
    except registry.UnknownNameError as err:
        raise where.error(str(err), needle, key="axes.losses") from None
    try:
        canonical = canonical_arguments("regularizer", name, builder, kwargs)
        registry.create_regularizer(name, **canonical)
    except UserError as err:
        message = str(err) if str(err).startswith("regularizer") else f"regularizer {name!r}: {err}"
        raise where.error(message, needle, key="axes.losses") from None
    except Exception as err:  # noqa: BLE001  (a plugin's builder may raise anything for a bad value)
        raise where.error(f"regularizer {name!r} cannot be built with {kwargs}: {type(err).__name__}: {err}", needle,
                          key="axes.losses") from None
    return {"name": name, "weight": float(weight), "kwargs": canonical}


def _loss(spec: Any, where: _Locator) -> Component:
    """A losses-axis entry: a loss as for any axis, an expression ``"partial_ce + 0.1 * entropy"``, or a table with
    a ``regularizers`` list."""
    regularizers: list[dict[str, Any]] = []
    given_kwargs: list[dict[str, Any]] = []  # each regulariser's keyword arguments as written
    label = None
    if isinstance(spec, str) and any(ch in spec for ch in "+*-"):
        terms = [t.strip() for t in spec.split("+")]
        if any(not t for t in terms):
            raise where.error(f"loss {spec!r}: expected 'loss + weight * regularizer + ...'", spec, key="axes.losses")
        base = terms[0]
        if not _TERM.match(base) or "*" in base:
            raise where.error(f"loss {spec!r}: expected a loss name first, then '+ weight * regularizer' terms "
                              "(weights are positive: no '-')", spec, key="axes.losses")
        for term in terms[1:]:
            match = _TERM.match(term)
            if not match:
                raise where.error(f"loss {spec!r}: {term!r} is not 'weight * regularizer'", spec, key="axes.losses")
            text = match["weight"]
            try:
                weight = 1.0 if text is None else float(text)
            except ValueError:
                weight = text
            regularizers.append(_regularizer(match["name"], weight, {}, where, spec))
            given_kwargs.append({})
        try:
            registry.LOSSES.entry(base)
        except registry.UnknownNameError as err:
            raise where.error(str(err), spec, key="axes.losses") from None
        spec = base
    elif isinstance(spec, dict) and "regularizers" in spec:
        listed = spec["regularizers"]
        spec = {k: v for k, v in spec.items() if k != "regularizers"}
        if not isinstance(listed, list):
            raise where.error(f"regularizers must be a list of tables, not {listed!r}", "regularizers",
                              key="axes.losses")
        for entry in listed:
            if isinstance(entry, str):
                entry = {"name": entry}
            if not isinstance(entry, dict):
                raise where.error(f"a regularizer must be a name or a table, not {entry!r}", "regularizers",
                                  key="axes.losses")
            kwargs = {k: v for k, v in entry.items() if k not in ("name", "weight")}
            regularizers.append(_regularizer(entry.get("name"), entry.get("weight", 1.0), kwargs, where,
                                             "regularizers"))
            given_kwargs.append(kwargs)
        label = spec.get("label")
    loss = _component(spec, "loss", registry.LOSSES, where, key="axes.losses")
    if not regularizers:
        return loss
    label = str(label) if label is not None else _expression_label(loss.name, regularizers)
    written = loss.written + tuple((("regularizers", index, "kwargs", key), value)
                                   for index, (term, given) in enumerate(zip(regularizers, given_kwargs))
                                   for key, value in given.items()
                                   if _number_form(value) != _number_form(term["kwargs"][key]))
    return Component(loss.name, label, loss.kwargs, tuple(regularizers), loss.files, written)


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
        where.check_keys(rule, FILTER_KEYS, table="axes", key=f"axes.{key}")
    return rules


def _matches(rule: dict, keys: dict) -> bool:
    return all(
        math.isclose(keys[k], v) if isinstance(v, float) else keys[k] == v
        for k, v in rule.items()
    )


FLOAT_RECIPE_KEYS = ("lr", "weight_decay", "momentum", "warmup_epochs")
FLOAT32_MAX = 3.4028234663852886e38


def _recipe(spec: Any, where: _Locator) -> tuple[dict[str, Any], dict[str, Any]]:
    """The checked recipe, with its numbers canonical (``weight_decay = 0`` is 0.0), and the values the grid wrote
    where they differ from those (:attr:`Cell.aliases`)."""
    if not isinstance(spec, dict):
        raise where.error(f"[recipe] must be a table, not {spec!r}", "recipe", key="recipe")
    where.check_keys(spec, set(RECIPE_DEFAULTS), table="recipe")
    recipe = {**RECIPE_DEFAULTS, **spec}

    def require(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise where.error(f"[recipe] {key} = {recipe[key]!r}: {what}", key, "recipe")

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
    require(weights is None or (isinstance(weights, list) and weights and all(number(w) and w > 0 for w in weights)),
            "class_weights", "must be a list of positive numbers")
    canonical = {key: float(recipe[key]) for key in FLOAT_RECIPE_KEYS}
    if weights is not None:
        canonical["class_weights"] = [float(w) for w in weights]
    written = {key: recipe[key] for key, value in canonical.items() if _number_form(value) != _number_form(recipe[key])}
    return {**recipe, **canonical}, written
