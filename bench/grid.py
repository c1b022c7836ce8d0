"""Grid files: a TOML file under ``tasks/`` naming a dataset, the axes of an experiment, and a training recipe; read,
checked, and expanded into cells.

A grid expands into cells (:class:`bench.identity.Cell`), one per combination of architecture x loss x masker x label
fraction x seed, less those that the axes' ``include`` and ``exclude`` filters leave out. Every component is checked
against its registry here, before anything runs; the ``[recipe]`` table is checked by :mod:`bench.recipe`.

A loss on the losses axis may carry regularisers, terms on the unlabelled pixels from ``registry.REGULARIZERS``: an
expression ``"partial_ce + 0.1 * entropy + gated_crf"`` (one loss, then ``+ weight * name`` terms; no weight means 1)
or a table
``{ name = "partial_ce", label = "...", regularizers = [{ name = "entropy", weight = 0.1, rampup = 0.2 }] }``.
They are part of the loss's config, hence of the cell's identity; the label defaults to the expression.

Overrides from the command line (``--set recipe.lr=1e-4``, :mod:`bench.overrides`) are applied to the parsed file
before it is checked. Every mistake is reported before anything runs, with the file and line where it stands, or the
``--set`` it came from.
"""

from __future__ import annotations

import inspect
import itertools
import math
import re
import tomllib
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import registry
from bench.checks import build_checked
from bench.grid_files import resolve_grid_path
from bench.identity import FILE_SUFFIX, LOCATION_KEYS, Cell, Component, Grid, number_form
from bench.overrides import Locator, apply_override, parse_override
from bench.recipe import check_recipe
from registry.annotation import UNITS, CostError, check_costs, units_of
from registry.arguments import canonical_arguments
from registry.errors import UserError

TOP_KEYS = {"description", "dataset", "axes", "recipe", "annotation_cost"}
AXIS_KEYS = {"archs", "losses", "maskers", "fractions", "seeds", "include", "exclude"}
FILTER_KEYS = {"arch", "loss", "masker", "fraction", "seed"}


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
    """Check a grid file's ``text``, read from ``path`` (which names the grid and its messages), with the overrides of
    :func:`load_grid`."""
    locator = Locator(text, path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"{path}: not valid TOML: {err}") from None
    if epochs is not None:
        apply_override(data, "recipe.epochs", epochs, f"--epochs {epochs}", locator)
    for argument in overrides:
        key, value = parse_override(argument)
        apply_override(data, key, value, f"--set {argument}", locator)
    if data_root is not None:
        data_root = Path(data_root).expanduser().resolve()
        apply_override(data, "dataset.root", str(data_root), f"--data-root {data_root}", locator)

    locator.check_keys(data, TOP_KEYS, table="")
    for required in ("dataset", "axes"):
        if required not in data:
            raise UserError(f"{path}: missing table [{required}]")
    if not isinstance(data.get("description", ""), str):
        raise locator.error(f"description must be a string, not {data['description']!r}", "description")
    dataset, location = _dataset(data["dataset"], locator)
    axes = data["axes"]
    if not isinstance(axes, dict):
        raise locator.error(f"[axes] must be a table (archs = [...], losses = [...], ...), not {axes!r}", "axes",
                            key="axes")
    locator.check_keys(axes, AXIS_KEYS, table="axes")
    archs = _axis(axes, "archs", registry.ARCHS, locator)
    losses = _axis(axes, "losses", registry.LOSSES, locator)
    for loss in losses:  # built once here, so that a bad argument is reported with its line
        build_checked(lambda: registry.create_loss(loss.name, **loss.kwargs), "loss", loss,
                      locator.prefix(loss.name, key="axes.losses"))
    maskers = _axis(axes, "maskers", registry.MASKERS, locator)
    fractions = _fractions(axes, locator)
    seeds = _seeds(axes, locator)
    recipe, recipe_written = check_recipe(data.get("recipe", {}), locator)
    include = _filters(axes, "include", locator)
    exclude = _filters(axes, "exclude", locator)

    name = path.stem
    cells: dict[str, Cell] = {}
    uses_fraction, counters = {}, {}
    for masker in maskers:
        built = build_checked(lambda: registry.create_masker(masker.name, **masker.kwargs), "masker", masker,
                              locator.prefix(masker.name, key="axes.maskers"))
        uses_fraction[masker.label] = built.uses_fraction
        counters[masker.label] = built.annotation
    annotation_cost = _annotation_cost(data.get("annotation_cost", {}), counters, locator)
    # Cells sharing partial masks (same seed, masker, fraction) come together, so each set of masks is drawn once.
    for seed, masker in itertools.product(seeds, maskers):
        for fraction, loss, arch in itertools.product(fractions if uses_fraction[masker.label] else [1.0],
                                                      losses, archs):
            cell = Cell(name, dataset, arch, loss, masker, fraction, seed, recipe, uses_fraction[masker.label],
                        recipe_written)
            coordinates = {"arch": arch.label, "loss": loss.label, "masker": masker.label, "fraction": fraction,
                           "seed": seed}
            if include and not any(_matches(rule, coordinates) for rule in include):
                continue
            if any(_matches(rule, coordinates) for rule in exclude):
                continue
            cells.setdefault(cell.cell_id, cell)
    if not cells:
        raise UserError(f"{path}: the grid has no cells left after include/exclude")
    places = {("dataset", dataset.name): locator.prefix("name", "dataset", key="dataset.name")}
    places.update({("dataset", key): locator.prefix(key, "dataset", key=f"dataset.{key}") for key in dataset.kwargs})
    for axis, components in (("archs", archs), ("losses", losses), ("maskers", maskers)):
        for component in components:
            places[axis, component.label] = locator.prefix(component.name, key=f"axes.{axis}")
    return Grid(name, path, data.get("description", ""), dataset, tuple(cells.values()), location, places,
                annotation_cost)


