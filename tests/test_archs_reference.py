"""``reference-unet`` and ``reference-unetplusplus``: the reference experiment's models, beyond the contract that
tests/test_archs.py checks. What is pinned here was measured on the reference's own code (its ``src/models.py``): the
parameter counts, every state_dict name and shape (so its ``best_model.pth`` files load strictly), the training FLOPs,
the up-sampling and the UNet++'s wiring. Full-size models are built on the meta device: no memory, no arithmetic."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import registry
from bench.perf import count_training_step, parse_arch_spec
from registry.errors import UserError

NUM_CLASSES = 5
BASE = 64
WIDTHS = [BASE * 2**i for i in range(5)]


def build_full(name: str, **kwargs) -> torch.nn.Module:
    """The model at the reference's size (base 64, 3 input channels, 5 classes), on the meta device."""
    with torch.device("meta"):
        return registry.create_arch(name, NUM_CLASSES, 3, **kwargs)


def build_tiny(name: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    return registry.create_arch(name, NUM_CLASSES, 3, **{"base_channels": 4, **kwargs})


def randomise_batchnorm_statistics(model: torch.nn.Module) -> None:
    """Fresh running statistics are 0 and 1, which would hide a BatchNorm whose buffers were not loaded."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)


# -- the expected state_dicts, spelt out by the reference's naming rule ------------------------------------------------


def double_conv(prefix: str, cin: int, cout: int) -> dict[str, list[int]]:
    """``prefix.double_conv``: conv (no bias), BatchNorm, ReLU, conv (no bias), BatchNorm, ReLU; in -> out -> out."""
    keys = {}
    for index, fan_in in ((0, cin), (3, cout)):
        keys[f"{prefix}.double_conv.{index}.weight"] = [cout, fan_in, 3, 3]
        for buffer in ("weight", "bias", "running_mean", "running_var"):
            keys[f"{prefix}.double_conv.{index + 1}.{buffer}"] = [cout]
        keys[f"{prefix}.double_conv.{index + 1}.num_batches_tracked"] = []
    return keys


def head(prefix: str) -> dict[str, list[int]]:
    return {f"{prefix}.weight": [NUM_CLASSES, BASE, 1, 1], f"{prefix}.bias": [NUM_CLASSES]}


def expected_unet(bilinear: bool) -> dict[str, list[int]]:
    factor = 2 if bilinear else 1
    keys = double_conv("inc", 3, WIDTHS[0])
    for k in range(1, 5):
        keys |= double_conv(f"down{k}.maxpool_conv.1", WIDTHS[k - 1], WIDTHS[k] // (factor if k == 4 else 1))
    for k, (cin, cout) in enumerate([(1024, 256 * 2 // factor), (512, 128 * 2 // factor), (256, 64 * 2 // factor),
                                     (128, 64)], start=1):
        if not bilinear:
            keys |= {f"up{k}.up.weight": [cin, cin // 2, 2, 2], f"up{k}.up.bias": [cin // 2]}
        keys |= double_conv(f"up{k}.conv", cin, cout)
    return keys | head("outc")


def expected_unetplusplus() -> dict[str, list[int]]:
    keys = {}
    for i in range(5):
        keys |= double_conv(f"conv{i}_0", 3 if i == 0 else WIDTHS[i - 1], WIDTHS[i])
    for diagonal in range(1, 5):
        for j in range(1, diagonal + 1):  # node X[i][j] is up{i+j}_{j-1}
            i = diagonal - j
            prefix = f"up{diagonal}_{j - 1}"
            keys |= {f"{prefix}.up.weight": [WIDTHS[i + 1], WIDTHS[i], 2, 2], f"{prefix}.up.bias": [WIDTHS[i]]}
            keys |= double_conv(f"{prefix}.conv", 2 * WIDTHS[i], WIDTHS[i])
    return keys | head("final")


CASES = {
    "unet": ("reference-unet", {}, expected_unet(bilinear=True)),
    "unet-transpose": ("reference-unet", {"bilinear": False}, expected_unet(bilinear=False)),
    "unetplusplus": ("reference-unetplusplus", {}, expected_unetplusplus()),
}


@pytest.mark.parametrize(("case", "entries"), [("unet", 110), ("unet-transpose", 118), ("unetplusplus", 202)])
def test_state_dict_names_shapes_and_order_are_the_reference_s(case, entries):
    name, kwargs, expected = CASES[case]
    state = build_full(name, **kwargs).state_dict()
    assert len(state) == len(expected) == entries
    assert list(state) == list(expected)  # the reference's order too
    assert {key: list(tensor.shape) for key, tensor in state.items()} == expected


@pytest.mark.parametrize(("name", "kwargs", "key", "shape"), [
    ("reference-unet", {}, "inc.double_conv.0.weight", [64, 3, 3, 3]),
    ("reference-unet", {}, "down1.maxpool_conv.1.double_conv.0.weight", [128, 64, 3, 3]),
    ("reference-unet", {}, "down4.maxpool_conv.1.double_conv.3.weight", [512, 512, 3, 3]),
    ("reference-unet", {}, "up1.conv.double_conv.0.weight", [256, 1024, 3, 3]),
    ("reference-unet", {}, "up1.conv.double_conv.4.running_var", [256]),
    ("reference-unet", {}, "up4.conv.double_conv.0.weight", [64, 128, 3, 3]),
    ("reference-unet", {}, "outc.weight", [5, 64, 1, 1]),
    ("reference-unet", {"bilinear": False}, "up1.up.weight", [1024, 512, 2, 2]),
    ("reference-unet", {"bilinear": False}, "up1.conv.double_conv.0.weight", [512, 1024, 3, 3]),
    ("reference-unetplusplus", {}, "conv4_0.double_conv.0.weight", [1024, 512, 3, 3]),
    ("reference-unetplusplus", {}, "up4_0.up.weight", [1024, 512, 2, 2]),
    ("reference-unetplusplus", {}, "up4_0.conv.double_conv.0.weight", [512, 1024, 3, 3]),
    ("reference-unetplusplus", {}, "up4_3.conv.double_conv.0.weight", [64, 128, 3, 3]),
    ("reference-unetplusplus", {}, "final.weight", [5, 64, 1, 1]),
])
def test_some_shapes_as_measured_on_the_reference(name, kwargs, key, shape):
    assert list(build_full(name, **kwargs).state_dict()[key].shape) == shape


@pytest.mark.parametrize(("name", "kwargs", "count"), [
    ("reference-unet", {}, 13_391_621),
    ("reference-unet", {"bilinear": False}, 31_037_893),
    ("reference-unetplusplus", {}, 34_912_133),
])
def test_parameter_counts_are_the_reference_s(name, kwargs, count):
    assert sum(p.numel() for p in build_full(name, **kwargs).parameters()) == count


def test_with_transposed_convolutions_the_layout_is_the_project_s_unet_s():
    ours = build_full("unet", base_channels=BASE, upsampling="transpose")
    assert sum(p.numel() for p in ours.parameters()) == 31_037_893


@pytest.mark.parametrize(("name", "kwargs", "gflop"), [
    ("reference-unet", {}, 417.14),
    ("reference-unet", {"bilinear": False}, 649.98),
    ("reference-unetplusplus", {}, 1280.53),
])
def test_training_flops_per_image_at_384(name, kwargs, gflop):
    model = build_full(name, **kwargs)
    with torch.device("meta"):
        images, target = torch.randn(1, 3, 384, 384), torch.randint(0, NUM_CLASSES, (1, 384, 384))
    flops, _ = count_training_step(model, registry.create_loss("partial_ce"), images, target)
    assert flops / 1e9 == pytest.approx(gflop, abs=0.01)


# -- behaviour ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "kwargs"), [("reference-unet", {}), ("reference-unet", {"bilinear": False}),
                                              ("reference-unetplusplus", {})])
def test_a_saved_state_dict_loads_strictly_and_gives_the_same_outputs(name, kwargs, tmp_path):
    trained = build_tiny(name, seed=0, **kwargs)
    randomise_batchnorm_statistics(trained)
    # A published best_model.pth is a training checkpoint; the weights are under "model_state_dict".
    path = tmp_path / "best_model.pth"
    torch.save({"epoch": 3, "model_state_dict": trained.state_dict(), "optimizer_state_dict": {}, "metrics": {}}, path)
    loaded = build_tiny(name, seed=1, **kwargs)
    loaded.load_state_dict(torch.load(path, weights_only=True)["model_state_dict"], strict=True)
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        assert not torch.equal(build_tiny(name, seed=1, **kwargs).eval()(x), trained.eval()(x))
        torch.testing.assert_close(loaded.eval()(x), trained(x), rtol=0, atol=0)


def test_unet_upsamples_with_align_corners_true():
    model = build_tiny("reference-unet")
    x = torch.randn(1, 8, 5, 7)
    for k in range(1, 5):
        up = getattr(model, f"up{k}").up
        assert not list(up.parameters())
        torch.testing.assert_close(up(x), F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True))
        assert not torch.allclose(up(x), F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))


@pytest.mark.parametrize("bilinear", [True, False])
def test_unet_decoder_reads_the_previous_step_and_the_mirrored_encoder_level(bilinear):
    model = build_tiny("reference-unet", bilinear=bilinear)
    outputs, inputs = record(model, ["inc", *(f"down{k}" for k in range(1, 5)), *(f"up{k}" for k in range(1, 5))])
    model(torch.randn(2, 3, 32, 48))
    for k in range(1, 5):
        deep = "down4" if k == 1 else f"up{k - 1}"
        skip = "inc" if k == 4 else f"down{4 - k}"
        assert inputs[f"up{k}"][0] is outputs[deep] and inputs[f"up{k}"][1] is outputs[skip]


def record(model: torch.nn.Module, names: list[str]) -> tuple[dict, dict]:
    """Forward hooks that keep each named child's output and positional inputs (as objects, to compare by identity)."""
    outputs, inputs = {}, {}
    for name in names:
        def hook(module, args, output, name=name):
            inputs[name], outputs[name] = args, output
        getattr(model, name).register_forward_hook(hook)
    return outputs, inputs


def test_unetplusplus_node_reads_only_the_node_to_its_left_and_the_one_below_left():
    model = build_tiny("reference-unetplusplus")
    node = {(i, 0): f"conv{i}_0" for i in range(5)}
    node |= {(d - j, j): f"up{d}_{j - 1}" for d in range(1, 5) for j in range(1, d + 1)}
    outputs, inputs = record(model, [*node.values(), "final"])
    model(torch.randn(2, 3, 32, 48))
    for (i, j), name in node.items():
        if j == 0:
            continue
        deep, skip = inputs[name]
        assert deep is outputs[node[i + 1, j - 1]] and skip is outputs[node[i, j - 1]], name
        # The double convolution reads the concatenation of exactly those two: twice the level's width.
        width = 4 * 2**i
        assert getattr(model, name).conv.double_conv[0].in_channels == 2 * width
        assert getattr(model, name).up.in_channels == 2 * width and getattr(model, name).up.out_channels == width
    assert inputs["final"][0] is outputs["up4_3"]


@pytest.mark.parametrize("name", ["reference-unet", "reference-unetplusplus"])
def test_size_divisor_is_16_and_other_sizes_are_refused_by_name(name):
    model = build_tiny(name)
    assert model.size_divisor == 16
    with pytest.raises(UserError, match=f"{name} with depth 5 needs input sides divisible by 16, got 100x96"):
        model(torch.randn(1, 3, 100, 96))


@pytest.mark.parametrize(("name", "kwargs", "message"), [
    ("reference-unet", {"base_channels": 0}, "base_channels must be a positive integer"),
    ("reference-unet", {"base_channels": 8.0}, "base_channels must be a positive integer"),
    ("reference-unet", {"bilinear": "yes"}, "bilinear must be true or false"),
    ("reference-unetplusplus", {"base_channels": -4}, "base_channels must be a positive integer"),
])
def test_bad_arguments_are_user_errors(name, kwargs, message):
    with pytest.raises(UserError, match=f"{name}: {message}"):
        registry.create_arch(name, NUM_CLASSES, **kwargs)


def test_bench_perf_takes_the_arguments():
    spec = parse_arch_spec("reference-unet:base_channels=32,bilinear=false")
    assert (spec.name, spec.build_kwargs) == ("reference-unet", {"base_channels": 32, "bilinear": False})
