"""``bench perf``: how fast architectures train and evaluate on this device, against what the device can do.

For each architecture, on random tiles of the chosen size: training steps through both data paths (batches made on
the device, and the DataLoader + albumentations path), timed step by step after a warm-up within an epoch, with the
device synchronised before every clock read, in several epochs; the epoch of median mean step gives images/s, and its
mean time spent waiting for a batch the data path's share of the step. FLOPs of one training step are counted with
``torch.utils.flop_counter``; divided by the step time they give the achieved TFLOP/s, and divided again by a
matrix-multiply peak measured in the same run in the training precision's dtype (bf16 on recent GPUs, float32 on the
CPU), the model FLOP utilisation (MFU). The same pass counts the bytes autograd saves for the backward, per image: the
part of training memory that grows with the batch, known on any device (on the CPU the peak is only the process's
resident memory). Evaluation (one batch, no data path) is timed step by step too, its median reported.
"""

from __future__ import annotations

import datetime as dt
import math
import statistics
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

import registry
from bench.batches import DeviceBatches, LoaderBatches, TrainBatches
from bench.data import AugmentedTiles, Normalizer
from bench.device import choose_precision, clock
from bench.device import peak_memory_mb as peak_memory_mb_of
from bench.identity import Component
from bench.models import build_model
from bench.overrides import command_line_value
from bench.provenance import device_name
from bench.recipe import HFLIP, ROT90, SHIFT_SCALE_ROTATE, VFLIP, default_num_workers
from bench.step import backward_and_step, build_optimizer, supervised_loss
from bench.tables import Listing
from registry.arguments import canonical_arguments
from registry.errors import UserError

NUM_CLASSES = 5
AUGMENT = [HFLIP, VFLIP, ROT90, SHIFT_SCALE_ROTATE]


@dataclass
class PerfConfig:
    archs: list[Component]
    size: int = 384
    batch_size: int = 32
    steps: int = 20
    warmup: int = 5
    compile: bool = False
    num_workers: int | None = None  # loader path; None: up to 8 on CUDA, 0 on the CPU
    repeats: int = 3  # measurements per data path, each one epoch: the median of their means is reported


def matmul_peak_tflops(device: torch.device, dtype: torch.dtype) -> tuple[float, str]:
    """The best of several timed square matrix multiplies in ``dtype`` (the training precision's)."""
    n = 8192 if device.type == "cuda" else 2048
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(10):
        started = clock(device)
        a @ b
        times.append(clock(device) - started)
    return 2 * n**3 / min(times) / 1e12, f"{str(dtype).removeprefix('torch.')} {n}x{n} matmul"


def convolution_flops(x_shape, w_shape, out_shape, transposed: bool) -> int:
    """Twice the multiply-adds of a convolution: each output pixel (input pixel when transposed) of each image meets
    every weight of its group, which ``w_shape`` (``[out, in / groups, *kernel]``) holds."""
    return 2 * x_shape[0] * math.prod((x_shape if transposed else out_shape)[2:]) * math.prod(w_shape)


def convolution_backward_flops(grad_out_shape, x_shape, w_shape, bias, stride, padding, dilation, transposed,
                               output_padding, groups, output_mask, out_shape=None, **kwargs) -> int:
    """``aten.convolution_backward``: the input's gradient and the weight's each cost what the forward convolution
    does. torch's own formula ignores ``groups`` in the weight's gradient: it counts a depthwise convolution's weight
    gradient once per channel (a 64-channel one 64 times over; torch 2.11 to 2.14), which would inflate the achieved
    TFLOP/s of EfficientNets, ConvNeXts and separable DeepLabv3+ heads."""
    return convolution_flops(x_shape, w_shape, grad_out_shape, transposed) * sum(map(bool, output_mask[:2]))


