"""Shared fixtures: a private dataset cache for every test, a network that refuses connections, and LandCover.ai
stand-ins in its real layouts, rasters for the dataset ``rasters`` and tile folders for ``tiles``."""

from __future__ import annotations

import socket

import pytest
from landcoverai_layout import write_archive, write_tiles
from raster_layout import SceneSpec, write_layout
from tile_layout import TileSpec, write_tile_layout

import bench  # noqa: F401  (first: it turns albumentations' version check off before a test module imports it)

pytest_plugins = ["torchgeo_layouts"]  # the torchgeo-<Name>_root fixtures: tiny copies in torchgeo's layouts

# Orthophotos of sizes that are not multiples of 512, so that edge tiles are skipped and ids have gaps; each is
# written with another compression and strip/tile layout (see landcoverai_layout.IMAGE_FORMATS).
LANDCOVERAI_SIZES = [(1100, 1300), (1030, 1600), (700, 1100), (600, 1200)]


@pytest.fixture(autouse=True)
def private_dataset_cache(tmp_path_factory, monkeypatch):
    """No test writes to the user's cache folder."""
    monkeypatch.setenv("PARTIALSEG_CACHE", str(tmp_path_factory.getbasetemp() / "dataset-cache"))


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt fails the test: what must build without a download (timm encoders) is checked so."""

    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="session")
def landcoverai_archive(tmp_path_factory):
    """(root, orthophotos) of a LandCover.ai stand-in in the archive's layout."""
    root = tmp_path_factory.mktemp("landcoverai-archive")
    return root, write_archive(root, LANDCOVERAI_SIZES)


@pytest.fixture(scope="session")
def landcoverai_tiles(tmp_path_factory, landcoverai_archive):
    """The same stand-in cut into tiles as the dataset's split.py does."""
    root = tmp_path_factory.mktemp("landcoverai-tiles")
    write_tiles(root, *landcoverai_archive)
    return root


@pytest.fixture
def landcoverai_root(landcoverai_archive):
    """The root the dataset contract tests give `landcoverai`."""
    return landcoverai_archive[0]


@pytest.fixture(scope="session")
def rasters_root(tmp_path_factory):
    """The root the dataset contract tests give `rasters` (with its test arguments): four uint8 RGB scenes whose
    sides are multiples of its 64-pixel tiles, without nodata, so every mask is fully annotated."""
    root = tmp_path_factory.mktemp("rasters-contract")
    write_layout(root, [SceneSpec(f"scene-{i}", 128 + 64 * (i % 2), 192, seed=i) for i in range(4)])
    return root


@pytest.fixture(scope="session")
def tiles_root(tmp_path_factory):
    """The root the dataset contract tests give `tiles` (with its test arguments): eight 64-pixel RGB PNGs and their
    index masks, in images/ and masks/, each file one tile."""
    root = tmp_path_factory.mktemp("tiles-contract")
    write_tile_layout(root, [TileSpec(f"t{i}", seed=i) for i in range(8)])
    return root
