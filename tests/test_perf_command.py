"""`bench perf` on the CPU with a tiny configuration: every figure present, consistent, and honest about its device."""

from __future__ import annotations

import json

import pytest
import torch

import bench.perf
import registry
from bench.cli import main
from bench.grid import load_grid
from bench.perf import PerfConfig, parse_arch_spec, time_training

CPU = torch.device("cpu")
TINY = ["--arch", "unet:base_channels=4,depth=3", "--arch", "unetplusplus:base_channels=4,depth=3", "--size", "32",
        "--batch-size", "4", "--steps", "2", "--warmup", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    path = tmp_path_factory.mktemp("perf") / "perf.json"
    assert main(["perf", *TINY, "--json", str(path)]) == 0
    return json.loads(path.read_text())


def test_every_architecture_is_measured_through_both_data_paths(report):
    assert [r["arch"] for r in report["results"]] == ["unet:base_channels=4,depth=3",
                                                       "unetplusplus:base_channels=4,depth=3"]
    assert report["device"].startswith("CPU") and report["peak_kind"].startswith("float32")
    for result in report["results"]:
        for path in ("device_path", "loader_path"):
            figures = result[path]
            assert figures["step_seconds"] > 0 and 0 <= figures["data_share"] <= 1
            assert figures["images_per_second"] == pytest.approx(4 / figures["step_seconds"])
        assert result["device_over_loader"] == pytest.approx(
            result["loader_path"]["step_seconds"] / result["device_path"]["step_seconds"])


def test_flops_mfu_and_throughput_are_consistent(report):
    for result in report["results"]:
        step_flops = result["gflop_per_image"] * 1e9 * 4
        assert result["achieved_tflops"] == pytest.approx(step_flops / result["device_path"]["step_seconds"] / 1e12)
        assert result["mfu"] == pytest.approx(result["achieved_tflops"] / report["peak_tflops"])
        assert result["eval_images_per_second"] > 0 and result["peak_memory_mb"] > 0
    unet, unetplusplus = report["results"]
    assert unetplusplus["gflop_per_image"] > unet["gflop_per_image"]  # nested skip paths cost more at equal width
    assert unetplusplus["saved_mb_per_image"] > unet["saved_mb_per_image"] > 0  # and keep more activations


@pytest.mark.parametrize("groups", [1, 4, 16])
def test_training_flops_are_the_hand_count_for_grouped_and_transposed_convolutions(groups):
    """A grouped 3x3 convolution (the input needs no gradient: the weight's only), a grouped transposed 2x2 of stride
    2, a 1x1 to the classes: forward, and backward as two convolutions of the forward's size per layer but the first.
    Ungrouped, it is also torch's own count; torch's formula counts a grouped weight gradient ``groups`` times over."""
    from torch.utils.flop_counter import FlopCounterMode

    n, c, k, side = 2, 16, 5, 8
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(c, c, 3, padding=1, groups=groups, bias=False),
                                torch.nn.ConvTranspose2d(c, c, 2, stride=2, groups=groups),
                                torch.nn.Conv2d(c, k, 1))
    images, target = torch.randn(n, c, side, side), torch.randint(0, k, (n, 2 * side, 2 * side))
    grouped = 2 * n * side**2 * c * (c // groups) * 9
    transposed = 2 * n * side**2 * c * (c // groups) * 4
    pointwise = 2 * n * (2 * side) ** 2 * c * k
    loss = registry.create_loss("partial_ce")
    counted, _ = bench.perf.count_training_step(model, loss, images, target)
    assert counted == 2 * grouped + 3 * transposed + 3 * pointwise
    if groups == 1:
        with FlopCounterMode(display=False) as torch_s:
            loss(model(images), target).backward()
        assert torch_s.get_total_flops() == counted


@pytest.mark.parametrize("autocast", [False, True])
def test_saved_for_backward_is_the_hand_count(autocast):
    """A 3x3 convolution saves its input (and its weight: a parameter, not counted, unless autocast saves a bf16 copy
    of it), ReLU its output; a view saved twice counts once, and the parameters' own storage never."""
    n, side = 2, 8
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU())
    images = torch.randn(n, 3, side, side)
    with bench.perf.saved_for_backward(model) as saved, torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        out = model(images)
        (out[:1] * out[:1]).sum()  # mul saves the same view of ReLU's output twice
    size = 2 if autocast else 4
    expected = size * n * 3 * side**2 + size * n * 8 * side**2 + (size * 8 * 3 * 9 if autocast else 0)
    assert out.dtype == (torch.bfloat16 if autocast else torch.float32)
    assert sum(saved.values()) == expected


def test_on_the_cpu_the_default_workload_is_the_default_grid_s(tmp_path):
    """Without --arch, --size and --batch-size the CPU measures the default grid's models (the reference's would take
    hours there); what is given is kept."""
    path = tmp_path / "perf.json"
    quick = ["--steps", "1", "--warmup", "1", "--repeats", "1", "--device", "cpu", "--json", str(path)]
    assert main(["perf", *quick]) == 0
    report = json.loads(path.read_text())
    grid = load_grid("default")
    batch_size = grid.cells[0].recipe["batch_size"]
    expected = []
    for cell in grid.cells:
        if (cell.arch.name, cell.arch.kwargs) not in expected:
            expected.append((cell.arch.name, cell.arch.kwargs))
    assert [(r["arch"].partition(":")[0], r["kwargs"]) for r in report["results"]] == expected
    assert (report["config"]["size"], report["config"]["batch_size"]) == (grid.cells[0].dataset.kwargs["tile_size"],
                                                                           batch_size)
    assert main(["perf", *quick, "--size", "32", "--arch", "unet:base_channels=4,depth=3"]) == 0
    report = json.loads(path.read_text())
    assert [r["arch"] for r in report["results"]] == ["unet:base_channels=4,depth=3"]
    assert (report["config"]["size"], report["config"]["batch_size"]) == (32, batch_size)


@pytest.mark.parametrize("args, message", [
    (["--arch", "unte"], "did you mean 'unet'"),
    (["--arch", "unet:base_channels=4", "--size", "40"], "divisible by 16"),
    (["--arch", "unet:base_channels"], "expected NAME:KEY=VALUE"),
    # read as --set reads values: neither TOML nor a bare word is refused, not taken as a string
    (["--arch", "unet:upsampling=two words"], "--arch unet:upsampling=two words: 'two words' is not a TOML value"),
    (["--arch", "unet:base_channels=[4"], "'[4' is not a TOML value"),
])
def test_bad_perf_arguments_are_one_line_exit_2(args, message, capsys, tmp_path):
    assert main(["perf", *args, "--device", "cpu", "--json", str(tmp_path / "p.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_arch_arguments_may_be_lists_tables_and_quoted_commas():
    arch = parse_arch_spec('tu-resnet18:decoder_channels=[128, 64, 32, 16, 8],label="a,b",extra={k = [1, 2]},x=bare')
    assert arch.name == "tu-resnet18"
    assert arch.kwargs == {"decoder_channels": [128, 64, 32, 16, 8], "label": "a,b", "extra": {"k": [1, 2]},
                           "x": "bare"}


def test_training_time_is_the_mean_over_an_epoch_and_the_median_over_epochs(monkeypatch):
    """A loader whose workers filled their queue in advance: most timed steps find a batch ready, every fourth waits
    (30 ms in epoch 0, 10 ms in epoch 1, 90 ms in epoch 2). Within an epoch the mean says so (a median would say 0);
    across epochs the median epoch is reported. The warm-up steps, and their 1 s start-up wait, are not timed."""
    now = [0.0]
    monkeypatch.setattr(bench.perf, "clock", lambda device: now[0])
    slow = {0: 0.030, 1: 0.010, 2: 0.090}

    class Batches:
        def epoch(self, epoch):
            for index in range(12):  # warm-up 4 + timed 8: the measurement never asks for more of an epoch
                now[0] += 1.0 if index == 0 else (slow[epoch] if index % 4 == 3 else 0.0)
                yield None, None

    def train_step(images, target):
        now[0] += 0.010

    figures = time_training(Batches(), train_step, PerfConfig(archs=[], batch_size=8, steps=8, warmup=4), CPU)
    assert figures["repeats_step_seconds"] == pytest.approx([0.010 + 2 * wait / 8 for wait in slow.values()])
    assert figures["data_seconds"] == pytest.approx(2 * 0.030 / 8)  # epoch 0, the median one
    assert figures["step_seconds"] == pytest.approx(0.010 + 2 * 0.030 / 8)
    assert figures["images_per_second"] == pytest.approx(8 / figures["step_seconds"])
    assert figures["data_share"] == pytest.approx(figures["data_seconds"] / figures["step_seconds"])