def _annotation_cost(table: Any, counters: dict[str, Any], locator: Locator) -> dict[str, float]:
    """The grid's seconds per annotation unit (registry.annotation): ``[annotation_cost]`` over the published
    figures, pricing every unit that the grid's maskers count."""
    counted = {}
    for label, counter in counters.items():
        try:
            units = units_of(counter)
        except Exception as err:  # a plugin's counter: named, in one line
            raise locator.error(f"masker {label!r}: its annotation counter fails on a tile with no label: "
                                f"{type(err).__name__}: {err}", label, key="axes.maskers") from None
        counted.update({unit: label for unit in units if unit not in UNITS})
    if isinstance(table, dict):
        locator.check_keys(table, {*UNITS, *counted}, table="annotation_cost")
    try:
        return check_costs(table, counted)
    except CostError as err:
        if err.unit is None:
            raise locator.error(str(err), "annotation_cost", key="annotation_cost") from None
        raise locator.error(str(err), err.unit, "annotation_cost") from None


def _component(spec: Any, kind: str, reg: registry.Registry, locator: Locator, key: str) -> Component:
    """An axis entry: ``"unet"`` or ``{name = "unet", label = "unet-16", base_channels = 16}``; ``key`` is where it
    stands (``axes.archs``, or ``dataset``, a table whose fields are keys of their own). Keyword arguments that its
    builder does not take are refused here, before anything runs."""
    def field_key(name: str) -> str:
        return f"{key}.{name}" if kind == "dataset" else key

    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        article = "an" if reg.kind[0] in "aeiou" else "a"
        raise locator.error(f"{article} {reg.kind} must be a name or a table with a 'name' key, not {spec!r}", kind,
                            key=field_key("name"))
    kwargs = {k: v for k, v in spec.items() if k not in ("name", "label")}
    name = spec["name"]
    try:
        builder = reg.entry(name).builder
    except registry.UnknownNameError as err:
        raise locator.error(str(err), name, key=field_key("name")) from None
    try:
        signature = inspect.signature(builder)
        signature.bind_partial(**kwargs)
    except TypeError as err:
        unknown = next((k for k in kwargs if repr(k) in str(err)), name)
        # The harness gives architectures their class and channel counts: not the user's to set, so not offered.
        offered = [p for p in signature.parameters if p not in ("num_classes", "in_chans")]
        takes = f" (it takes {', '.join(offered)})" if offered else " (it takes no argument)"
        raise locator.error(f"{reg.kind} {name!r}: {err}{takes}", unknown, key=field_key(unknown)) from None
    except ValueError:  # no inspectable signature: the builder will say
        pass
    written_kwargs = kwargs
    try:
        kwargs = canonical_arguments(reg.kind, name, builder, written_kwargs)
    except UserError as err:
        wrong = next((k for k in written_kwargs if f": {k} must be" in str(err)), name)
        raise locator.error(str(err), wrong, key=field_key(wrong)) from None
    changed = tuple((("kwargs", k), value) for k, value in written_kwargs.items()
                    if number_form(kwargs[k]) != number_form(value))
    if "label" in spec and not _is_label(spec["label"]):
        raise locator.error(f"{reg.kind} {name!r}: label must be a non-empty line of text (no tab or line break), not "
                            f"{spec['label']!r}", "label", key=field_key("label"))
    label = spec.get("label", name)
    if kind == "dataset":  # its paths are locations (LOCATION_KEYS): see _dataset
        return Component(name, label, kwargs, written=changed)
    files = {k: _file_argument(k, v, locator, key) for k, v in kwargs.items()
             if k.endswith(FILE_SUFFIX) and v is not None}
    return Component(name, label, {k: v for k, v in kwargs.items() if k not in files}, files=files,
                     written=tuple(entry for entry in changed if entry[0][1] not in files))


