"""Built-in losses for partially labelled masks."""

from registry.losses import partial_ce  # noqa: F401  (registers the entries)
