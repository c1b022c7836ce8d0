"""``deeplabv3plus-<timm model name>``: DeepLabv3+ as the paper draws it (dilated encoder, ASPP, stride-4 decoder),
beyond the contract that tests/test_archs.py checks for the listed names. Small encoders, small inputs, no network."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import timm
import torch

import registry
from bench.grid import parse_grid
from registry.archs.deeplabv3plus import LISTED, PAPER_RATES
from registry.errors import UserError

pytestmark = pytest.mark.usefixtures("no_network")  # timm must build every encoder without a download
SMALL = {"aspp_channels": 8, "low_level_channels": 4, "decoder_channels": 8}


def build(name: str = "deeplabv3plus-resnet10t", seed: int = 0, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    return registry.create_arch(name, 3, **{**SMALL, **kwargs})


def test_listed_names_are_in_the_registry_list_and_others_build():
    assert registry.list_archs("deeplabv3plus-*") == sorted(LISTED, key=registry.core.natural_key)
    assert "deeplabv3plus-resnet10t" in registry.ARCHS and "deeplabv3plus-resnet10t" not in registry.list_archs()
    assert build().eval()(torch.randn(1, 3, 32, 48)).shape == (1, 3, 32, 48)


@pytest.mark.parametrize("output_stride", [16, 8])
def test_the_deepest_feature_is_dilated_to_the_output_stride_and_the_rates_follow(output_stride):
    model = build(output_stride=output_stride).eval()
    assert model.size_divisor == output_stride
    features = model.encoder(torch.randn(1, 3, 64, 64))
    assert features[-1].shape[-2:] == (64 // output_stride,) * 2
    assert features[model.low_level_index].shape[-2:] == (16, 16)  # the decoder's stride-4 feature
    rates = [branch[0].dilation[0] for branch in model.aspp.branches[1:]]
    assert rates == [rate * 16 // output_stride for rate in PAPER_RATES]  # 6, 12, 18 at 16; 12, 24, 36 at 8


def test_aspp_matches_torchvision_s_in_evaluation():
    """An independent reference: torchvision's DeepLabv3 ASPP, given the same weights. Its pooling branch has a
    BatchNorm where ours has a bias: set to pass values through and add that bias, the two compute the same."""
    from torchvision.models.segmentation.deeplabv3 import ASPP as TorchvisionASPP

    torch.manual_seed(0)
    ours = build(aspp_channels=6).aspp
    for module in ours.modules():  # running statistics away from 0 and 1, so that a BatchNorm mix-up would show
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    ours.eval()
    in_channels = ours.branches[0][0].in_channels
    reference = TorchvisionASPP(in_channels, list(PAPER_RATES), 6).eval()
    for theirs, mine in zip(reference.convs[:-1], ours.branches, strict=True):
        theirs.load_state_dict(mine.state_dict())
    pooling = reference.convs[-1]
    pooling[1].weight.data.copy_(ours.pooling[1].weight)
    pooling[2].running_mean.zero_()
    pooling[2].running_var.fill_(1 - pooling[2].eps)
    pooling[2].weight.data.fill_(1.0)
    pooling[2].bias.data.copy_(ours.pooling[1].bias)
    reference.project[:3].load_state_dict(ours.project.state_dict())
    x = torch.randn(2, in_channels, 23, 19)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("separable", [False, True])
def test_each_atrous_branch_sees_exactly_its_dilated_grid(separable):
    """An impulse at one pixel moves a dilated 3x3 branch's output only at offsets 0 and +-rate from it."""
    aspp = build(separable=separable).aspp.eval()
    x = torch.zeros(1, aspp.branches[0][0].in_channels, 41, 41)
    impulse = x.clone()
    impulse[0, :, 20, 20] = 1.0
    with torch.no_grad():
        for branch in aspp.branches[1:]:
            rate = branch[0].dilation[0]
            changed = (branch(impulse) - branch(x)).abs().sum(1)[0] > 0
            expected = {(20 + dy, 20 + dx) for dy in (-rate, 0, rate) for dx in (-rate, 0, rate)}
            assert {tuple(p) for p in changed.nonzero().tolist()} == expected, rate


def test_the_pooling_branch_is_one_value_per_channel_and_tile():
    """The same pixels in another arrangement give the same pooled map, constant over the tile."""
    aspp = build().aspp.eval()
    x = torch.randn(2, aspp.branches[0][0].in_channels, 6, 6)
    shuffled = x.flatten(2)[..., torch.randperm(36)].view_as(x)
    with torch.no_grad():
        pooled = aspp.pooling(x)
        torch.testing.assert_close(aspp.pooling(shuffled), pooled)
    assert pooled.shape[-2:] == (1, 1)


