"""Architectures built as the harness runs them: training (:mod:`bench.train`), ``bench perf``, ``bench evaluate`` and
``bench show`` all get their model from :func:`build_model`, so that what is timed or scored is set up as what is
trained; and :func:`build_without_weights`, to read an architecture's attributes before anything trains."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

import registry
from bench import distributed
from bench.identity import Component
from registry.errors import UserError


class BuiltModel(NamedTuple):
    module: torch.nn.Module  # the plain module: what checkpoints hold the weights of, and weights are loaded into
    forward: Callable  # what training steps run: the module, or its DDP wrapper over several processes; compiled or not
    evaluated: Callable  # what evaluation runs: the plain module (no DDP collectives), compiled or not


def build_model(arch: Component, num_classes: int, in_chans: int, device: torch.device, compile: bool = False,
                data_parallel: bool = False, sync_batchnorm: bool = False) -> BuiltModel:
    """``arch`` built with fresh weights (drawn from torch's global generator: seed it first), on ``device`` in the
    channels-last layout, with cuDNN autotuning on CUDA. ``data_parallel`` (over several processes, a process group
    initialised) wraps it in DistributedDataParallel, its BatchNorms made SyncBatchNorm first when
    ``sync_batchnorm``; ``compile`` runs it through ``torch.compile``."""
    model = registry.create_arch(arch.name, num_classes=num_classes, in_chans=in_chans, **arch.build_kwargs).to(device)
    # Channels-last suits both cuDNN's tensor-core kernels and oneDNN's CPU convolutions (1.5x faster at 64 px).
    model = model.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    trained = model
    if data_parallel:
        if sync_batchnorm:
            model = distributed.sync_batchnorm(model, device)
        trained = distributed.data_parallel(model, device)
    # The compiled module (if any) only runs: its weights are the plain module's. Evaluation runs the plain module
    # (compiled or not): over several processes each rank evaluates batches of its own, without DDP's collectives.
    forward = torch.compile(trained) if compile else trained
    evaluated = forward if trained is model else (torch.compile(model) if compile else model)
    return BuiltModel(model, forward, evaluated)


def build_without_weights(arch: Component, num_classes: int, in_chans: int) -> torch.nn.Module:
    """The architecture on the meta device (no memory for its weights), to read its attributes before training; a
    builder that cannot work there (one that loads weights, say) is built on the CPU instead."""
    try:
        with torch.device("meta"):
            return registry.create_arch(arch.name, num_classes=num_classes, in_chans=in_chans, **arch.build_kwargs)
    except UserError:
        raise
    except Exception:  # noqa: BLE001  (whatever a builder raises on the meta device, the CPU is the fallback)
        return registry.create_arch(arch.name, num_classes=num_classes, in_chans=in_chans, **arch.build_kwargs)