def _is_label(value: Any) -> bool:
    """A label is shown in tables, legends and file listings: some text, on one line, with no control character."""
    return isinstance(value, str) and bool(value.strip()) and not any(unicodedata.category(c) == "Cc" for c in value)


def _file_argument(name: str, value: Any, locator: Locator, key: str) -> str:
    """A file argument as an absolute path, a relative one taken from the grid file's folder (from the current folder
    when the command line set it), ``~`` expanded; the file must exist: its content is part of the cell's identity."""
    if not isinstance(value, (str, Path)) or not str(value):
        raise locator.error(f"{name} must be a path to a file, not {value!r}", name, key=key)
    base = Path.cwd() if locator.origin(key) else locator.path.parent
    path = (base / Path(value).expanduser()).resolve()
    if not path.is_file():
        raise locator.error(f"{name} {str(value)!r}: no such file ({path})", name, key=key)
    return str(path)


def _dataset(spec: Any, locator: Locator) -> tuple[Component, dict[str, str]]:
    """The dataset's identity, and its location: ``root`` and ``cache_dir``, absolute, a relative one taken from the
    grid file's folder (from the current folder when the command line set it), ``~`` expanded."""
    dataset = _component(spec, "dataset", registry.DATASETS, locator, key="dataset")
    location = {}
    for name in LOCATION_KEYS:
        value = dataset.kwargs.get(name)
        if value is None:
            continue
        if not isinstance(value, (str, Path)) or not str(value):
            raise locator.error(f"[dataset] {name} must be a path, not {value!r}", name, "dataset")
        base = Path.cwd() if locator.origin(f"dataset.{name}") else locator.path.parent
        location[name] = str((base / Path(value).expanduser()).resolve())
    identity = {k: v for k, v in dataset.kwargs.items() if k not in LOCATION_KEYS}
    written = tuple(entry for entry in dataset.written if entry[0][1] not in LOCATION_KEYS)
    return Component(dataset.name, dataset.label, identity, written=written), location


def _axis(axes: dict, key: str, reg: registry.Registry, locator: Locator) -> list[Component]:
    specs = axes.get(key)
    if not isinstance(specs, list) or not specs:
        raise locator.error(f"[axes] {key} must be a non-empty list", key, "axes")
    if key == "losses":
        components = [_loss(spec, locator) for spec in specs]
    else:
        components = [_component(spec, key[:-1], reg, locator, key=f"axes.{key}") for spec in specs]
    if key == "losses":
        for loss in components:
            if "weight" in loss.kwargs:  # the harness passes [recipe] class_weights as the loss's `weight`
                raise locator.error(f"loss {loss.name!r}: class weights go in [recipe] class_weights, not in the "
                                    "loss's table", "weight", key="axes.losses")
    labels = [c.label for c in components]
    for label in labels:
        if labels.count(label) > 1:
            raise locator.error(f"two {key} are labelled {label!r}; give them distinct 'label's", key, "axes")
    return components


_TERM = re.compile(r"^(?:(?P<weight>[^*]+?)\s*\*\s*)?(?P<name>[A-Za-z_][\w.:-]*)$")


def _expression_label(base: str, regularizers: Sequence[dict[str, Any]]) -> str:
    terms = [base] + [r["name"] if r["weight"] == 1 else f"{r['weight']:g} * {r['name']}" for r in regularizers]
    return " + ".join(terms)


def _regularizer(name: Any, weight: Any, kwargs: dict[str, Any], locator: Locator, anchor: str) -> dict[str, Any]:
    """One regulariser term, checked: a known name (else the close matches), a positive finite weight, keyword
    arguments its builder takes (it is built once here, so a bad value is reported with its line)."""
    if not isinstance(name, str):
        raise locator.error(f"a regularizer must be a name or a table with a 'name' key, not {name!r}", anchor,
                            key="axes.losses")
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight <= 0:
        raise locator.error(f"regularizer {name!r}: weight must be a positive finite number, not {weight!r}", anchor,
                            key="axes.losses")
    try:
        builder = registry.REGULARIZERS.entry(name).builder
    except registry.UnknownNameError as err:
        raise locator.error(str(err), anchor, key="axes.losses") from None
    try:
        canonical = canonical_arguments("regularizer", name, builder, kwargs)
        registry.create_regularizer(name, **canonical)
    except UserError as err:
        message = str(err) if str(err).startswith("regularizer") else f"regularizer {name!r}: {err}"
        raise locator.error(message, anchor, key="axes.losses") from None
    except Exception as err:  # noqa: BLE001  (a plugin's builder may raise anything for a bad value)
        raise locator.error(f"regularizer {name!r} cannot be built with {kwargs}: {type(err).__name__}: {err}", anchor,
                            key="axes.losses") from None
    return {"name": name, "weight": float(weight), "kwargs": canonical}


