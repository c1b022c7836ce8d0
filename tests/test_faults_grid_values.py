"""Family 5 of the faults: values that a grid check must refuse before anything trains, in one line naming the grid
file's line or the ``--set`` that gave the value, with no store written: sizes of nothing, widths of the wrong type
or range, tables that are not tables, a file that is not UTF-8; and every builder argument of every registry checked
against its annotation."""

from __future__ import annotations

import inspect
import typing

import pytest
from user_faults import TINY, one_line, run_main, write_grid

import registry
from registry.arguments import annotations_of, canonical_arguments
from registry.errors import UserError

ARCH = '{ name = "unet", base_channels = 4, depth = 3 }'
IN_FILE = [  # (text replaced, replacement, line of the message, what the message says)
    ("train_size = 8", "train_size = 0", 4, "train_size must be an integer >= 1, not 0"),
    ("val_size = 4", "val_size = 0", 5, "val_size must be an integer >= 1, not 0"),
    ("tile_size = 32", "tile_size = 0", 3, "tile_size must be an integer"),
    ("base_channels = 4", "base_channels = 0", 9, "base_channels must be a positive integer, not 0"),
    ("base_channels = 4", 'base_channels = "four"', 9, "base_channels must be an integer, not 'four'"),
    ("base_channels = 4", "base_channels = 2.5", 9, "base_channels must be an integer, not 2.5"),
    ("depth = 3", 'depth = "3"', 9, "depth must be an integer, not '3'"),
    ("depth = 3", "depth = 0", 9, "depth must be at least 2, not 0"),
    ("depth = 3", "depth = 3, upsampling = 5", 9, "upsampling must be a string, not 5"),
    ("base_channels = 4,", 'label = "", base_channels = 4,', 9, "label must be a non-empty line of text"),
    ('"random_pixels"', '{ name = "blocks", size = "big" }', 11, "size must be an integer, not 'big'"),
    ('"random_pixels"', '{ name = "points_per_image", count = 1e12 }', 11,
     "count must be an integer, not 1000000000000.0"),
    ('"partial_ce"', '{ name = "partial_focal", gamma = "x" }', 10, "gamma must be a finite number, not 'x'"),
    ('"partial_ce"', '{ name = "partial_focal", gamma = -1 }', 10, "gamma must be a finite number >= 0"),
    ('"partial_ce"', '{ name = "partial_ce", regularizers = [{ name = "entropy", rampup = "x" }] }', 10,
     "rampup must be a finite number, not 'x'"),
    ("batch_size = 4", "batch_size = 4\neval_batch_size = 0", 17, "eval_batch_size = 0: must be a positive integer"),
    ("batch_size = 4", 'batch_size = 4\naugment = ["hflip", "hflip"]', 17, "each once"),
    ("batch_size = 4", 'batch_size = 4\naugment = [{ name = "hflip" }]', 17, "augment"),
    ("batch_size = 4", "batch_size = 4\nlr = 1e300", 17, "lr = 1e+300: must be a positive number"),
    ("batch_size = 4", "batch_size = 0", 16, "batch_size = 0: must be a positive integer"),
    ("fractions = [0.5]", 'fractions = ["a"]', 12, "label fraction 'a' is outside (0, 1]"),
    ("[dataset]", "description = 5\n[dataset]", 1, "description must be a string, not 5"),
]
ZERO_WIDTH = ARCH.replace("base_channels = 4", "base_channels = 0")
WORD_WIDTH = ARCH.replace("base_channels = 4", 'base_channels = "four"')
NO_DEPTH = ARCH.replace("depth = 3", "depth = 0")
BY_SET = [  # (--set, what the message says)
    ("dataset.train_size=0", "train_size must be an integer >= 1, not 0"),
    ("dataset.val_size=0", "val_size must be an integer >= 1, not 0"),
    ("axes=5", "[axes] must be a table"),
    ("recipe=5", "[recipe] must be a table"),
    ("dataset=5", "a dataset must be a name or a table"),
    (f"axes.archs=[{ZERO_WIDTH}]", "base_channels must be a positive integer, not 0"),
    (f"axes.archs=[{WORD_WIDTH}]", "base_channels must be an integer, not 'four'"),
    (f"axes.archs=[{NO_DEPTH}]", "depth must be at least 2, not 0"),
    ("recipe.eval_batch_size=0", "eval_batch_size = 0: must be a positive integer"),
    ("axes.archs=5", "[axes] archs must be a non-empty list"),
]


def check(capsys, tmp_path, argv, prefix, says):
    code, _, err = run_main(capsys, "run", *argv, "--out", str(tmp_path / "runs"))
    one_line(code, err, 2, says)
    assert err.startswith(f"error: {prefix}: "), err
    assert not (tmp_path / "runs" / "results.sqlite").exists()


