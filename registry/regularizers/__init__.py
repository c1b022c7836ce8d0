"""Built-in regularisers: terms on the unlabelled pixels, added to a loss in a grid
(``"partial_ce + 0.1 * entropy"``)."""

from registry.regularizers import consistency, entropy, gated_crf, pseudo_label  # noqa: F401  (registers the entries)
