"""Every registered architecture against ARCH_CONTRACT, on tiny instances; then the U-Net family's own promises."""

from __future__ import annotations

import pytest
import torch

import registry

ARCH_NAMES = registry.list_archs()
NUM_CLASSES = 3


def build(name: str, num_classes: int = NUM_CLASSES, in_chans: int = 3, **kwargs) -> torch.nn.Module:
    """A tiny instance of ``name``, built from its registered test kwargs, with fixed initial weights."""
    torch.manual_seed(0)
    return registry.create_arch(name, num_classes, in_chans, **{**registry.ARCHS.entry(name).test_kwargs, **kwargs})


def sides(model: torch.nn.Module) -> list[tuple[int, int]]:
    """Small valid input sizes, square and not, the first the smallest the model accepts."""
    d = model.size_divisor
    return [(d, d), (2 * d, 3 * d), (4 * d, 2 * d)]


def as_list(out) -> list[torch.Tensor]:
    return out if isinstance(out, list) else [out]


def param_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# -- the contract, for every registered architecture -----------------------------------------------------------------


@pytest.mark.parametrize("name", ARCH_NAMES)
def test_output_shape_and_dtype(name):
    model = build(name)
    assert isinstance(model.size_divisor, int) and model.size_divisor >= 1
    for height, width in sides(model):
        for out in as_list(model(torch.randn(2, 3, height, width))):
            assert out.shape == (2, NUM_CLASSES, height, width)
            assert out.is_floating_point()


@pytest.mark.parametrize("name", ARCH_NAMES)
def test_gradient_reaches_every_parameter(name):
    model = build(name)
    d = model.size_divisor
    torch.manual_seed(1)
    outs = as_list(model(torch.randn(2, 3, 2 * d, 3 * d)))
    # Random weights, not a plain mean: BatchNorm would make the gradient of a mean vanish in some parameters.
    loss = sum((out * torch.randn_like(out)).mean() for out in outs)
    loss.backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None, f"no gradient reaches {pname}"
        assert torch.isfinite(param.grad).all(), f"non-finite gradient in {pname}"


@pytest.mark.parametrize("name", ARCH_NAMES)
def test_eval_returns_one_tensor_even_for_a_batch_of_one(name):
    model = build(name).eval()
    d = model.size_divisor
    with torch.no_grad():
        out = model(torch.randn(1, 3, 2 * d, d))
    assert isinstance(out, torch.Tensor)
    assert out.shape == (1, NUM_CLASSES, 2 * d, d)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ARCH_NAMES)
def test_side_not_a_multiple_of_size_divisor_is_refused(name):
    model = build(name).eval()
    d = model.size_divisor
    if d == 1:
        pytest.skip(f"{name} accepts every size")
    height, width = 2 * d + 1, 2 * d
    with pytest.raises(ValueError, match=f"{height}x{width}"):
        model(torch.randn(1, 3, height, width))


@pytest.mark.parametrize("name", ARCH_NAMES)
def test_other_input_channels(name):
    model = build(name, in_chans=1).eval()
    d = model.size_divisor
    with torch.no_grad():
        assert model(torch.randn(1, 1, d, 2 * d)).shape == (1, NUM_CLASSES, d, 2 * d)


@pytest.mark.parametrize("name", ARCH_NAMES)
def test_create_arch_sets_the_number_of_classes(name):
    model = build(name, num_classes=7).eval()
    d = model.size_divisor
    with torch.no_grad():
        assert model(torch.randn(1, 3, d, d)).shape[1] == 7


# -- unet --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("upsampling", "millions"), [("bilinear", 17.3), ("transpose", 31.0)])
def test_unet_parameter_count_matches_milesial_pytorch_unet(upsampling, millions):
    model = registry.create_arch("unet", 5, 3, base_channels=64, depth=5, upsampling=upsampling)
    assert param_count(model) / 1e6 == pytest.approx(millions, abs=0.1)


def test_unet_upsampling_modes_both_work_and_differ():
    counts = {}
    for upsampling in ("bilinear", "transpose"):
        model = build("unet", upsampling=upsampling)
        assert model(torch.randn(2, 3, 16, 24)).shape == (2, NUM_CLASSES, 16, 24)
        counts[upsampling] = param_count(model)
    assert counts["bilinear"] < counts["transpose"]


def test_unet_rejects_unknown_upsampling():
    with pytest.raises(ValueError, match="bilinear.*transpose"):
        registry.create_arch("unet", 2, upsampling="nearest")


@pytest.mark.parametrize("name", ["unet", "unetplusplus"])
def test_depth_below_two_is_refused(name):
    with pytest.raises(ValueError, match="depth"):
        registry.create_arch(name, 2, depth=1)


@pytest.mark.parametrize("name", ["unet", "unetplusplus"])
def test_size_message_names_arch_depth_and_divisor(name):
    model = build(name, depth=5)
    with pytest.raises(ValueError, match=f"{name} with depth 5 needs input sides divisible by 16, got 100x96"):
        model(torch.randn(1, 3, 100, 96))


# -- unetplusplus ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("base_channels", "millions"), [(32, 9.2), (64, 36.6)])
def test_unetplusplus_parameter_count_matches_pytorch_nested_unet(base_channels, millions):
    model = registry.create_arch("unetplusplus", 5, 3, base_channels=base_channels, depth=5)
    assert param_count(model) / 1e6 == pytest.approx(millions, abs=0.1)


def test_unetplusplus_deep_supervision():
    model = build("unetplusplus", deep_supervision=True, depth=4)
    x = torch.randn(2, 3, 16, 24)
    heads = model(x)
    assert isinstance(heads, list) and len(heads) == 3
    assert all(h.shape == (2, NUM_CLASSES, 16, 24) for h in heads)
    sum(h.square().mean() for h in heads).backward()
    assert all(p.grad is not None for p in model.heads.parameters())

    # Eval mode must give the mean of the heads. To get the heads under the same (running) BatchNorm statistics, flip
    # the training flag of the top module only: it selects what forward returns, while every BatchNorm stays in eval.
    model.eval()
    with torch.no_grad():
        mean = model(x)
        model.training = True
        heads = model(x)
    assert isinstance(mean, torch.Tensor) and mean.shape == (2, NUM_CLASSES, 16, 24)
    torch.testing.assert_close(mean, torch.stack(heads).mean(dim=0))
    assert not torch.allclose(heads[0], heads[-1])  # otherwise the mean would prove nothing


def test_unetplusplus_without_deep_supervision_returns_one_tensor_in_training():
    out = build("unetplusplus")(torch.randn(2, 3, 16, 24))
    assert isinstance(out, torch.Tensor) and out.shape == (2, NUM_CLASSES, 16, 24)
