"""The DATASET_CONTRACT, checked for every registered dataset with its tiny test arguments."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import registry


@pytest.fixture(params=registry.list_datasets())
def dataset(request):
    """Each dataset with its test arguments; one that reads files from ``root`` gets the fixture ``<name>_root``."""
    entry = registry.DATASETS.entry(request.param)
    kwargs = dict(entry.test_kwargs)
    if "root" in inspect.signature(entry.builder).parameters:
        kwargs["root"] = request.getfixturevalue(f"{request.param}_root")
    return registry.create_dataset(request.param, **kwargs)


def test_contract_attributes(dataset):
    assert isinstance(dataset.num_classes, int) and dataset.num_classes >= 2
    assert len(dataset.class_names) == dataset.num_classes and all(isinstance(n, str) for n in dataset.class_names)
    assert {"train", "val"} <= set(dataset.splits)
    assert len(dataset.mean) == len(dataset.std) == dataset.in_chans
    assert all(s > 0 for s in dataset.std)
    if dataset.split("train")[0].dtype != np.float32:  # an integer image's scale is its range: 0..1 holds its figures
        assert all(0 <= m <= 1 for m in dataset.mean) and all(s <= 1 for s in dataset.std)


def test_contract_optional_scale_and_bands(dataset):
    """What `bench predict` reads whole scenes with, when a dataset says it."""
    assert 0 < getattr(dataset, "scale", 1.0) <= 1
    bands = getattr(dataset, "bands", None)
    if bands is not None:
        assert len(bands) == dataset.in_chans and all(isinstance(b, int) and b >= 1 for b in bands)


def test_contract_optional_test_scenes_read_as_classes_of_the_images_size(dataset):
    """Whole scenes to score after training, when a dataset has them: two rasters of one size, whose labels read as
    class indices or -1, window by window."""
    import rasterio
    from rasterio.windows import Window

    for scene in getattr(dataset, "test_scenes", ()):
        with rasterio.open(scene.image) as image, rasterio.open(scene.labels) as labels:
            assert (image.height, image.width) == (labels.height, labels.width)
            window = Window(0, 0, labels.width, min(labels.height, 17))
            classes = scene.read_classes(labels, window)
        assert classes.shape == (window.height, window.width) and np.issubdtype(classes.dtype, np.integer)
        assert classes.min() >= -1 and classes.max() < dataset.num_classes


def test_contract_splits_are_labelled_arrays_of_the_contract_dtypes(dataset):
    for name in dataset.splits:
        images, masks = dataset.split(name)
        assert images.dtype in (np.uint8, np.uint16, np.float32) and masks.dtype in (np.uint8, np.int8, np.int16)
        assert images.ndim == 4 and images.shape[-1] == dataset.in_chans
        assert masks.shape == images.shape[:3]
        if masks.size:  # class indices, and -1 (not annotated) only in a signed mask
            assert masks.max() < dataset.num_classes and masks.min() >= (-1 if masks.dtype != np.uint8 else 0)


def test_contract_splits_are_stable(dataset):
    first = dataset.split("train")
    again = dataset.split("train")
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
