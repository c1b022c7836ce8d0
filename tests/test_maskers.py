"""Maskers: the MASKER_CONTRACT for every registered masker, and the built-in ones' own promises."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import registry
from bench.cli import main
from bench.data import draw_partial, partial_masks, tile_generator


def full_mask(seed: int = 0, shape=(24, 32)) -> torch.Tensor:
    return torch.randint(0, 5, shape, generator=torch.Generator().manual_seed(seed))


def region_mask(seed: int = 0, shape=(24, 32), cell: int = 4) -> torch.Tensor:
    """Classes drawn per cell of 4 x 4 pixels: regions with boundaries, as in a segmentation mask. (In pixel noise a
    masker that keeps only the pixels away from boundaries, such as `eroded`, rightly keeps none.)"""
    coarse = full_mask(seed, (shape[0] // cell, shape[1] // cell))
    return coarse.repeat_interleave(cell, 0).repeat_interleave(cell, 1)


@pytest.fixture(params=registry.list_maskers())
def masker(request):
    return registry.create_masker(request.param, **registry.MASKERS.entry(request.param).test_kwargs)


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.5, 1.0])
def test_contract_partial_copy(masker, fraction):
    for full in (full_mask(), region_mask()):
        partial = draw_partial(masker, full, fraction, 0, 0)
        assert partial.shape == full.shape and partial.dtype == torch.int64
        assert ((partial == full) | (partial == -1)).all()
    assert (partial >= 0).any()  # in the region mask


def test_contract_deterministic_per_generator_seed(masker):
    full = full_mask()
    a = draw_partial(masker, full, 0.2, 7, 3)
    b = draw_partial(masker, full, 0.2, 7, 3)
    assert torch.equal(a, b)


def test_contract_declares_whether_fraction_is_used(masker):
    assert isinstance(masker.uses_fraction, bool)


def test_contract_uint8_input_keeps_minus_one(masker):
    """-1 must not wrap to 255 when the full mask arrives as uint8."""
    partial = draw_partial(masker, full_mask().to(torch.uint8), 0.1, 0, 0)
    assert partial.dtype == torch.int64 and partial.max() < 5


@pytest.mark.parametrize("fraction", [0.0001, 0.1, 0.15, 0.999, 1.0])
def test_random_pixels_keeps_exactly_round_fraction_of_pixels(fraction):
    full = full_mask(shape=(64, 48))
    partial = registry.create_masker("random_pixels")(full, fraction, tile_generator(1, 2))
    assert int((partial >= 0).sum()) == round(fraction * 64 * 48)


@pytest.mark.parametrize("shape", [(64, 48), (32, 32), (7, 5)])
def test_random_pixels_check_refuses_exactly_the_fractions_that_keep_no_pixel(shape):
    masker, pixels = registry.create_masker("random_pixels"), shape[0] * shape[1]
    for fraction in (0.3 / pixels, 0.5 / pixels, 0.51 / pixels, 1 / pixels, 1.49 / pixels, 0.01, 1.0):
        keeps = int((masker(full_mask(shape=shape), fraction, tile_generator(0, 0)) >= 0).sum())
        if keeps:
            masker.check(*shape, fraction)
        else:
            with pytest.raises(registry.UserError, match="rounds to none: no label to train on"):
                masker.check(*shape, fraction)
    assert keeps and (masker(full_mask(shape=shape), 0.5 / pixels, tile_generator(0, 0)) < 0).all()


def test_random_pixels_differ_between_tiles_and_seeds():
    masker = registry.create_masker("random_pixels")
    full = full_mask(shape=(64, 64))
    base = masker(full, 0.1, tile_generator(0, 0))
    assert not torch.equal(base >= 0, masker(full, 0.1, tile_generator(0, 1)) >= 0)
    assert not torch.equal(base >= 0, masker(full, 0.1, tile_generator(1, 0)) >= 0)


def test_random_pixels_are_spread_uniformly():
    """Over many tiles each pixel is labelled about `fraction` of the time (no positional bias)."""
    masker = registry.create_masker("random_pixels")
    full = torch.zeros(16, 16, dtype=torch.int64)
    hits = sum((masker(full, 0.25, tile_generator(0, i)) >= 0).double() for i in range(400))
    rate = hits / 400
    assert abs(rate.mean().item() - 0.25) < 1e-9
    assert rate.min() > 0.15 and rate.max() < 0.35


def test_random_pixels_rejects_fraction_outside_unit_interval():
    with pytest.raises(ValueError, match="fraction"):
        registry.create_masker("random_pixels")(full_mask(), 1.5, tile_generator(0, 0))


def test_full_keeps_everything_and_ignores_fraction():
    masker = registry.create_masker("full")
    full = full_mask()
    assert not masker.uses_fraction
    assert torch.equal(masker(full, 0.01, tile_generator(0, 0)), full)


def test_partial_masks_are_fixed_per_tile_and_seed():
    """The harness draws each tile's pixels from (seed, tile index): the same in every epoch and every run."""
    masks = np.random.default_rng(0).integers(0, 5, (6, 16, 16), dtype=np.uint8)
    masker = registry.create_masker("random_pixels")
    first = partial_masks(masks, masker, 0.2, seed=42)
    again = partial_masks(masks, masker, 0.2, seed=42)
    other_seed = partial_masks(masks, masker, 0.2, seed=43)
    assert first.dtype == np.int8 and np.array_equal(first, again)
    assert not np.array_equal(first, other_seed)
    assert not np.array_equal(first[0] >= 0, first[1] >= 0)
    labelled = first >= 0
    assert np.array_equal(first[labelled], masks[labelled].astype(np.int8))
    # a tile's pixels do not depend on which other tiles are in the split
    assert np.array_equal(partial_masks(masks[:3], masker, 0.2, seed=42), first[:3])


