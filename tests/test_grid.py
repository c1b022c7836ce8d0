"""Grid files: parsing, expansion into cells, identities, and every mistake reported with its line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import registry
from bench.cell_job import GridData
from bench.grid import load_grid, parse_grid
from bench.grid_files import GRID_DIR, list_grids
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
    # Labels name a fraction only where the masker uses it: "full 100%" would read as a share it did not choose.
    labels = {c.label for c in grid.cells if c.seed == 0 and c.arch.name == "unetplusplus"}
    assert labels == {"unetplusplus · partial_ce · random_pixels 10% · seed 0",
                      "unetplusplus · partial_ce · random_pixels 15% · seed 0",
                      "unetplusplus · partial_ce · full · seed 0"}


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
    ('losses = ["partial_ce"]', 'losses = [{ name = "partial_ce", normalize = "mean" }]', "line 11: "),
    ('losses = ["partial_ce"]', 'losses = [{ name = "partial_ce", weight = [1, 2] }]',
     "line 11: loss 'partial_ce': class weights go in [recipe] class_weights"),
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


# -- file arguments (pretrained_path): a location, identified by content ---------------------------------------------

TIMM = BASE.replace('archs = [{name = "unet", base_channels = 4, depth = 3}, "unetplusplus"]',
                    'archs = [{name = "tu-resnet10t", pretrained = true, pretrained_path = "WEIGHTS"}]')


def timm_grid(folder: Path, weights: str, **kw):
    path = folder / "grid.toml"
    text = TIMM.replace("WEIGHTS", weights)
    path.write_text(text)
    return parse_grid(text, path, **kw)


def test_a_weights_file_counts_by_its_content_not_its_path(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "weights.pt").write_bytes(b"the same weights")
    (tmp_path / "b.pt").write_bytes(b"the same weights")
    first = timm_grid(tmp_path, "a/weights.pt")  # relative to the grid file's folder
    arch = first.cells[0].arch
    assert arch.build_kwargs["pretrained_path"] == str(tmp_path / "a" / "weights.pt") and arch.kwargs["pretrained"]
    assert first.cells[0].config["arch"]["kwargs"]["pretrained_path"].startswith("sha256:")
    assert cell_ids(timm_grid(tmp_path, str(tmp_path / "b.pt"))) == cell_ids(first)  # moved: the same cells
    (tmp_path / "b.pt").write_bytes(b"other weights")
    assert set(cell_ids(timm_grid(tmp_path, "b.pt"))).isdisjoint(cell_ids(first))  # new content: new cells
    monkeypatch.chdir(tmp_path / "a")  # from the command line, a relative path is taken from the current folder
    overridden = timm_grid(tmp_path, "b.pt", overrides=[
        'axes.archs=[{name = "tu-resnet10t", pretrained = true, pretrained_path = "weights.pt"}]'])
    assert cell_ids(overridden) == cell_ids(first)


def test_a_missing_weights_file_is_named_with_its_line(tmp_path):
    with pytest.raises(UserError, match=r"grid.toml line 10: pretrained_path 'nope.pt': no such file \(/"):
        timm_grid(tmp_path, "nope.pt")
    with pytest.raises(UserError, match=r"--set axes.archs=.*: pretrained_path 'gone.pt': no such file"):
        timm_grid(tmp_path, "nope.pt", overrides=['axes.archs=[{name = "tu-resnet10t", pretrained_path = "gone.pt"}]'])


# -- overrides (bench run --set KEY=VALUE) ----------------------------------------------------------------------------


def cell_ids(grid) -> list[str]:
    return [c.cell_id for c in grid.cells]


def test_overrides_give_the_grid_the_file_would_give_with_the_same_edits():
    overrides = ["recipe.lr=1e-4", "axes.seeds=[0, 1, 2]", "recipe.optimizer=adamw", "dataset.train_size=16",
                 'recipe.augment=["hflip", "shift_scale_rotate"]', 'axes.archs=[{name = "unet", base_channels = 8}]',
                 'axes.maskers = ["random_pixels"]']
    edited = (BASE.replace("batch_size = 4", 'batch_size = 4\nlr = 1e-4\noptimizer = "adamw"\n'
                                             'augment = ["hflip", "shift_scale_rotate"]')
              .replace("seeds = [0, 1]", "seeds = [0, 1, 2]").replace("train_size = 8", "train_size = 16")
              .replace('archs = [{name = "unet", base_channels = 4, depth = 3}, "unetplusplus"]',
                       'archs = [{name = "unet", base_channels = 8}]')
              .replace('maskers = ["random_pixels", "full"]', 'maskers = ["random_pixels"]'))
    grid = parse(BASE, overrides=overrides)
    assert cell_ids(grid) == cell_ids(parse(edited)) and len(grid.cells) == 3 * 2
    recipe = grid.cells[0].recipe
    assert recipe["lr"] == 1e-4 and recipe["optimizer"] == "adamw" and recipe["augment"] == ["hflip",
                                                                                              "shift_scale_rotate"]
    assert grid.dataset.kwargs["train_size"] == 16 and grid.cells[0].arch.kwargs == {"base_channels": 8}


def test_epochs_flag_is_the_same_as_setting_recipe_epochs():
    assert cell_ids(parse(BASE, epochs=1)) == cell_ids(parse(BASE, overrides=["recipe.epochs=1"]))
    assert cell_ids(parse(BASE, epochs=1)) == cell_ids(parse(BASE.replace("epochs = 2", "epochs = 1")))


def test_override_values_bare_words_quoted_strings_later_wins_and_new_tables():
    bare, quoted = parse(BASE, overrides=["recipe.optimizer=sgd"]), parse(BASE, overrides=['recipe.optimizer="sgd"'])
    assert bare.cells[0].recipe["optimizer"] == quoted.cells[0].recipe["optimizer"] == "sgd"
    assert parse(BASE, overrides=["recipe.lr=1", "recipe.lr = 0.5"]).cells[0].recipe["lr"] == 0.5
    no_recipe = BASE[:BASE.index("[recipe]")]
    assert parse(no_recipe, overrides=["recipe.epochs=3"]).cells[0].recipe["epochs"] == 3
    assert parse(BASE, overrides=["recipe.amp=false"]).cells[0].recipe["amp"] is False


@pytest.mark.parametrize("override, expected", [
    ("recipe.lrr=1", "unknown key 'lrr' in [recipe]; did you mean 'lr'?"),
    ("recipes.lr=1", "unknown key 'recipes' in the top level; did you mean 'recipe'?"),
    ("recipe.lr=-1", "[recipe] lr = -1: must be a positive number"),
    ("recipe.epochs=0", "epochs = 0: must be a positive integer"),
    ("recipe.epochs=1.5", "epochs = 1.5: must be a positive integer"),
    ("recipe.optimizer=lion", "must be one of adam, adamw, sgd"),
    ('recipe.augment=["flip"]', "augment = ['flip']: must be a list drawn from"),
    ("axes.seeds=[-1]", "seeds must be a non-empty list of non-negative integers"),
    ("axes.fractions=[1.5]", "label fraction 1.5 is outside (0, 1]"),
    ('axes.archs=["unte"]', "unknown architecture 'unte'; did you mean 'unet'"),
    ('axes.archs=[{name = "unet", widht = 2}]', "architecture 'unet': got an unexpected keyword argument 'widht'"),
    ("axes.archs=unet", "[axes] archs must be a non-empty list"),
    ("axes.exclude=[{archh = 'unet'}]", "unknown key 'archh'"),
    ("dataset.name=synthetc", "unknown dataset 'synthetc'; did you mean 'synthetic'"),
    ("dataset.colour=blue", "dataset 'synthetic': got an unexpected keyword argument 'colour'"),
    ("recipe.lr", "expected KEY=VALUE"),
    ("=1", "expected KEY=VALUE"),
    ("recipe..lr=1", "expected KEY=VALUE"),
    ("recipe.lr=[1", "'[1' is not a TOML value"),
    ('recipe.optimizer="adam', "is not a TOML value"),
    ("recipe.optimizer=two words", "is not a TOML value"),
    ("description.x=1", "description is not a table"),
])
def test_a_mistake_in_an_override_names_the_override_not_a_file_line(override, expected):
    with pytest.raises(UserError) as info:
        parse(BASE, overrides=["recipe.lr=0.01", override])
    message = str(info.value)
    assert message.startswith(f"--set {override}: ") and expected in message, message
    assert "test.toml" not in message and "\n" not in message


def test_a_file_mistake_is_not_blamed_on_an_unrelated_override():
    for old, new, line in [('name = "synthetic"', 'name = "synthetc"', 4), ("epochs = 2", "epoch = 2", 17),
                           ("tile_size = 32", "tile_size = 32\ncolour = 1", 6)]:
        with pytest.raises(UserError) as info:
            parse(BASE.replace(old, new), overrides=["dataset.train_size=16", "recipe.lr=0.01"])
        assert str(info.value).startswith(f"test.toml line {line}: "), str(info.value)


def test_grid_file_names_unknown_keyword_arguments_with_their_line():
    message = line_of_error(BASE.replace("depth = 3}", "depth = 3, widht = 2}"))
    assert message.startswith("test.toml line 10: architecture 'unet'") and "'widht'" in message


# -- the dataset's location: root and cache_dir -----------------------------------------------------------------------


@pytest.fixture
def located_dataset():
    """A dataset that reads files from ``root``: it records what its builder receives."""
    name = "location_probe_for_tests"
    calls: list[dict] = []

    @registry.register_dataset(name)
    def probe(root=None, cache_dir=None, tile_size: int = 32):
        calls.append({"root": root, "cache_dir": cache_dir, "tile_size": tile_size})
        return registry.create_dataset("synthetic", tile_size=tile_size, train_size=2, val_size=2, test_size=0)

    try:
        yield name, calls
    finally:
        registry.DATASETS._entries.pop(name)


def located_grid(name: str, location: str = "") -> str:
    return BASE.replace('name = "synthetic"\ntile_size = 32\ntrain_size = 8\nval_size = 4\n',
                        f'name = "{name}"\ntile_size = 32\n{location}')


def test_location_is_passed_to_the_builder_but_is_not_identity(located_dataset, tmp_path, monkeypatch):
    name, calls = located_dataset
    (tmp_path / "grids").mkdir()
    monkeypatch.chdir(tmp_path)  # not the grid file's folder
    here = tmp_path / "grids" / "here.toml"
    here.write_text(located_grid(name, 'root = "data/landcover"\ncache_dir = "../cache"\n'))
    elsewhere = tmp_path / "elsewhere.toml"
    elsewhere.write_text(located_grid(name, 'root = "/mnt/other/landcover"\n'))
    a = load_grid(str(here))
    b = parse_grid(elsewhere.read_text(), here)  # the grid's name is part of a cell's identity: give both one name
    assert cell_ids(a) == cell_ids(b) == cell_ids(parse_grid(located_grid(name), here))
    assert a.dataset.kwargs == {"tile_size": 32} and "landcover" not in json.dumps([c.config for c in a.cells])
    assert a.dataset_location == {"root": str(tmp_path / "grids" / "data" / "landcover"),
                                  "cache_dir": str(tmp_path / "cache")}
    assert b.dataset_location == {"root": "/mnt/other/landcover"}

    GridData(a)
    assert calls[-1] == {"root": str(tmp_path / "grids" / "data" / "landcover"), "cache_dir": str(tmp_path / "cache"),
                         "tile_size": 32}


def test_location_home_and_command_line_roots(located_dataset, tmp_path, monkeypatch):
    name, calls = located_dataset
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "grids" / "g.toml"
    path.parent.mkdir()
    path.write_text(located_grid(name, 'root = "~/landcover"\n'))
    assert load_grid(str(path)).dataset_location["root"] == str(tmp_path / "home" / "landcover")
    # --data-root and --set dataset.root come from the command line: relative to the current folder
    from_flag = load_grid(str(path), data_root="copies/lc")
    assert from_flag.dataset_location["root"] == str(tmp_path / "copies" / "lc")
    assert load_grid(str(path), overrides=["dataset.root=copies/lc"]).dataset_location == from_flag.dataset_location
    assert cell_ids(from_flag) == cell_ids(load_grid(str(path)))
    GridData(from_flag)
    assert calls[-1]["root"] == str(tmp_path / "copies" / "lc")


def test_location_mistakes(located_dataset, tmp_path):
    name, _ = located_dataset
    with pytest.raises(UserError, match=r"^test.toml line 6: \[dataset\] root must be a path, not 3$"):
        parse(located_grid(name, "root = 3\n"))
    with pytest.raises(UserError) as info:
        parse(BASE, data_root=tmp_path)  # synthetic reads no files
    assert str(info.value) == (f"--data-root {tmp_path}: dataset 'synthetic': got an unexpected keyword argument "
                               "'root' (it takes tile_size, train_size, val_size, test_size, seed, nir, dtype)")


# The default grid as it stood when sync_batchnorm became a recipe key; its first cell was stored as f47c99a740ab20ed.
GRID_OF_2026_11 = """\
description = "the default grid of 2026-11"
[dataset]
name = "synthetic"
tile_size = 64
train_size = 512
val_size = 128
[axes]
archs = [{ name = "unet", base_channels = 16 }, { name = "unetplusplus", base_channels = 16 }]
losses = ["partial_ce"]
maskers = ["random_pixels", "full"]
fractions = [0.10, 0.15]
seeds = [0]
exclude = [{ masker = "full", arch = "unetplusplus" }]
[recipe]
optimizer = "adam"
lr = 0.003
weight_decay = 0.0001
schedule = "cosine"
epochs = 10
batch_size = 16
augment = ["hflip", "vflip", "rot90"]
"""


def test_recipe_keys_added_later_keep_stored_identities_at_their_neutral_value():
    """``sync_batchnorm`` came after results were stored: false (its neutral value) is left out of the identity, so
    the cells stored before it keep their ids; true is a new cell."""
    first = parse_grid(GRID_OF_2026_11, Path("default.toml")).cells[0]
    assert first.recipe["sync_batchnorm"] is False and "sync_batchnorm" not in first.config["recipe"]
    assert first.cell_id == "f47c99a740ab20ed"
    synced = parse_grid(GRID_OF_2026_11, Path("default.toml"), overrides=["recipe.sync_batchnorm=true"]).cells[0]
    assert synced.config["recipe"]["sync_batchnorm"] is True and synced.cell_id != first.cell_id