def _loss(spec: Any, locator: Locator) -> Component:
    """A losses-axis entry: a loss as for any axis, an expression ``"partial_ce + 0.1 * entropy"``, or a table with
    a ``regularizers`` list."""
    regularizers: list[dict[str, Any]] = []
    given_kwargs: list[dict[str, Any]] = []  # each regulariser's keyword arguments as written
    label = None
    if isinstance(spec, str) and any(ch in spec for ch in "+*-"):
        terms = [t.strip() for t in spec.split("+")]
        if any(not t for t in terms):
            raise locator.error(f"loss {spec!r}: expected 'loss + weight * regularizer + ...'", spec, key="axes.losses")
        base = terms[0]
        if not _TERM.match(base) or "*" in base:
            raise locator.error(f"loss {spec!r}: expected a loss name first, then '+ weight * regularizer' terms "
                                "(weights are positive: no '-')", spec, key="axes.losses")
        for term in terms[1:]:
            match = _TERM.match(term)
            if not match:
                raise locator.error(f"loss {spec!r}: {term!r} is not 'weight * regularizer'", spec, key="axes.losses")
            weight_text = match["weight"]
            try:
                weight = 1.0 if weight_text is None else float(weight_text)
            except ValueError:
                weight = weight_text
            regularizers.append(_regularizer(match["name"], weight, {}, locator, spec))
            given_kwargs.append({})
        try:
            registry.LOSSES.entry(base)
        except registry.UnknownNameError as err:
            raise locator.error(str(err), spec, key="axes.losses") from None
        spec = base
    elif isinstance(spec, dict) and "regularizers" in spec:
        listed = spec["regularizers"]
        spec = {k: v for k, v in spec.items() if k != "regularizers"}
        if not isinstance(listed, list):
            raise locator.error(f"regularizers must be a list of tables, not {listed!r}", "regularizers",
                                key="axes.losses")
        for entry in listed:
            if isinstance(entry, str):
                entry = {"name": entry}
            if not isinstance(entry, dict):
                raise locator.error(f"a regularizer must be a name or a table, not {entry!r}", "regularizers",
                                    key="axes.losses")
            kwargs = {k: v for k, v in entry.items() if k not in ("name", "weight")}
            regularizers.append(_regularizer(entry.get("name"), entry.get("weight", 1.0), kwargs, locator,
                                             "regularizers"))
            given_kwargs.append(kwargs)
        label = spec.get("label")
    loss = _component(spec, "loss", registry.LOSSES, locator, key="axes.losses")
    if not regularizers:
        return loss
    label = str(label) if label is not None else _expression_label(loss.name, regularizers)
    written = loss.written + tuple((("regularizers", index, "kwargs", key), value)
                                   for index, (term, given) in enumerate(zip(regularizers, given_kwargs))
                                   for key, value in given.items()
                                   if number_form(value) != number_form(term["kwargs"][key]))
    return Component(loss.name, label, loss.kwargs, tuple(regularizers), loss.files, written)


def _fractions(axes: dict, locator: Locator) -> list[float]:
    fractions = axes.get("fractions", [1.0])
    if not isinstance(fractions, list) or not fractions:
        raise locator.error("[axes] fractions must be a non-empty list", "fractions", "axes")
    for value in fractions:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
            raise locator.error(f"label fraction {value!r} is outside (0, 1]", "fractions", "axes")
    return [float(v) for v in fractions]


def _seeds(axes: dict, locator: Locator) -> list[int]:
    seeds = axes.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                                           for s in seeds):
        raise locator.error("[axes] seeds must be a non-empty list of non-negative integers", "seeds", "axes")
    return seeds


def _filters(axes: dict, key: str, locator: Locator) -> list[dict]:
    rules = axes.get(key, [])
    if not isinstance(rules, list) or not all(isinstance(rule, dict) for rule in rules):
        raise locator.error(f"[axes] {key} must be a list of tables such as {{arch = \"unet\", fraction = 0.1}}", key)
    for rule in rules:
        locator.check_keys(rule, FILTER_KEYS, table="axes", key=f"axes.{key}")
    return rules


def _matches(rule: dict, coordinates: dict) -> bool:
    """Whether a cell at ``coordinates`` (its label on each axis, its fraction and seed) is one that ``rule`` names."""
    return all(
        math.isclose(coordinates[k], v) if isinstance(v, float) else coordinates[k] == v
        for k, v in rule.items()
    )