@contextmanager
def saved_for_backward(model: torch.nn.Module) -> Iterator[dict[int, int]]:
    """{storage address: bytes} of what autograd saves for the backward pass while the block runs: the activations,
    and under autocast the low-precision copies of the weights; not ``model``'s parameters themselves. Each storage
    counts once, however many views of it are saved. The saved tensors live together until the backward, so their
    sum is the part of training memory that grows with the batch."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        yield saved


def count_training_step(model: torch.nn.Module, loss_fn, images: torch.Tensor,
                        target: torch.Tensor) -> tuple[int, int]:
    """One training step's forward and backward, counted rather than timed: (FLOPs of its matrix multiplies and
    convolutions, bytes saved for its backward pass)."""
    mapping = {torch.ops.aten.convolution_backward: convolution_backward_flops}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter, saved_for_backward(model) as saved:
        supervised_loss(loss_fn, model(images), target).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops(), sum(saved.values())


def random_tiles(count: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)
    masks = np.where(rng.random((count, size, size)) < 0.1, rng.integers(0, NUM_CLASSES, (count, size, size)), -1)
    return images, masks.astype(np.int8)


def time_training(batches, train_step: Callable, config: PerfConfig, device: torch.device) -> dict[str, Any]:
    """``config.repeats`` measurements, each one epoch (``batches`` must hold ``warmup + steps`` batches): the mean
    step and data-wait times of ``config.steps`` steps after ``config.warmup`` untimed ones; reported, the measurement
    of median step time. Within an epoch means, not medians: a loader's workers start during the warm-up, and a median
    would hide the steps that wait while the others find a batch the workers prepared in advance. Across epochs the
    median, against a noisy machine."""
    measurements = []
    for epoch in range(config.repeats):
        steps, waits = [], []
        iterator = iter(batches.epoch(epoch))
        for index in range(config.warmup + config.steps):
            started = clock(device)
            images, target = next(iterator)
            ready = clock(device)
            train_step(images, target)
            done = clock(device)
            if index >= config.warmup:
                steps.append(done - started)
                waits.append(ready - started)
        measurements.append((statistics.mean(steps), statistics.mean(waits)))
    step, wait = sorted(measurements)[(len(measurements) - 1) // 2]
    return {"step_seconds": step, "images_per_second": config.batch_size / step, "data_seconds": wait,
            "data_share": wait / step, "repeats_step_seconds": [m[0] for m in measurements]}


def measure_arch(arch: Component, config: PerfConfig, device: torch.device, peak_tflops: float) -> dict[str, Any]:
    torch.manual_seed(0)
    model, forward, _ = build_model(arch, NUM_CLASSES, 3, device, compile=config.compile)  # as bench.train sets it up
    loss_fn = registry.create_loss("partial_ce")
    precision = choose_precision(device, amp=True)
    optimizer = build_optimizer(model, {"optimizer": "adam", "lr": 1e-4, "weight_decay": 0.0}, device)
    normalize = Normalizer((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), device)
    # One epoch covers the warm-up and the timed steps of one measurement (see time_training).
    images, masks = random_tiles((config.warmup + config.steps) * config.batch_size, config.size)

    def train_step(batch_images: torch.Tensor, target: torch.Tensor) -> None:
        with precision.autocast():
            loss = supervised_loss(loss_fn, forward(batch_images), target)
        backward_and_step(loss, optimizer, precision)

    sample_images, sample_target = next(iter(DeviceBatches(images, masks, [], 0, config.batch_size, normalize)
                                             .epoch(0)))
    with precision.autocast():
        flops, saved_bytes = count_training_step(model, loss_fn, sample_images, sample_target)
    compile_seconds = None
    if config.compile:
        started = clock(device)
        train_step(sample_images, sample_target)
        compile_seconds = clock(device) - started
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    device_path = time_training(DeviceBatches(images, masks, AUGMENT, 0, config.batch_size, normalize), train_step,
                                config, device)
    peak_memory_mb, peak_memory_kind = peak_memory_mb_of(device)
    workers = config.num_workers if config.num_workers is not None else default_num_workers(device)
    loader = LoaderBatches(TrainBatches(AugmentedTiles(images, masks, AUGMENT, 0), config.batch_size, workers,
                                        pin_memory=device.type == "cuda"), normalize)
    loader_path = time_training(loader, train_step, config, device)

    model.eval()
    eval_times = []
    with torch.inference_mode(), precision.autocast():
        for index in range(config.warmup + config.steps):
            started = clock(device)
            forward(sample_images).argmax(1)
            if index >= config.warmup:
                eval_times.append(clock(device) - started)
    achieved = flops / device_path["step_seconds"] / 1e12
    return {
        "arch": arch.label, "kwargs": arch.build_kwargs,
        "params_millions": sum(p.numel() for p in model.parameters()) / 1e6,
        "gflop_per_image": flops / config.batch_size / 1e9,
        "saved_mb_per_image": saved_bytes / config.batch_size / 2**20,
        "device_path": device_path, "loader_path": loader_path,
        "device_over_loader": loader_path["step_seconds"] / device_path["step_seconds"],
        "achieved_tflops": achieved, "mfu": achieved / peak_tflops,
        "eval_images_per_second": config.batch_size / statistics.median(eval_times),
        "peak_memory_mb": peak_memory_mb, "peak_memory_kind": peak_memory_kind, "compile_seconds": compile_seconds,
        "precision": precision.name,
        "loader_workers": workers,
    }


def run_perf(config: PerfConfig, device: torch.device) -> dict[str, Any]:
    peak, peak_kind = matmul_peak_tflops(device, choose_precision(device, amp=True).dtype)
    results = [measure_arch(arch, config, device, peak) for arch in config.archs]
    return {
        "device": device_name(device), "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__, "config": {**asdict(config), "archs": [a.as_config() for a in config.archs]},
        "augment": AUGMENT, "peak_tflops": peak, "peak_kind": peak_kind, "results": results,
    }


def parse_arch_spec(spec: str):
    """``unet:base_channels=64,upsampling=bilinear`` -> a Component; values are TOML (lists and tables too:
    ``tu-resnet18:decoder_channels=[128,64,32,16,8]``), or bare words, as ``--set`` reads them."""
    name, _, arguments = spec.partition(":")
    kwargs = {}
    for argument in filter(None, top_level_split(arguments)):
        key, equals, text = argument.partition("=")
        if not equals or not key.strip():
            raise UserError(f"--arch {spec}: expected NAME:KEY=VALUE,KEY=VALUE")
        try:
            kwargs[key.strip()] = command_line_value(text.strip())
        except ValueError as err:
            raise UserError(f"--arch {spec}: {err}") from None
    builder = registry.ARCHS.entry(name).builder  # an unknown name is answered with the close matches
    try:
        kwargs = canonical_arguments(registry.ARCHS.kind, name, builder, kwargs)
    except UserError as err:
        raise UserError(f"--arch {spec}: {err}") from None
    return Component(name, spec, kwargs)


def top_level_split(text: str, separator: str = ",") -> list[str]:
    """``text`` split at each ``separator`` outside brackets, braces and quotes."""
    parts, depth, quote, start = [], 0, "", 0
    for index, char in enumerate(text):
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == separator and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    return [*parts, text[start:]]


def perf_listing(report: dict) -> Listing:
    columns = ("architecture", "params M", "GFLOP/img", "saved MB/img", "train img/s", "step ms", "data share",
               "TFLOP/s", "MFU", "eval img/s", "loader img/s", "device/loader", "peak MB")
    listing = Listing(f"{report['device']}, {report['config']['size']}x{report['config']['size']}, batch "
                      f"{report['config']['batch_size']}, peak {report['peak_tflops']:.1f} TFLOP/s "
                      f"({report['peak_kind']}), {report['date'][:10]}", columns, right=frozenset(columns[1:]))
    for r in report["results"]:
        device_path, loader_path = r["device_path"], r["loader_path"]
        listing.rows.append((r["arch"], f"{r['params_millions']:.2f}", f"{r['gflop_per_image']:.1f}",
                             f"{r['saved_mb_per_image']:.0f}", f"{device_path['images_per_second']:.1f}",
                             f"{1000 * device_path['step_seconds']:.1f}",
                             f"{100 * device_path['data_share']:.1f} %", f"{r['achieved_tflops']:.2f}",
                             f"{100 * r['mfu']:.1f} %", f"{r['eval_images_per_second']:.1f}",
                             f"{loader_path['images_per_second']:.1f}", f"{r['device_over_loader']:.2f}x",
                             f"{r['peak_memory_mb']:.0f} ({r['peak_memory_kind']})"))
    return listing
