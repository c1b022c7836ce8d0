"""Active annotation rounds as a masker: ``active`` labels what its start masker labels, and says how the harness then
lets the cell's model choose more pixels, round after round (:class:`Acquisition`; the rounds themselves are
:mod:`bench.acquisition`'s and :mod:`bench.train`'s).

PixelPick (Shin et al. 2021) reached 97 % of full-label mIoU on PASCAL VOC with 50 pixels per image chosen this way.
As an entry on the maskers axis an acquisition combines with every architecture, loss and seed of a grid, and its
settings are part of the cell's identity like any masker's arguments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

import registry
from registry import register_masker
from registry.errors import UserError
from registry.maskers._common import non_negative_number, positive_int

Strategy = Literal["entropy", "margin", "random", "class_balanced"]
STRATEGIES: tuple[str, ...] = Strategy.__args__


@dataclass(frozen=True)
class Acquisition:
    """How an ``active`` cell's rounds go. Round 0 trains on the start masks; after each round the model scores every
    training pixel that is annotated but not labelled yet, and the ``per_round`` best of each tile (at least
    ``min_distance`` pixels apart from each other) take their label from the full mask; ``rounds`` such rounds. Each
    round trains the recipe's epochs, from the weights the last one ended with, or from the cell's initial weights
    when ``restart``."""

    strategy: str
    per_round: int
    rounds: int
    min_distance: float = 0.0
    restart: bool = False


class Active:
    """Partial masks that grow: the start masker's at first, then ``per_round`` pixels per tile per round chosen by
    the model (``strategy``: ``entropy``, ``margin``, ``random`` or ``class_balanced``, see
    :mod:`bench.acquisition`). ``start`` names the start masker, with its arguments as a table
    (``{name = "points_per_image", count = 5}``); the cell's fraction goes to it.

    Annotation: what the start masker's annotation counts, plus one click (``point``) per chosen pixel."""

    def __init__(self, strategy: Strategy = "entropy", per_round: int = 10, rounds: int = 3,
                 start: str | dict[str, Any] = "points_per_class", min_distance: float = 0.0,
                 restart: bool = False):
        if strategy not in STRATEGIES:
            raise UserError(f"masker 'active': strategy must be one of {', '.join(STRATEGIES)}, not {strategy!r}")
        self.start_spec = start
        self.start = _start_masker(start)
        self.acquisition = Acquisition(strategy, positive_int("active", "per_round", per_round),
                                       positive_int("active", "rounds", rounds),
                                       non_negative_number("active", "min_distance", min_distance), bool(restart))
        self.uses_fraction = self.start.uses_fraction
        self.takes_tile_index = getattr(self.start, "takes_tile_index", False)

    def annotation(self, partial) -> dict[str, float]:
        """The start masks' counts, with ``point`` present (the harness adds the chosen pixels to it)."""
        return {"point": 0, **self.start.annotation(partial)}

    def check(self, height: int, width: int, fraction: float = 1.0) -> None:
        if self.acquisition.per_round > height * width:
            raise UserError(f"masker 'active': per_round {self.acquisition.per_round} is more than the "
                            f"{height * width} pixels of a {height}x{width} tile")
        check = getattr(self.start, "check", None)
        if check is not None:
            check(height, width, fraction)

    def __call__(self, full_mask: torch.Tensor, fraction: float, generator: torch.Generator,
                 **tile: Any) -> torch.Tensor:
        """The start masks (round 0's); ``tile`` is the seed and index of a start masker that takes them."""
        return self.start(full_mask, fraction, generator, **tile)

    def __repr__(self) -> str:
        a = self.acquisition
        return (f"Active(strategy={a.strategy!r}, per_round={a.per_round}, rounds={a.rounds}, "
                f"start={self.start!r}, min_distance={a.min_distance:g}, restart={a.restart})")


def _start_masker(spec: Any):
    """The start masker from its name or its table; not an acquisition itself (rounds within rounds)."""
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise UserError(f"masker 'active': start must be a masker's name or a table with a 'name' key, not {spec!r}")
    name = spec["name"]
    if name == "active":
        raise UserError("masker 'active': start must be another masker, not 'active'")
    try:
        return registry.create_masker(name, **{k: v for k, v in spec.items() if k != "name"})
    except UserError as err:
        raise UserError(f"masker 'active': start: {err}") from None
    except TypeError as err:  # an argument the start masker does not take
        raise UserError(f"masker 'active': start {name!r}: {err}") from None


register_masker("active", test_kwargs={"per_round": 5, "rounds": 1, "start": "points_per_image"})(Active)
