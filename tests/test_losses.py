"""Losses: the LOSS_CONTRACT for every registered loss, and partial_ce against independent references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import registry

NUM_CLASSES = 4


def batch(labelled_fraction: float = 0.3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, NUM_CLASSES, 5, 7, generator=g, dtype=torch.float64)
    target = torch.randint(0, NUM_CLASSES, (2, 5, 7), generator=g)
    target[torch.rand(target.shape, generator=g) >= labelled_fraction] = -1
    return logits.float(), target


@pytest.fixture(params=registry.list_losses())
def loss_fn(request):
    return registry.create_loss(request.param, **registry.LOSSES.entry(request.param).test_kwargs)


def test_contract_scalar_finite(loss_fn):
    logits, target = batch()
    value = loss_fn(logits.requires_grad_(), target)
    assert value.ndim == 0 and torch.isfinite(value)
    value.backward()
    assert torch.isfinite(logits.grad).all()


def test_contract_unlabelled_pixels_have_no_influence(loss_fn):
    logits, target = batch()
    changed = logits.clone()
    changed[(target == -1).unsqueeze(1).expand_as(logits)] = 1e3  # wild logits where nothing is labelled
    changed.requires_grad_()
    assert torch.allclose(loss_fn(logits, target), loss_fn(changed, target))
    loss_fn(changed, target).backward()
    unlabelled = (target == -1).unsqueeze(1).expand_as(logits)
    assert (changed.grad[unlabelled] == 0).all()


def test_contract_all_ignored_gives_zero_with_graph(loss_fn):
    logits = torch.randn(2, NUM_CLASSES, 4, 4, requires_grad=True)
    target = torch.full((2, 4, 4), -1)
    value = loss_fn(logits, target)
    assert value.item() == 0.0 and not math.isnan(value.item())
    assert value.requires_grad
    value.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_contract_does_not_shrink_with_label_fraction(loss_fn):
    """Averaging over all pixels, ignored ones included, would make the loss proportional to the label fraction."""
    logits, full = batch(labelled_fraction=1.0)
    sparse = full.clone()
    sparse[:, :, 1:] = -1  # keep one column: about 1/7 of the pixels
    assert loss_fn(logits, sparse).item() > 0.3 * loss_fn(logits, full).item()


def hand_partial_ce(logits, target, weight, normalize):
    """Float64 loops over pixels: -w[y] log softmax(z)[y], divided by the count or the weight sum."""
    logits = logits.double()
    total, count, weight_sum = 0.0, 0, 0.0
    for n in range(target.shape[0]):
        for i in range(target.shape[1]):
            for j in range(target.shape[2]):
                y = int(target[n, i, j])
                if y == -1:
                    continue
                z = logits[n, :, i, j]
                log_p = z[y] - math.log(sum(math.exp(v) for v in z.tolist()))
                w = 1.0 if weight is None else weight[y]
                total += -w * float(log_p)
                count += 1
                weight_sum += w
    return total / (count if normalize == "count" else weight_sum)


@pytest.mark.parametrize("weight", [None, [0.66, 1.27, 1.12, 1.91]])
@pytest.mark.parametrize("normalize", ["count", "weight"])
def test_partial_ce_against_float64_hand_computation(weight, normalize):
    logits, target = batch(seed=3)
    loss = registry.create_loss("partial_ce", weight=weight, normalize=normalize)
    assert loss(logits, target).item() == pytest.approx(hand_partial_ce(logits, target, weight, normalize), rel=1e-5)


def test_partial_ce_weight_normalisation_equals_pytorch():
    logits, target = batch(seed=1)
    weight = [0.5, 2.0, 1.0, 3.0]
    ours = registry.create_loss("partial_ce", weight=weight, normalize="weight")(logits, target)
    theirs = F.cross_entropy(logits, target, weight=torch.tensor(weight), ignore_index=-1)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-6)


def test_partial_ce_count_normalisation_differs_from_pytorch_with_weights():
    logits, target = batch(seed=1)
    weight = torch.tensor([0.5, 2.0, 1.0, 3.0])
    ours = registry.create_loss("partial_ce", weight=weight)(logits, target)
    labelled = target != -1
    expected = F.cross_entropy(logits, target, weight=weight, ignore_index=-1, reduction="sum") / labelled.sum()
    assert ours.item() == pytest.approx(expected.item(), rel=1e-6)
    pytorch_mean = F.cross_entropy(logits, target, weight=weight, ignore_index=-1)
    assert ours.item() != pytest.approx(pytorch_mean.item(), rel=1e-3)


def test_partial_ce_unweighted_equals_pytorch_mean():
    logits, target = batch(seed=2)
    ours = registry.create_loss("partial_ce")(logits, target)
    assert ours.item() == pytest.approx(F.cross_entropy(logits, target, ignore_index=-1).item(), rel=1e-6)


def test_pytorch_gives_nan_where_partial_ce_gives_zero():
    """The trap the partial loss exists to avoid."""
    logits = torch.randn(1, NUM_CLASSES, 3, 3)
    target = torch.full((1, 3, 3), -1)
    assert math.isnan(F.cross_entropy(logits, target, ignore_index=-1).item())
    assert registry.create_loss("partial_ce")(logits, target).item() == 0.0


def test_partial_ce_gradient_matches_pytorch():
    logits, target = batch(seed=4)
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    registry.create_loss("partial_ce")(a, target).backward()
    F.cross_entropy(b, target, ignore_index=-1).backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-7)


@pytest.mark.parametrize("kwargs, message", [
    ({"normalize": "mean"}, "normalize"),
    ({"weight": [1.0, -1.0]}, "positive"),
    ({"weight": [1.0, float("nan")]}, "positive"),
])
def test_partial_ce_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        registry.create_loss("partial_ce", **kwargs)


def test_partial_ce_rejects_weights_of_wrong_length():
    logits, target = batch()
    with pytest.raises(ValueError, match="3 class weights for 4 classes"):
        registry.create_loss("partial_ce", weight=[1.0, 1.0, 1.0])(logits, target)


def test_partial_ce_under_bf16_autocast_is_close_to_float32():
    logits, target = batch(seed=5)
    loss = registry.create_loss("partial_ce")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = loss(logits.bfloat16(), target)
    assert low.dtype == torch.float32
    assert low.item() == pytest.approx(loss(logits, target).item(), rel=2e-2)
