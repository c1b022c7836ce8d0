"""Losses: the LOSS_CONTRACT for every registered loss, and partial_ce, partial_focal and partial_dice against
independent references (float64 loops over pixels, hand-worked examples)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import registry
from registry.errors import UserError

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
    """Float64 loops over pixels: -w[y] log softmax(z)[y], divided by the count or the weight sum (the focal
    reference below with gamma = 0)."""
    return hand_partial_focal(logits, target, 0.0, weight, normalize)


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
    with pytest.raises(UserError, match=message):
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


# -- arguments shared by the losses that take class weights ---------------------------------------------------------


@pytest.mark.parametrize("name", ["partial_ce", "partial_focal", "partial_dice"])
@pytest.mark.parametrize("weight", [[1.0, -0.5, 1.0, 1.0], [1.0, 0.0], [1.0, float("inf")], [[1.0, 2.0]], [], "heavy"])
def test_bad_class_weights_are_user_errors_when_built(name, weight):
    """The harness builds every loss of a grid before training: a bad argument must be one line, not a traceback."""
    with pytest.raises(UserError, match=f"{name}: class weights must be a list of positive numbers"):
        registry.create_loss(name, weight=weight)


@pytest.mark.parametrize("name", ["partial_focal", "partial_dice"])
def test_weights_of_wrong_length_are_refused_at_the_first_batch(name):
    logits, target = batch()
    with pytest.raises(ValueError, match=f"{name}: 3 class weights for 4 classes"):
        registry.create_loss(name, weight=[1.0, 1.0, 1.0])(logits, target)


# -- partial_focal ----------------------------------------------------------------------------------------------------


def labelled_pixels(logits, target):
    """(class, float64 logits as a list) of every labelled pixel of the batch: what the hand references loop over."""
    logits = logits.double()
    for n in range(target.shape[0]):
        for i in range(target.shape[1]):
            for j in range(target.shape[2]):
                y = int(target[n, i, j])
                if y != -1:
                    yield y, logits[n, :, i, j].tolist()


def hand_partial_focal(logits, target, gamma, weight, normalize):
    """Float64 loops over pixels: -w[y] (1 - p_y)^gamma log p_y, divided by the count or the weight sum."""
    total, count, weight_sum = 0.0, 0, 0.0
    for y, z in labelled_pixels(logits, target):
        p = math.exp(z[y]) / sum(math.exp(v) for v in z)
        w = 1.0 if weight is None else weight[y]
        total += -w * (1.0 - p) ** gamma * math.log(p)
        count += 1
        weight_sum += w
    return total / (count if normalize == "count" else weight_sum)


@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0, 3.5])
@pytest.mark.parametrize("weight", [None, [0.66, 1.27, 1.12, 1.91]])
@pytest.mark.parametrize("normalize", ["count", "weight"])
def test_partial_focal_against_float64_hand_computation(gamma, weight, normalize):
    logits, target = batch(seed=3)
    logits = 3 * logits  # confident pixels too, where the focal factor matters
    loss = registry.create_loss("partial_focal", gamma=gamma, weight=weight, normalize=normalize)
    expected = hand_partial_focal(logits, target, gamma, weight, normalize)
    assert loss(logits, target).item() == pytest.approx(expected, rel=1e-5)


def test_partial_focal_hand_worked_pixel():
    """One labelled pixel with p_y = 0.9: the loss is 0.1^2 of its cross-entropy, -log 0.9."""
    logits = torch.log(torch.tensor([0.9, 0.05, 0.05])).reshape(1, 3, 1, 1).expand(1, 3, 1, 2).contiguous()
    target = torch.tensor([[[0, -1]]])
    value = registry.create_loss("partial_focal", gamma=2.0)(logits, target)
    assert value.item() == pytest.approx(0.01 * -math.log(0.9), rel=1e-5)


@pytest.mark.parametrize("weight", [None, [0.5, 2.0, 1.0, 3.0]])
@pytest.mark.parametrize("normalize", ["count", "weight"])
def test_partial_focal_with_gamma_zero_is_partial_ce_exactly(weight, normalize):
    logits, target = batch(seed=6)
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    focal = registry.create_loss("partial_focal", gamma=0.0, weight=weight, normalize=normalize)(a, target)
    ce = registry.create_loss("partial_ce", weight=weight, normalize=normalize)(b, target)
    assert focal.item() == ce.item()  # bitwise: the same per-pixel values, summed in the same order
    focal.backward()
    ce.backward()
    assert torch.allclose(a.grad, b.grad, rtol=1e-6, atol=1e-9)


def test_partial_focal_down_weights_confident_pixels():
    """The defining property: below cross-entropy everywhere, and far below it where the model is already right."""
    logits, target = batch(labelled_fraction=1.0, seed=7)
    ce = F.cross_entropy(logits, target, reduction="none")
    focal = registry.create_loss("partial_focal", gamma=2.0)
    for n, i, j in [(0, 0, 0), (1, 2, 3), (0, 4, 6)]:
        only = torch.full_like(target, -1)
        only[n, i, j] = target[n, i, j]
        p = math.exp(-ce[n, i, j].item())
        assert focal(logits, only).item() == pytest.approx((1 - p) ** 2 * ce[n, i, j].item(), rel=1e-5)
    assert focal(logits, target).item() < F.cross_entropy(logits, target).item()


def test_partial_focal_gradient_is_finite_where_p_rounds_to_one():
    """(1 - p)^gamma with gamma < 1 has an infinite slope at p = 1; the floor keeps the gradient finite there."""
    logits = torch.zeros(1, 3, 1, 2)
    logits[0, 0] = 200.0  # p_0 == 1.0 in float32 at both pixels
    logits.requires_grad_()
    value = registry.create_loss("partial_focal", gamma=0.5)(logits, torch.tensor([[[0, 0]]]))
    value.backward()
    assert value.item() == 0.0 and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("name, kwargs, message", [
    ("partial_focal", {"gamma": -1.0}, "gamma must be a finite number >= 0"),
    ("partial_focal", {"gamma": float("nan")}, "gamma must be a finite number >= 0"),
    ("partial_focal", {"gamma": "2"}, "gamma must be a finite number >= 0"),
    ("partial_focal", {"normalize": "mean"}, "normalize must be one of"),
    ("partial_dice", {"smooth": 0.0}, "smooth must be a finite number > 0"),
    ("partial_dice", {"smooth": -1.0}, "smooth must be a finite number > 0"),
    ("partial_dice", {"smooth": float("inf")}, "smooth must be a finite number > 0"),
    ("partial_dice", {"smooth": True}, "smooth must be a finite number > 0"),
])
def test_focal_and_dice_reject_bad_arguments(name, kwargs, message):
    with pytest.raises(UserError, match=message):
        registry.create_loss(name, **kwargs)


@pytest.mark.parametrize("name, tolerance", [("partial_focal", 3e-2), ("partial_dice", 2e-2)])
def test_focal_and_dice_under_bf16_autocast_are_close_to_float32(name, tolerance):
    logits, target = batch(seed=5)
    loss = registry.create_loss(name)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = loss(logits.bfloat16(), target)
    assert low.dtype == torch.float32
    assert low.item() == pytest.approx(loss(logits, target).item(), rel=tolerance)


# -- partial_dice -----------------------------------------------------------------------------------------------------


def hand_dice_per_class(logits, target, smooth=1.0):
    """Float64 loops over the labelled pixels of the whole batch: each class's Dice (2 I + s) / (sum p + sum g + s),
    and whether it counts (labelled somewhere, or the arg-max of some labelled pixel)."""
    num_classes = logits.shape[1]
    inter, prob_sum, label_count, predicted = ([0.0] * num_classes for _ in range(4))
    for y, z in labelled_pixels(logits, target):
        total = sum(math.exp(v) for v in z)
        p = [math.exp(v) / total for v in z]
        for c in range(num_classes):
            prob_sum[c] += p[c]
            predicted[c] += z[c] == max(z)
        inter[y] += p[y]
        label_count[y] += 1
    dice = [(2 * inter[c] + smooth) / (prob_sum[c] + label_count[c] + smooth) for c in range(num_classes)]
    counts = [label_count[c] > 0 or predicted[c] > 0 for c in range(num_classes)]
    return dice, counts


def hand_partial_dice(logits, target, smooth=1.0, weight=None):
    dice, counts = hand_dice_per_class(logits, target, smooth)
    w = [0.0 if not counted else 1.0 if weight is None else weight[c] for c, counted in enumerate(counts)]
    return sum(wc * (1 - d) for wc, d in zip(w, dice)) / sum(w) if sum(w) else 0.0


def probabilities_as_logits(rows):
    """Logits [1, C, 1, P] whose softmax at pixel k is rows[k] (the log of a distribution is one of its logits)."""
    return torch.log(torch.tensor(rows, dtype=torch.float64)).T.reshape(1, len(rows[0]), 1, len(rows)).float()


def test_partial_dice_hand_worked_example():
    """Three labelled pixels (labels 0, 1, 1) and one unlabelled, 3 classes, smooth = 1:
    class 0: I = 0.7,       sum p = 0.7 + 0.2 + 0.5 = 1.4, labels 1 -> (1.4 + 1) / (2.4 + 1)
    class 1: I = 0.7 + 0.3, sum p = 0.2 + 0.7 + 0.3 = 1.2, labels 2 -> (2.0 + 1) / (3.2 + 1)
    class 2: neither labelled nor the arg-max of a labelled pixel: left out of the mean."""
    logits = probabilities_as_logits([[0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.5, 0.3, 0.2], [0.0001, 0.0001, 0.9998]])
    target = torch.tensor([[[0, 1, 1, -1]]])
    dice0, dice1 = 2.4 / 3.4, 3.0 / 4.2
    loss = registry.create_loss("partial_dice", smooth=1.0)
    assert loss(logits, target).item() == pytest.approx(1 - (dice0 + dice1) / 2, rel=1e-6)
    weighted = registry.create_loss("partial_dice", smooth=1.0, weight=[1.0, 3.0, 5.0])
    assert weighted(logits, target).item() == pytest.approx(1 - (dice0 + 3 * dice1) / 4, rel=1e-6)
    smoother = registry.create_loss("partial_dice", smooth=10.0)
    assert smoother(logits, target).item() == pytest.approx(1 - (11.4 / 12.4 + 12.0 / 13.2) / 2, rel=1e-6)


def test_partial_dice_counts_a_predicted_but_absent_class():
    """As mIoU does: class 2 is the arg-max of the third pixel (labelled 1), so it joins the mean, scoring
    smooth / (sum p + smooth) = 1 / (0.1 + 0.1 + 0.4 + 1)."""
    logits = probabilities_as_logits([[0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4]])
    target = torch.tensor([[[0, 1, 1]]])
    dice0 = (1.4 + 1) / (1.2 + 1 + 1)  # I = 0.7, sum p = 0.7 + 0.2 + 0.3
    dice1 = (2.0 + 1) / (1.2 + 2 + 1)  # I = 0.7 + 0.3, sum p = 0.2 + 0.7 + 0.3
    dice2 = 1 / 1.6
    value = registry.create_loss("partial_dice")(logits, target)
    assert value.item() == pytest.approx(1 - (dice0 + dice1 + dice2) / 3, rel=1e-6)


@pytest.mark.parametrize("smooth", [1.0, 1e-3, 5.0])
@pytest.mark.parametrize("weight", [None, [0.66, 1.27, 1.12, 1.91]])
@pytest.mark.parametrize("seed, fraction", [(3, 0.3), (8, 0.05), (9, 1.0)])
def test_partial_dice_against_float64_hand_computation(smooth, weight, seed, fraction):
    logits, target = batch(labelled_fraction=fraction, seed=seed)
    logits = 2 * logits
    value = registry.create_loss("partial_dice", smooth=smooth, weight=weight)(logits, target)
    assert value.item() == pytest.approx(hand_partial_dice(logits, target, smooth, weight), rel=1e-5, abs=1e-7)


def test_partial_dice_class_with_a_single_labelled_pixel_counts_in_full():
    """Class 3 is labelled on one pixel of one image of the batch and predicted nowhere: it is still one of the four
    classes of the mean (a per-image mean would miss it in the other image), and its logit there gets a gradient."""
    logits, target = batch(labelled_fraction=0.6, seed=10)
    logits[:, 3] -= 5.0  # class 3 is never the arg-max
    target[target == 3] = 0
    target[1, 2, 4] = 3
    logits.requires_grad_()
    value = registry.create_loss("partial_dice")(logits, target)
    dice, counts = hand_dice_per_class(logits.detach(), target)
    assert counts == [True] * 4
    assert value.item() == pytest.approx(1 - sum(dice) / 4, rel=1e-5)
    assert abs(value.item() - (1 - sum(dice[:3]) / 3)) > 0.02  # not the mean of the three others
    value.backward()
    assert logits.grad[1, 3, 2, 4] < 0  # raising class 3's logit at its pixel lowers the loss


def test_partial_dice_sums_over_the_whole_batch_not_image_by_image():
    """The loss depends on the batch's labelled pixels, not on which image holds them: two images side by side in
    one give the same value."""
    logits, target = batch(seed=11)
    value = registry.create_loss("partial_dice")(logits, target)
    side_by_side = registry.create_loss("partial_dice")(torch.cat(list(logits), dim=-1)[None],
                                                         torch.cat(list(target), dim=-1)[None])
    assert value.item() == pytest.approx(side_by_side.item(), rel=1e-6)
    per_image = sum(registry.create_loss("partial_dice")(logits[n:n + 1], target[n:n + 1]) for n in range(2)) / 2
    assert value.item() != pytest.approx(per_image.item(), rel=1e-3)


def test_partial_dice_ignores_even_non_finite_logits_at_unlabelled_pixels():
    logits, target = batch(seed=12)
    unlabelled = (target == -1).unsqueeze(1).expand_as(logits)
    wild = logits.clone()
    wild[unlabelled] = float("nan")
    wild[:, 0][target == -1] = float("inf")
    wild.requires_grad_()
    loss = registry.create_loss("partial_dice")
    value = loss(wild, target)
    assert value.item() == loss(logits, target).item()
    value.backward()
    assert (wild.grad[unlabelled] == 0).all() and torch.isfinite(wild.grad).all()


def test_partial_dice_is_zero_for_a_perfect_prediction():
    _, target = batch(seed=13)
    perfect = 50.0 * F.one_hot(target.clamp_min(0), NUM_CLASSES).permute(0, 3, 1, 2).float()
    for smooth in (1e-3, 1.0, 100.0):
        assert registry.create_loss("partial_dice", smooth=smooth)(perfect, target).item() == pytest.approx(0, abs=1e-6)


