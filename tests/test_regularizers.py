"""Regularisers: the REGULARIZER_CONTRACT for every registered entry, each entry's defining property, their place in
grid files (expressions and tables, mistakes with their line) and a short training run with each."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import registry
from bench.cell_job import GridData
from bench.grid import parse_grid
from bench.train import train_cell
from registry.errors import UserError

NUM_CLASSES = 4


def batch(labelled_fraction: float = 0.3, seed: int = 0, size: tuple[int, int] = (6, 8)):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, NUM_CLASSES, *size, generator=g)
    target = torch.randint(0, NUM_CLASSES, (2, *size), generator=g)
    target[torch.rand(target.shape, generator=g) >= labelled_fraction] = -1
    images = torch.randn(2, 3, *size, generator=g)
    return logits, target, images


@pytest.fixture(params=registry.list_regularizers())
def reg(request):
    return registry.create_regularizer(request.param, **registry.REGULARIZERS.entry(request.param).test_kwargs)


def small_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Conv2d(3, NUM_CLASSES, 3, padding=1)


def apply(reg, logits, target, images, progress, model):
    """Call ``reg`` as the trainer does: with the model when it asks for it."""
    if getattr(reg, "uses_model", False):
        return reg(logits, target, images, progress, model=model)
    return reg(logits, target, images, progress)


# -- contract ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.3, 0.0, 1.01])
def test_contract_finite_scalar_with_graph_never_nan(reg, fraction):
    """Some, none or all pixels labelled: a finite scalar whose gradient reaches the model's weights, finite."""
    _, target, images = batch(labelled_fraction=fraction)
    model = small_model()
    value = apply(reg, model(images), target, images, 0.5 if fraction == 0.3 else 1.0, model)
    assert value.ndim == 0 and torch.isfinite(value) and value.requires_grad
    value.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_contract_deterministic(reg):
    _, target, images = batch()
    model = small_model()
    with torch.no_grad():
        first = apply(reg, model(images), target, images, 0.7, model)
        again = apply(reg, model(images.clone()), target.clone(), images.clone(), 0.7, model)
    assert torch.equal(first, again)


def test_contract_float32_under_half_inputs(reg):
    _, target, images = batch()
    model = small_model().to(torch.bfloat16)
    images = images.to(torch.bfloat16)
    value = apply(reg, model(images), target, images, 1.0, model)
    assert value.dtype == torch.float32 and torch.isfinite(value)


def test_bad_arguments_raise_user_error():
    for name, kwargs in [("entropy", {"rampup": -1}), ("pseudo_label", {"threshold": 1.5}),
                         ("consistency", {"rampup": 2}), ("gated_crf", {"window": 4}),
                         ("gated_crf", {"sigma_rgb": 0}), ("gated_crf", {"rampup": 1.5})]:
        with pytest.raises(UserError):
            registry.create_regularizer(name, **kwargs)


# -- entropy ----------------------------------------------------------------------------------------------------------


def test_entropy_zero_when_confident_log_c_when_uniform():
    reg = registry.create_regularizer("entropy", rampup=0.0)
    _, target, images = batch(labelled_fraction=0.0)
    confident = F.one_hot(torch.randint(0, NUM_CLASSES, target.shape), NUM_CLASSES).permute(0, 3, 1, 2) * 100.0
    assert reg(confident.float(), target, images, 1.0).item() == pytest.approx(0.0, abs=1e-6)
    uniform = torch.zeros(2, NUM_CLASSES, *target.shape[1:])
    assert reg(uniform, target, images, 1.0).item() == pytest.approx(math.log(NUM_CLASSES))


def test_entropy_labelled_pixels_have_no_influence():
    reg = registry.create_regularizer("entropy")
    logits, target, images = batch()
    changed = logits.clone()
    labelled = (target != -1).unsqueeze(1).expand_as(logits)
    changed[labelled] = 50.0
    changed.requires_grad_()
    value = reg(changed, target, images, 1.0)
    assert torch.allclose(value, reg(logits, target, images, 1.0))
    value.backward()
    assert (changed.grad[labelled] == 0).all() and (changed.grad[~labelled] != 0).any()


def test_entropy_ramp_up():
    reg = registry.create_regularizer("entropy", rampup=0.5)
    logits, target, images = batch()
    full = reg(logits, target, images, 1.0)
    assert reg(logits, target, images, 0.0).item() == pytest.approx(math.exp(-5) * full.item())
    assert reg(logits, target, images, 0.25).item() == pytest.approx(math.exp(-5 * 0.25) * full.item())
    assert reg(logits, target, images, 0.5).item() == pytest.approx(full.item())


