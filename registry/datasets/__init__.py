"""Built-in datasets."""

from registry.datasets import synthetic  # noqa: F401  (registers the entries)