@pytest.mark.parametrize("separable", [False, True])
def test_a_batch_of_one_trains(separable):
    """No BatchNorm on the pooled branch: its single value per channel would make BatchNorm fail in training."""
    model = build(separable=separable).train()
    out = model(torch.randn(1, 3, 32, 32))
    out.mean().backward()
    assert out.shape == (1, 3, 32, 32)


@pytest.mark.parametrize("separable", [False, True])
def test_the_aspp_does_the_arithmetic_of_its_convolutions(separable):
    """FLOPs counted by PyTorch against a count by hand for an H x W feature of C_in channels and C out: the 1x1
    branch, three dilated 3x3 branches (plain: 9 C_in C per pixel; separable: 9 C_in depthwise and C_in C pointwise),
    the pooling branch's 1x1 on one pixel, and the projection of the 5 C concatenated channels."""
    from torch.utils.flop_counter import FlopCounterMode

    aspp = build(separable=separable, aspp_channels=16).aspp.eval()
    c_in, c, pixels = aspp.branches[0][0].in_channels, 16, 6 * 7
    atrous = 9 * c_in + c_in * c if separable else 9 * c_in * c
    expected = 2 * (pixels * c_in * c + 3 * pixels * atrous + c_in * c + pixels * 5 * c * c)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        aspp(torch.randn(1, c_in, 6, 7))
    assert counter.get_total_flops() == expected


def test_separable_convolves_each_channel_alone_in_every_3x3_of_the_head():
    plain, separable = build(), build(separable=True)
    for head in (separable.aspp, separable.decoder):
        convs = [m for m in head.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
        assert convs and all(m.groups == m.in_channels == m.out_channels for m in convs)
    assert all(m.groups == 1 for m in plain.modules() if isinstance(m, torch.nn.Conv2d))
    assert sum(p.numel() for p in separable.parameters()) < sum(p.numel() for p in plain.parameters())
    assert separable.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 3, 32, 32)


def test_default_widths_are_the_paper_s():
    model = registry.create_arch("deeplabv3plus-resnet18", 5)
    assert model.aspp.project[0].out_channels == 256 and model.low_level[0].out_channels == 48
    assert model.decoder[0].out_channels == 256 and model.head.out_channels == 5


@pytest.mark.parametrize("kwargs, message", [
    ({"output_stride": 32}, "output_stride must be 8 or 16, not 32"),
    ({"aspp_channels": 0}, "aspp_channels must be a positive int, not 0"),
    ({"decoder_channels": 1.5}, "decoder_channels must be a positive int, not 1.5"),
    ({"pretrained": True}, "never downloads.*pretrained_path"),
    ({"separable": "yes"}, "separable must be true or false, not 'yes'"),
])
def test_bad_arguments_are_one_line_user_errors(kwargs, message):
    with pytest.raises(UserError, match=message) as info:
        registry.create_arch("deeplabv3plus-resnet10t", 3, **kwargs)
    assert "\n" not in str(info.value)


def test_an_encoder_timm_cannot_dilate_is_refused_naming_it():
    with pytest.raises(UserError, match=r"deeplabv3plus-vit_tiny_patch16_224: timm cannot build it as a feature "
                                        r"encoder with output_stride=16"):
        registry.create_arch("deeplabv3plus-vit_tiny_patch16_224", 3)


def test_weights_of_the_undilated_encoder_load(tmp_path):
    """The file a user saves from timm.create_model(name, features_only=True) fits the dilated encoder."""
    torch.manual_seed(3)
    source = timm.create_model("resnet10t", features_only=True, pretrained=False)
    path = tmp_path / "resnet10t.pt"
    torch.save(source.state_dict(), path)
    loaded = build(seed=1, pretrained_path=str(path))
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.encoder.state_dict()[key], value), key
    other = tmp_path / "other.pt"
    torch.save(timm.create_model("resnet18", features_only=True, pretrained=False).state_dict(), other)
    with pytest.raises(UserError, match=re.escape(str(other))):
        build(pretrained_path=str(other))


def test_grid_with_a_deeplab_architecture_parses_and_checks_its_keywords():
    text = """
[dataset]
name = "synthetic"
tile_size = 64

[axes]
archs = [{ name = "deeplabv3plus-resnet18", output_stride = 8 }]
losses = ["partial_ce"]
maskers = ["full"]
"""
    (cell,) = parse_grid(text, Path("dl.toml")).cells
    assert cell.arch.name == "deeplabv3plus-resnet18" and cell.arch.kwargs == {"output_stride": 8}
    with pytest.raises(UserError, match="dl.toml line 7: .*'deeplabv3plus-resnet18'.*output_strid"):
        parse_grid(text.replace("output_stride", "output_strid"), Path("dl.toml"))