# -- pseudo_label -----------------------------------------------------------------------------------------------------


def test_pseudo_label_value_and_gradient_by_hand():
    reg = registry.create_regularizer("pseudo_label", threshold=0.9)
    # four pixels: unlabelled confident, unlabelled unsure, labelled confident, unlabelled confident (class 2)
    logits = torch.tensor([[5.0, 0.0, 0.0], [1.0, 0.5, 0.0], [6.0, 0.0, 0.0], [0.0, 0.0, 4.0]])
    logits = logits.t().reshape(1, 3, 1, 4).clone().requires_grad_()
    target = torch.tensor([[[-1, -1, 0, -1]]])
    value = reg(logits, target, torch.zeros(1, 3, 1, 4), 1.0)

    def ce(row, cls):
        return -math.log(math.exp(row[cls]) / sum(math.exp(v) for v in row))

    expected = (ce([5.0, 0.0, 0.0], 0) + ce([0.0, 0.0, 4.0], 2)) / 2
    assert value.item() == pytest.approx(expected, rel=1e-5)
    value.backward()
    assert (logits.grad[..., 1] == 0).all() and (logits.grad[..., 2] == 0).all()
    assert (logits.grad[..., 0] != 0).any() and (logits.grad[..., 3] != 0).any()


def test_pseudo_label_zero_with_graph_when_none_qualifies():
    reg = registry.create_regularizer("pseudo_label", threshold=0.99)
    logits = torch.zeros(1, 3, 4, 4, requires_grad=True)
    value = reg(logits, torch.full((1, 4, 4), -1), torch.zeros(1, 3, 4, 4), 1.0)
    assert value.item() == 0.0 and value.requires_grad
    value.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


# -- gated_crf --------------------------------------------------------------------------------------------------------