def test_partial_masks_refuses_a_masker_that_invents_labels():
    masks = np.zeros((2, 8, 8), dtype=np.uint8)

    def liar(full, fraction, generator):
        return torch.ones_like(full)

    with pytest.raises(ValueError, match="not a partial copy"):
        partial_masks(masks, liar, 0.5, seed=0)


def test_a_masker_whose_check_does_not_take_the_fraction_is_refused_when_built(tmp_path, capsys):
    """The contract's check(height, width, fraction): an entry written for an older two-argument check is named, with
    the module that registered it, in one line of the command."""
    (tmp_path / "old_check_plugin.py").write_text(
        "import registry\n\n\n"
        "@registry.register_masker('old_check_masker')\n"
        "class OldCheck:\n"
        "    uses_fraction = True\n\n"
        "    def check(self, height, width):\n"
        "        pass\n\n"
        "    def __call__(self, full_mask, fraction, generator):\n"
        "        return full_mask.clone()\n")
    grid = tmp_path / "grid.toml"
    grid.write_text('[dataset]\nname = "synthetic"\ntile_size = 32\ntrain_size = 2\nval_size = 2\n\n[axes]\n'
                    'archs = [{ name = "unet", base_channels = 4, depth = 3 }]\nlosses = ["partial_ce"]\n'
                    'maskers = ["old_check_masker"]\n')
    try:
        code = main(["run", "--grid", str(grid), "--plugin", str(tmp_path / "old_check_plugin.py"), "--dry-run",
                     "--out", str(tmp_path / "runs")])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1, err
        assert "masker 'old_check_masker': check must take (height, width, fraction), not (height, width)" in err
        assert "registered by module old_check_plugin; the contract: help(registry.MASKERS)" in err
        with pytest.raises(TypeError):  # still a TypeError for code that builds entries itself
            registry.create_masker("old_check_masker")
    finally:
        registry.MASKERS._entries.pop("old_check_masker", None)
