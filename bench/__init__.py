"""The benchmark harness: grids of cells, the training loop, metrics, the results store and the leaderboard."""

import os

# albumentations asks PyPI for its newest version when it is imported; the harness reaches no network unasked.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
