"""Built-in maskers: which pixels of a full mask keep their label."""

from registry.maskers import pixels  # noqa: F401  (registers the entries)
