"""The parts of a training step that :func:`bench.train.train_cell` runs and ``bench perf`` times as it runs them: the
optimiser a recipe asks for, the supervised loss of a model's outputs, and the backward pass and optimiser step
through the precision's loss scaler."""

from __future__ import annotations

from typing import Any

import torch

from bench.device import Precision


def build_optimizer(model: torch.nn.Module, recipe: dict[str, Any], device: torch.device) -> torch.optim.Optimizer:
    params, lr, decay = model.parameters(), recipe["lr"], recipe["weight_decay"]
    fused = {"fused": True} if device.type == "cuda" else {}
    if recipe["optimizer"] == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=decay, **fused)
    if recipe["optimizer"] == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=decay, **fused)
    return torch.optim.SGD(params, lr=lr, weight_decay=decay, momentum=recipe["momentum"])


def supervised_loss(loss_fn, outputs, target: torch.Tensor) -> torch.Tensor:
    """Deep-supervision models return several logits in training: each is supervised, and the losses averaged."""
    if isinstance(outputs, (list, tuple)):
        return sum(loss_fn(out, target) for out in outputs) / len(outputs)
    return loss_fn(outputs, target)


def backward_and_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, precision: Precision) -> None:
    """One optimiser step from ``loss``, through the loss scaler when the precision has one."""
    optimizer.zero_grad(set_to_none=True)
    if precision.scaler is not None:
        precision.scaler.scale(loss).backward()
        precision.scaler.step(optimizer)
        precision.scaler.update()
    else:
        loss.backward()
        optimizer.step()
