"""Built-in datasets."""

from registry.datasets import landcoverai, synthetic  # noqa: F401  (registers the entries)