@pytest.mark.parametrize("old, new, line, says", IN_FILE, ids=[case[1] for case in IN_FILE])
def test_a_bad_value_in_the_grid_file_is_one_line_with_its_line(tmp_path, capsys, old, new, line, says):
    assert old in TINY
    grid = write_grid(tmp_path, TINY.replace(old, new, 1))
    check(capsys, tmp_path, ["--grid", str(grid)], f"{grid} line {line}", says)


@pytest.mark.parametrize("override, says", BY_SET, ids=[case[0] for case in BY_SET])
def test_a_bad_value_from_the_command_line_is_one_line_naming_its_set(tmp_path, capsys, override, says):
    grid = write_grid(tmp_path)
    check(capsys, tmp_path, ["--grid", str(grid), "--set", override], f"--set {override}", says)


def test_the_top_level_axes_that_are_not_a_table_are_refused(tmp_path, capsys):
    text = TINY[:TINY.index("[axes]")] + "\n"
    grid = write_grid(tmp_path, "axes = 5\n" + text)
    check(capsys, tmp_path, ["--grid", str(grid)], f"{grid} line 1", "[axes] must be a table")


@pytest.mark.parametrize("text, line, byte", [(b"\xff\xfe" + TINY.encode(), 1, "0xff"),
                                              ('description = "tin\xe9"\n'.encode("latin-1") + TINY.encode(), 1,
                                               "0xe9"),
                                              (TINY.encode() + b"# caf\xe9\n", 17, "0xe9")])
def test_a_grid_file_that_is_not_utf8_is_one_line_with_the_line(tmp_path, capsys, text, line, byte):
    grid = write_grid(tmp_path, text)
    check(capsys, tmp_path, ["--grid", str(grid)], f"{grid} line {line}", f"not UTF-8 text (byte {byte})")


def test_a_plugin_builder_that_raises_is_one_line_before_training(tmp_path, capsys):
    plugin = tmp_path / "raising_arch.py"
    plugin.write_text("from registry import register_arch\n"
                      "@register_arch('raising_arch')\n"
                      "def raising_arch(num_classes, in_chans=3, width: int = 4):\n"
                      "    raise RuntimeError(f'width {width} is no good')\n")
    grid = write_grid(tmp_path, TINY.replace(ARCH, '{ name = "raising_arch", width = 7 }'))
    code, _, err = run_main(capsys, "run", "--grid", str(grid), "--plugin", str(plugin), "--out",
                            str(tmp_path / "runs"))
    one_line(code, err, 2, f"{grid} line 9", "architecture 'raising_arch' cannot be built with width=7",
             "RuntimeError: width 7 is no good")
    assert not (tmp_path / "runs" / "results.sqlite").exists()


def takes_a_table(hint) -> bool:
    """Whether an annotation admits a TOML table (a dict, as rasters' ``values`` and ``split``)."""
    return hint is dict or typing.get_origin(hint) is dict or any(takes_a_table(h) for h in typing.get_args(hint))


def annotated_parameters():
    """(registry, entry name, parameter) of every entry's parameter whose annotation says a plain type."""
    found = []
    for reg in (registry.ARCHS, registry.LOSSES, registry.MASKERS, registry.REGULARIZERS, registry.DATASETS):
        for name in reg.list():
            builder = reg.entry(name).builder
            hints = annotations_of(builder)
            for parameter, described in inspect.signature(builder).parameters.items():
                if described.kind is inspect.Parameter.VAR_KEYWORD:  # torchgeo's own arguments, passed through
                    continue
                if (parameter not in ("num_classes", "in_chans", "weight") and parameter in hints
                        and not takes_a_table(hints[parameter])):
                    found.append(pytest.param(reg, name, parameter, id=f"{name}.{parameter}"))
    return found


@pytest.mark.parametrize("reg, name, parameter", annotated_parameters())
def test_every_builder_argument_of_a_wrong_type_is_refused_naming_it(reg, name, parameter):
    """A TOML table is no int, float, bool, string or list: every annotated argument refuses it, by name."""
    builder = reg.entry(name).builder
    with pytest.raises(UserError, match=rf"^{reg.kind} '{name}': {parameter} must be "):
        canonical_arguments(reg.kind, name, builder, {parameter: {"a": "table"}})


@pytest.mark.parametrize("reg", [registry.ARCHS, registry.LOSSES, registry.MASKERS, registry.DATASETS],
                         ids=lambda reg: reg.kind)
def test_every_entry_s_own_test_arguments_pass_the_check_as_they_are(reg):
    for name in reg.list():
        entry = reg.entry(name)
        kwargs = {k: v for k, v in entry.test_kwargs.items() if not isinstance(v, tuple)}  # TOML has lists only
        assert canonical_arguments(reg.kind, name, entry.builder, kwargs) == kwargs, name
