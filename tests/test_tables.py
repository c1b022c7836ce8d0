"""Tables on the terminal: rich's table where it fits, one block per row where it does not, never a cell cut short."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from bench.tables import Listing, pack, show

LISTING = Listing("cells run", ("arch", "loss", "masker", "fraction", "seed", "best mIoU", "final mIoU", "pixel acc.",
                                "s / epoch", "status"), heading=5)
LISTING.rows = [("unetplusplus-16", "partial_ce + 0.1 * gated_crf", "1 click per class", "1", "seed 2", "0.512",
                 "0.500", "0.810", "3.2", "done"),
                ("unet", "partial_ce", "random_pixels", "0.1", "seed 0", "–", "–", "–", "–", "[red]failed[/]")]


def printed(width: int) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None)
    show(console, LISTING)
    return console.file.getvalue()


@pytest.mark.parametrize("width", [40, 80, 120])
def test_a_table_too_wide_for_the_terminal_is_printed_as_blocks_with_every_value_whole(width):
    text = printed(width)
    assert "…" not in text
    for row in LISTING.rows:
        assert " · ".join(row[:5]) in text  # the heading of each row, whole
    assert "best mIoU 0.512" in text and "status failed" in text and "s / epoch 3.2" in text
    assert max(len(line) for line in text.splitlines()) <= max(width, len(" · ".join(LISTING.rows[0][:5])) + 2)


def test_a_table_that_fits_is_rich_s_table():
    text = printed(300)
    assert text.count("partial_ce + 0.1 * gated_crf") == 1 and "┃ arch" in text


def test_pack_never_splits_an_item_and_keeps_lines_within_the_width():
    items = [f"key{i} value{i}" for i in range(20)]
    lines = pack(items, 30, "   ")
    assert "   ".join(lines).split("   ") == items
    assert all(len(line) <= 30 for line in lines)
    assert pack(["x" * 50, "y"], 30, " ") == ["x" * 50, "y"]  # too long for any line: alone on its own
