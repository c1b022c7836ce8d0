"""Built-in maskers: which pixels of a full mask keep their label.

- ``pixels``: ``full`` (every label) and ``random_pixels`` (a fraction of i.i.d. pixels);
- ``points``: ``points_per_image`` (a count of random pixels) and ``points_per_class`` (clicks inside each class);
- ``strokes``: ``scribbles`` (thin strokes inside regions);
- ``regions``: ``blocks`` (square windows labelled in full) and ``eroded`` (every label but a band along boundaries);
- ``reference``: ``reference_pixels`` (the reference experiment's draw, on the tile before it was resized);
- ``active``: ``active`` (a start masker's labels, then rounds of pixels that the cell's model chooses).
"""

from registry.maskers import active, pixels, points, reference, regions, strokes  # noqa: F401  (registers the entries)