def two_colour_image(size: int = 16) -> torch.Tensor:
    """Left half one colour, right half another (normalised units)."""
    image = torch.full((1, 3, size, size), -1.0)
    image[..., size // 2:] = 1.0
    return image


def split_logits(size: int, vertical_edge: bool) -> torch.Tensor:
    """Class 0 on one half, class 1 on the other; the edge vertical (along the colour edge) or horizontal."""
    labels = torch.zeros(size, size, dtype=torch.int64)
    if vertical_edge:
        labels[:, size // 2:] = 1
    else:
        labels[size // 2:] = 1
    return (F.one_hot(labels, 2).permute(2, 0, 1).unsqueeze(0) * 20.0).float()


def test_gated_crf_zero_for_constant_prediction():
    reg = registry.create_regularizer("gated_crf")
    logits = torch.zeros(1, 3, 16, 16)
    logits[:, 1] = 30.0
    assert reg(logits, torch.full((1, 16, 16), -1), two_colour_image(), 1.0).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_gated_crf_prefers_class_edges_along_colour_edges(scale):
    reg = registry.create_regularizer("gated_crf", scale=scale)
    image, target = two_colour_image(), torch.full((1, 16, 16), -1)
    along = reg(split_logits(16, vertical_edge=True), target, image, 1.0)
    across = reg(split_logits(16, vertical_edge=False), target, image, 1.0)
    assert along.item() < 0.1 * across.item() and across.item() > 0


def test_gated_crf_gradient_flows_and_padding_is_excluded():
    reg = registry.create_regularizer("gated_crf", scale=1.0, window=3)
    logits = torch.randn(1, 2, 5, 5, requires_grad=True)
    images = torch.zeros(1, 3, 5, 5)
    value = reg(logits, torch.full((1, 5, 5), -1), images, 1.0)
    value.backward()
    assert logits.grad.abs().sum() > 0
    # by hand on a uniform image: each in-tile neighbour pair counts with its position kernel only
    p = torch.softmax(logits.detach(), 1)[0]
    total = 0.0
    for y in range(5):
        for x in range(5):
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    if (dy or dx) and 0 <= y + dy < 5 and 0 <= x + dx < 5:
                        k = math.exp(-(dy * dy + dx * dx) / (2 * 6.0 ** 2))
                        total += k * (1 - float((p[:, y, x] * p[:, y + dy, x + dx]).sum()))
    assert value.item() == pytest.approx(total / 25, rel=1e-5)


def test_gated_crf_ramp_up():
    image, target = two_colour_image(), torch.full((1, 16, 16), -1)
    logits = split_logits(16, vertical_edge=False)
    full = registry.create_regularizer("gated_crf")(logits, target, image, 0.0).item()
    ramped = registry.create_regularizer("gated_crf", rampup=0.4)
    for progress, factor in [(0.0, math.exp(-5)), (0.2, math.exp(-5 * 0.25)), (0.4, 1.0), (0.9, 1.0)]:
        assert ramped(logits, target, image, progress).item() == pytest.approx(factor * full, rel=1e-6)


# -- consistency ------------------------------------------------------------------------------------------------------


def reference_consistency(model, images, target, element: int) -> float:
    """Float64, by the definition: squared softmax difference between the model on the moved batch and the moved
    softmax, summed over classes, averaged over the pixels unlabelled after the move."""
    def move(x):
        x = torch.rot90(x, element % 4, dims=(-2, -1))
        return torch.flip(x, dims=(-1,)) if element >= 4 else x

    with torch.no_grad():
        model = model.double()
        moved = torch.softmax(model(move(images.double())), 1)
        anchor = move(torch.softmax(model(images.double()), 1))
        model.float()
    per_pixel = ((moved - anchor) ** 2).sum(1)
    mask = move(target) == -1
    return float(per_pixel[mask].mean()) if mask.any() else 0.0


@pytest.mark.parametrize("size", [(8, 8), (6, 8)])
def test_consistency_is_the_definition_for_one_non_identity_symmetry(size):
    """The value equals the float64 definition for one of the symmetries the tile allows (all seven non-identity ones
    of a square; the three that keep a rectangle's shape), and different steps pick different symmetries."""
    reg = registry.create_regularizer("consistency", rampup=0.0)
    _, target, images = batch(size=size)
    model = small_model()
    allowed = range(1, 8) if size[0] == size[1] else (2, 4, 6)
    references = {e: reference_consistency(model, images, target, e) for e in allowed}
    picked = set()
    for progress in [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]:
        value = reg(model(images), target, images, progress, model=model).item()
        matches = [e for e, ref in references.items() if ref == pytest.approx(value, rel=1e-4)]
        assert matches, (value, references)
        picked.update(matches)
    assert len(picked) > 1


def test_consistency_zero_for_an_equivariant_model_positive_otherwise():
    """A 1x1 convolution commutes with every flip and rotation: no inconsistency. Adding a left-to-right ramp to its
    logits breaks the symmetry, and the term sees it."""
    reg = registry.create_regularizer("consistency", rampup=0.0)
    _, target, images = batch(labelled_fraction=0.0, size=(8, 8))
    pointwise = torch.nn.Conv2d(3, NUM_CLASSES, 1)
    ramp = torch.linspace(-3, 3, 8).view(1, 1, 1, 8) * torch.arange(NUM_CLASSES).view(1, NUM_CLASSES, 1, 1)

    def not_equivariant(x):
        return pointwise(x) + ramp

    for progress in [0.0, 0.3, 0.9]:
        assert reg(pointwise(images), target, images, progress, model=pointwise).item() == pytest.approx(0, abs=1e-7)
        assert reg(not_equivariant(images), target, images, progress, model=not_equivariant).item() > 1e-3


def test_consistency_anchor_carries_no_gradient_and_labelled_pixels_count_for_nothing():
    reg = registry.create_regularizer("consistency", rampup=0.0)
    _, target, images = batch(size=(8, 8))
    model = small_model()
    logits = model(images).detach().requires_grad_()
    value = reg(logits, target, images, 0.4, model=model)
    value.backward()
    assert logits.grad is None and model.weight.grad.abs().sum() > 0
    everything_labelled = target.clamp_min(0)
    assert reg(logits, everything_labelled, images, 0.4, model=model).item() == 0.0


def test_consistency_ramp_up():
    _, target, images = batch(size=(8, 8))
    model = small_model()
    ramped = registry.create_regularizer("consistency", rampup=0.5)
    plain = registry.create_regularizer("consistency", rampup=0.0)
    for progress, factor in [(0.0, math.exp(-5)), (0.25, math.exp(-5 * 0.25)), (0.6, 1.0)]:
        expected = factor * plain(model(images), target, images, progress, model=model).item()
        assert ramped(model(images), target, images, progress, model=model).item() == pytest.approx(expected)


# -- grids ------------------------------------------------------------------------------------------------------------

GRID = """\
[dataset]
name = "synthetic"
tile_size = 32
train_size = 8
val_size = 4

[axes]
archs = [{ name = "unet", base_channels = 4, depth = 3 }]
losses = [
    "partial_ce",
    LOSS,
]
maskers = ["random_pixels"]
fractions = [0.5]

[recipe]
epochs = 1
batch_size = 4
lr = 0.01
"""


def parse(loss: str, path: Path = Path("test.toml")):
    return parse_grid(GRID.replace("LOSS", loss), path)


def test_expression_in_grid():
    grid = parse('"partial_ce + 0.1 * entropy + gated_crf"')
    plain, regularised = grid.cells
    assert "regularizers" not in plain.config["loss"]
    assert regularised.config["loss"] == {
        "name": "partial_ce", "label": "partial_ce + 0.1 * entropy + gated_crf", "kwargs": {},
        "regularizers": [{"name": "entropy", "weight": 0.1, "kwargs": {}},
                         {"name": "gated_crf", "weight": 1.0, "kwargs": {}}]}
    assert plain.cell_id != regularised.cell_id
    assert parse('"partial_ce+0.1*entropy"').cells[1].cell_id != parse('"partial_ce + 0.2 * entropy"').cells[1].cell_id


def test_table_in_grid():
    grid = parse('{ name = "partial_ce", normalize = "weight", regularizers = '
                 '[{ name = "entropy", weight = 0.1, rampup = 0.2 }, "pseudo_label"] }')
    loss = grid.cells[1].config["loss"]
    assert loss["label"] == "partial_ce + 0.1 * entropy + pseudo_label" and loss["kwargs"] == {"normalize": "weight"}
    assert loss["regularizers"] == [{"name": "entropy", "weight": 0.1, "kwargs": {"rampup": 0.2}},
                                    {"name": "pseudo_label", "weight": 1.0, "kwargs": {}}]
    labelled = parse('{ name = "partial_ce", label = "ce+ent", regularizers = [{ name = "entropy" }] }')
    assert labelled.cells[1].loss.label == "ce+ent"


@pytest.mark.parametrize("loss, expected", [
    ('"partial_ce + 0.1 * entrpy"', "line 11: unknown regularizer 'entrpy'; did you mean 'entropy'"),
    ('"partial_ce + -0.1 * entropy"', "line 11: regularizer 'entropy': weight must be a positive"),
    ('"partial_ce + abc * entropy"', "line 11: regularizer 'entropy': weight must be a positive"),
    ('"partial_ce - 0.1 * entropy"', "line 11: loss 'partial_ce - 0.1 * entropy'"),
    ('"partial_cee + entropy"', "line 11: unknown loss 'partial_cee'"),
    ('{ name = "partial_ce", regularizers = [{ name = "entropy", weight = -1 }] }',
     "line 11: regularizer 'entropy': weight must be a positive"),
    ('{ name = "partial_ce", regularizers = [{ name = "entropy", rampup = 2 }] }', "line 11: regularizer 'entropy'"),
    ('{ name = "partial_ce", regularizers = [{ name = "gated_crf", windw = 3 }] }', "windw"),
    ('{ name = "partial_ce", regularizers = [{ name = "gated_crff" }] }',
     "line 11: unknown regularizer 'gated_crff'; did you mean 'gated_crf'"),
])
def test_mistakes_are_reported_with_their_line(loss, expected):
    with pytest.raises(UserError) as info:
        parse(loss)
    assert expected in str(info.value), str(info.value)
    assert str(info.value).startswith("test.toml line"), str(info.value)


# -- training ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss", [f"partial_ce + 0.1 * {name}" for name in registry.list_regularizers()])
def test_one_epoch_with_a_regularizer(tmp_path, loss):
    text = GRID.replace('"partial_ce",\n    LOSS,', f'"{loss}"')
    path = tmp_path / "grid.toml"
    path.write_text(text)
    grid = parse_grid(text, path)
    cell = grid.cells[0]
    history, _ = train_cell(cell, GridData(grid).for_cell(cell), torch.device("cpu"), tmp_path / "ckpt")
    assert len(history) == 1 and math.isfinite(history[0]["train_loss"])
    name = loss.rsplit(" ", 1)[-1]
    assert math.isfinite(history[0]["regularizers"][name])
