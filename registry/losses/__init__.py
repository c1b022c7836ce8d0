"""Built-in losses for partially labelled masks."""

from registry.losses import partial_ce, partial_dice, partial_focal  # noqa: F401  (registers the entries)
