"""Grid files: parsing, expansion into cells, identities, and every mistake reported with its line."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.grid import GRID_DIR, list_grids, load_grid, parse_grid
from registry.errors import UserError

BASE = """\
description = "a test grid"

[dataset]
name = "synthetic"
tile_size = 32
train_size = 8
val_size = 4

[axes]
archs = [{name = "unet", base_channels = 4, depth = 3}, "unetplusplus"]
losses = ["partial_ce"]
maskers = ["random_pixels", "full"]
fractions = [0.1, 0.15]
seeds = [0, 1]

[recipe]
epochs = 2
batch_size = 4
"""


def parse(text: str, **kw):
    return parse_grid(text, Path("test.toml"), **kw)


def test_expansion_collapses_fraction_for_maskers_that_ignore_it():
    grid = parse(BASE)
    # 2 archs x 2 seeds x (2 fractions of random_pixels + 1 of full)
    assert len(grid.cells) == 2 * 2 * 3
    full_cells = [c for c in grid.cells if c.masker.name == "full"]
    assert {c.fraction for c in full_cells} == {1.0}
    assert grid.description == "a test grid"


def test_cells_sharing_masks_are_adjacent():
    keys = [(c.seed, c.masker.label, c.fraction) for c in parse(BASE).cells]
    seen = []
    for key in keys:
        if not seen or seen[-1] != key:
            assert key not in seen
            seen.append(key)


def test_cell_ids_are_stable_and_distinct():
    a, b = parse(BASE), parse(BASE)
    assert [c.cell_id for c in a.cells] == [c.cell_id for c in b.cells]
    assert len({c.cell_id for c in a.cells}) == len(a.cells)


def test_epochs_override_changes_recipe_and_identity():
    base, short = parse(BASE), parse(BASE, epochs=1)
    assert all(c.recipe["epochs"] == 1 for c in short.cells)
    assert base.cells[0].cell_id != short.cells[0].cell_id


def test_arch_keyword_arguments_and_labels():
    grid = parse(BASE)
    unet = next(c for c in grid.cells if c.arch.name == "unet")
    assert unet.arch.kwargs == {"base_channels": 4, "depth": 3} and unet.arch.label == "unet"


def test_include_and_exclude():
    text = BASE.replace('seeds = [0, 1]', 'seeds = [0, 1]\nexclude = [{arch = "unetplusplus"}, {fraction = 0.15}]')
    grid = parse(text)
    assert {c.arch.name for c in grid.cells} == {"unet"}
    assert 0.15 not in {c.fraction for c in grid.cells}
    text = BASE.replace('seeds = [0, 1]', 'seeds = [0, 1]\ninclude = [{masker = "full", seed = 1}]')
    grid = parse(text)
    assert [(c.masker.name, c.seed) for c in grid.cells] == [("full", 1), ("full", 1)]


def test_recipe_defaults_fill_missing_keys():
    recipe = parse(BASE).cells[0].recipe
    assert recipe["optimizer"] == "adam" and recipe["augment"] == ["hflip", "vflip", "rot90"]


def line_of_error(text: str) -> str:
    with pytest.raises(UserError) as info:
        parse(text)
    return str(info.value)


@pytest.mark.parametrize("old, new, expected", [
    ("epochs = 2", "epoch = 2", "line 17: unknown key 'epoch' in [recipe]; did you mean 'epochs'?"),
    ("seeds = [0, 1]", "seed = [0, 1]", "line 14: unknown key 'seed' in [axes]; did you mean 'seeds'?"),
    ('description = "a test grid"', 'descripton = "x"', "line 1: unknown key 'descripton'"),
    ("fractions = [0.1, 0.15]", "fractions = [0.1, 1.5]", "line 13: label fraction 1.5 is outside (0, 1]"),
    ("fractions = [0.1, 0.15]", "fractions = [0, 0.1]", "label fraction 0 is outside (0, 1]"),
    ('"unetplusplus"]', '"unetplusplsu"]', "line 10: unknown architecture 'unetplusplsu'; did you mean 'unetplusplus'"),
    ('losses = ["partial_ce"]', 'losses = ["partial_cee"]', "line 11: unknown loss 'partial_cee'"),
    ('maskers = ["random_pixels", "full"]', 'maskers = ["random_pixel"]', "line 12: unknown masker 'random_pixel'"),
    ('name = "synthetic"', 'name = "synthetc"', "line 4: unknown dataset 'synthetc'; did you mean 'synthetic'"),
    ("batch_size = 4", "batch_size = 0", "batch_size = 0: must be a positive integer"),
    ("batch_size = 4", 'batch_size = 4\nlr = -1', "lr = -1: must be a positive number"),
    ("batch_size = 4", 'batch_size = 4\naugment = ["flip"]', "augment"),
    ("batch_size = 4", 'batch_size = 4\nclass_weights = [1, -2]', "class_weights"),
    ("batch_size = 4", 'batch_size = 4\noptimizer = "lion"', "must be one of adam, adamw, sgd"),
    ("[axes]", "[axes]\nexclude = [{archh = 'unet'}]", "unknown key 'archh'"),
    ('"unetplusplus"]', '"unetplusplus", "unet"]', "two archs are labelled 'unet'"),
    ("seeds = [0, 1]", "seeds = [-1]", "seeds must be a non-empty list of non-negative integers"),
    ("epochs = 2", "epochs = [2", "not valid TOML"),
])
def test_mistakes_are_reported_with_their_line(old, new, expected):
    assert old in BASE
    message = line_of_error(BASE.replace(old, new))
    assert message.startswith("test.toml")
    assert expected in message


def test_exclude_everything_is_an_error():
    assert "no cells left" in line_of_error(BASE.replace("seeds = [0, 1]", "seeds = [0]\nexclude = [{seed = 0}]"))


def test_missing_grid_file_lists_known_grids():
    with pytest.raises(UserError, match="grid not found: nope.*default"):
        load_grid("nope")


@pytest.mark.parametrize("name", list_grids())
def test_every_shipped_grid_parses(name):
    grid = load_grid(name)
    assert grid.cells and grid.path.resolve().parent == GRID_DIR


def test_shipped_grids_include_smoke_and_default():
    assert {"smoke", "default"} <= set(list_grids())
