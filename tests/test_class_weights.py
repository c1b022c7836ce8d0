"""[recipe] class_weights given as a weighting: computed per cell from the classes of its labelled training pixels."""

from __future__ import annotations

import numpy as np
import pytest
from grids import synthetic_grid

import registry
from bench.cli import main
from bench.data import class_counts, partial_masks
from bench.grid import parse_grid
from bench.recipe import weights_from_counts
from bench.store import ResultStore


def test_weights_by_hand():
    # shares 0.75 and 0.25; inverse frequency 4/3 and 4, whose mean over the labelled pixels is 2
    assert weights_from_counts("inverse_frequency", [300, 100, 0]) == pytest.approx([2 / 3, 2.0, 2.0])
    # inverse square root: 1.1547 and 2, mean 0.75 * 1.1547 + 0.25 * 2 = 1.3660; the absent class takes the largest
    assert weights_from_counts("inverse_sqrt_frequency", [300, 100, 0]) == pytest.approx(
        [(4 / 3) ** 0.5 / 1.3660254, 2 / 1.3660254, 2 / 1.3660254])


@pytest.mark.parametrize("weighting", ["inverse_frequency", "inverse_sqrt_frequency"])
def test_the_weighted_mean_over_labelled_pixels_is_one_and_rarer_classes_weigh_more(weighting):
    counts = [5000, 40, 900, 7, 0]
    weights = weights_from_counts(weighting, counts)
    present = [(c, w) for c, w in zip(counts, weights) if c]
    assert sum(c * w for c, w in present) / sum(counts) == pytest.approx(1.0)
    by_count = [w for _, w in sorted(present)]
    assert by_count == sorted(by_count, reverse=True)


def test_class_counts_count_labelled_pixels_only():
    rng = np.random.default_rng(0)
    masks = rng.integers(-1, 4, size=(300, 9, 7)).astype(np.int8)  # more than one chunk of 256 tiles
    expected = [int(np.count_nonzero(masks == k)) for k in range(4)]
    assert class_counts(masks, 4) == expected


def test_a_grid_may_name_a_weighting_and_nothing_else(tmp_path):
    text = synthetic_grid(recipe='class_weights = "inverse_sqrt_frequency"')
    assert parse_grid(text, tmp_path / "g.toml").cells[0].recipe["class_weights"] == "inverse_sqrt_frequency"
    with pytest.raises(registry.UserError, match="class_weights = 'inverse': must be a list of positive numbers, or "
                                                 '"inverse_frequency" or "inverse_sqrt_frequency"'):
        parse_grid(synthetic_grid(recipe='class_weights = "inverse"'), tmp_path / "g.toml")


def test_a_cell_weighs_the_classes_of_the_pixels_it_is_given(tmp_path, capsys):
    grid = tmp_path / "g.toml"
    grid.write_text(synthetic_grid(train_size=6, maskers='"points_per_class"', fractions="1.0",
                                   recipe='class_weights = "inverse_sqrt_frequency"'))
    out = tmp_path / "runs"
    assert main(["run", "--grid", str(grid), "--out", str(out)]) == 0
    with ResultStore(out / "results.sqlite", readonly=True) as store:
        (row,) = store.rows()
    dataset = registry.create_dataset("synthetic", tile_size=32, train_size=6, val_size=4, test_size=4)
    masks = partial_masks(dataset.split("train")[1], registry.create_masker("points_per_class"), 1.0, seed=0)
    expected = weights_from_counts("inverse_sqrt_frequency", class_counts(masks, dataset.num_classes))
    assert row.metrics["class_weights"] == pytest.approx(expected)
    assert "class weights inverse_sqrt_frequency" in (out / "leaderboard.md").read_text()
