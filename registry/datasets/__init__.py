"""Built-in datasets."""

from registry.datasets import landcoverai, rasters, synthetic  # noqa: F401  (registers the entries)
