"""``tu-<timm model name>``: the U-Net on timm encoders, beyond the contract that tests/test_archs.py checks for the
listed names. Encoders are the smallest at hand, inputs 32 or 64 pixels, and nothing may reach the network."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import registry
from bench.grid import parse_grid
from registry.archs.timm_unet import LISTED
from registry.core import UnknownNameError
from registry.errors import UserError

SMALL = {"decoder_channels": (8, 8, 8, 8, 8)}


pytestmark = pytest.mark.usefixtures("no_network")  # timm must build every encoder without a download


def build(name: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    return registry.create_arch(name, 3, **{**SMALL, **kwargs})


def test_listed_names_are_in_the_registry_list():
    assert set(LISTED) <= set(registry.list_archs())
    assert registry.list_archs("tu-*") == sorted(LISTED, key=registry.core.natural_key)


def test_unlisted_timm_name_builds_and_runs():
    assert "tu-resnet10t" not in registry.list_archs() and "tu-resnet10t" in registry.ARCHS
    model = build("tu-resnet10t")
    assert model.size_divisor == 32
    out = model(torch.randn(2, 3, 32, 64))
    assert out.shape == (2, 3, 32, 64)


def test_encoder_from_stride_4_gets_full_resolution_logits():
    model = build("tu-convnext_atto")
    assert model.feature_strides == (4, 8, 16, 32) and model.size_divisor == 32
    assert model.eval()(torch.randn(1, 3, 64, 32)).shape == (1, 3, 64, 32)


def test_default_decoder_channels_and_their_count():
    model = registry.create_arch("tu-resnet18", 5)
    assert [stage.conv[-2].num_features for stage in model.decoder] == [256, 128, 64, 32, 16]
    with pytest.raises(UserError, match=r"tu-resnet18: decoder_channels must be 5 positive ints.*\[16, 16\]"):
        registry.create_arch("tu-resnet18", 5, decoder_channels=[16, 16])


def test_unknown_timm_name_is_one_line_with_close_matches():
    with pytest.raises(UnknownNameError) as info:
        registry.ARCHS.entry("tu-resnet19")
    message = str(info.value)
    assert "\n" not in message and message.startswith("unknown architecture 'tu-resnet19'; did you mean")
    assert "'tu-resnet18'" in message and "timm" in message
    assert "tu-resnet19" not in registry.ARCHS


def test_non_hierarchical_encoder_is_a_user_error():
    with pytest.raises(UserError, match=r"tu-vit_tiny_patch16_224: .*strides.*\[16, 16, 16\]"):
        registry.create_arch("tu-vit_tiny_patch16_224", 3)


def test_pretrained_without_a_file_is_a_user_error():
    with pytest.raises(UserError, match="never downloads.*pretrained_path"):
        registry.create_arch("tu-resnet18", 3, pretrained=True)


def test_encoder_weights_load_from_a_local_file(tmp_path):
    source = build("tu-resnet10t", seed=0)
    path = tmp_path / "resnet10t_encoder.pt"
    torch.save(source.encoder.state_dict(), path)
    loaded = build("tu-resnet10t", seed=1, pretrained=True, pretrained_path=str(path))
    fresh = build("tu-resnet10t", seed=1)
    loaded_state, source_state = loaded.encoder.state_dict(), source.encoder.state_dict()
    assert loaded_state.keys() == source_state.keys()
    for key, value in source_state.items():
        assert torch.equal(loaded_state[key], value), key
    assert not torch.equal(fresh.encoder.conv1[0].weight, source.encoder.conv1[0].weight)  # seed 1 differs
    # The decoder stays as initialised.
    torch.testing.assert_close(loaded.head.weight, fresh.head.weight)


@pytest.mark.parametrize("content", ["other_encoder", "shapes", "not_a_state_dict", "garbage"])
def test_a_file_that_does_not_fit_is_a_user_error_naming_it(tmp_path, content):
    path = tmp_path / f"{content}.pt"
    if content == "other_encoder":  # another model's keys
        torch.save(build("tu-efficientnet_b0").encoder.state_dict(), path)
    elif content == "shapes":  # the same keys, for 1 input channel
        torch.save(build("tu-resnet10t", in_chans=1).encoder.state_dict(), path)
    elif content == "not_a_state_dict":
        torch.save([torch.zeros(1)], path)
    else:
        path.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match=re.escape(str(path))) as info:
        build("tu-resnet10t", pretrained_path=str(path))
    assert "\n" not in str(info.value)


def test_a_missing_file_is_a_user_error_naming_it(tmp_path):
    path = tmp_path / "nowhere.pt"
    with pytest.raises(UserError, match=re.escape(str(path))):
        build("tu-resnet10t", pretrained_path=str(path))


def test_grid_with_a_tu_architecture_parses_and_checks_its_keywords():
    text = """
[dataset]
name = "synthetic"
tile_size = 64

[axes]
archs = [{ name = "tu-resnet18", decoder_channels = [16, 16, 16, 16, 16] }, "tu-resnet10t"]
losses = ["partial_ce"]
maskers = ["full"]
"""
    grid = parse_grid(text, Path("tu.toml"))
    assert {cell.arch.name for cell in grid.cells} == {"tu-resnet18", "tu-resnet10t"}
    assert {tuple(cell.arch.kwargs.get("decoder_channels", ())) for cell in grid.cells} == {(16,) * 5, ()}
    with pytest.raises(UserError, match="tu.toml line 7: .*'tu-resnet18'.*decoder_channel"):
        parse_grid(text.replace("decoder_channels", "decoder_channel"), Path("tu.toml"))
    with pytest.raises(UserError, match="tu.toml line 7: unknown architecture 'tu-resnet19'; did you mean"):
        parse_grid(text.replace("tu-resnet18", "tu-resnet19"), Path("tu.toml"))
