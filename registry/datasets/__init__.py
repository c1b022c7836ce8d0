"""Built-in datasets."""

from registry.datasets import landcoverai, rasters, synthetic, tiles, torchgeo_datasets  # noqa: F401  (registers the entries)
