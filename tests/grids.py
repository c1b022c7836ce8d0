"""The synthetic grid the tests train, in one layout: each test sets the values it needs (a word such as ``ARCH`` is
left for the test to replace). The fault tests count lines in it: the layout stays as it is."""

from __future__ import annotations

TINY_UNET = "{ name = \"unet\", base_channels = 4, depth = 3 }"


def synthetic_grid(train_size: int | str = 8, val_size: int = 4, test_size: int = 4, arch: str = TINY_UNET,
                   losses: str = '"partial_ce"', maskers: str = '"random_pixels"', fractions: str = "0.5",
                   epochs: int | str = 1, batch_size: int | str = 4, recipe: str = "") -> str:
    """A grid file on 32-pixel synthetic tiles: one architecture, the losses, maskers and fractions as TOML list items,
    and ``recipe``'s lines after the epochs and batch size."""
    return f"""\
[dataset]
name = "synthetic"
tile_size = 32
train_size = {train_size}
val_size = {val_size}
test_size = {test_size}

[axes]
archs = [{arch}]
losses = [{losses}]
maskers = [{maskers}]
fractions = [{fractions}]

[recipe]
epochs = {epochs}
batch_size = {batch_size}
""" + (f"{recipe}\n" if recipe else "")


def dataset_grid(description: str, dataset: str) -> str:
    """A grid of one tiny UNet cell (random pixels at 20 %, one epoch) on the dataset that the lines ``dataset`` of
    its ``[dataset]`` table describe: the end-to-end runs of the datasets that read files."""
    return f"""
description = "{description}"

[dataset]
{dataset}

[axes]
archs = [{TINY_UNET}]
losses = ["partial_ce"]
maskers = ["random_pixels"]
fractions = [0.2]
seeds = [0]

[recipe]
epochs = 1
batch_size = 4
lr = 0.003
"""
