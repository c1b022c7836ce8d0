"""One cell over several processes (``torchrun --nproc-per-node N``, DistributedDataParallel): who this process is,
and the few collectives the training loop needs.

Without a process group (the usual case) every function here is the single-process identity: rank 0 of 1, sums and
barriers that do nothing. ``bench run --ddp`` calls :func:`init_process_group` once per process; then
:func:`bench.train.train_cell` splits each batch over the ranks, and only rank 0 (:func:`is_main`) writes.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as differentiable

from registry.errors import UserError

TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def world() -> tuple[int, int]:
    """(rank, world size): (0, 1) when no process group is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """Whether this process writes: the results store, checkpoints, progress."""
    return world()[0] == 0


def rank_device(device: torch.device) -> torch.device:
    """This rank's device: ``cuda:LOCAL_RANK`` on CUDA under torchrun, else ``device`` as it is."""
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def init_process_group(device: torch.device) -> torch.device:
    """Join the process group that torchrun describes in the environment (nccl on CUDA, gloo on the CPU); returns
    this rank's device. Does nothing more when the group is already initialised."""
    missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        raise UserError("--ddp needs a process group: launch with torchrun --nproc-per-node N -m bench run ... "
                        f"({', '.join(missing)} not set)")
    device = rank_device(device)
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    return device


def close_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over the ranks, in place (returned for convenience)."""
    if world()[1] > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def supervised_loss_weight(target: torch.Tensor) -> torch.Tensor | float:
    """The weight of this rank's supervised loss: the number of processes times this rank's share of the batch's
    labelled pixels (1 without a process group). DDP averages the ranks' gradients; weighted so, losses that are a mean
    over the labelled pixels (partial_ce, partial_focal) give the gradient of the mean over the whole batch's, as one
    process computes it, even when the ranks' shares hold different numbers of labels (points, clicks, scribbles)."""
    world_size = world()[1]
    if world_size == 1:
        return 1.0
    count = (target >= 0).sum().to(torch.float32)
    total = all_reduce_sum(count.clone())
    return count * world_size / total.clamp_min(1.0)


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()


def data_parallel(model: torch.nn.Module, device: torch.device) -> torch.nn.parallel.DistributedDataParallel:
    """``model`` wrapped for training over the process group: DDP averages the ranks' gradients in backward.

    Buffers are not broadcast: DDP's default copies rank 0's BatchNorm statistics into every other rank's before each
    forward, in place, which breaks the backward of an earlier forward of the same step (a regulariser that runs the
    model again: "modified by an inplace operation", seen with torch 2.11). Rank 0's statistics, the ones that are
    checkpointed and broadcast before every evaluation (:func:`broadcast_buffers`), are the same either way: no rank
    writes into rank 0's."""
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) to every rank: without synchronised BatchNorm each rank's
    moved with its own share of the last batch, and all ranks must evaluate the model that rank 0 checkpoints."""
    if world()[1] > 1:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def sync_batchnorm(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """BatchNorm layers whose training statistics are those of the global batch: torch's SyncBatchNorm on CUDA; on
    the CPU, where torch's refuses to run, :class:`CPUSyncBatchNorm`. Parameters and buffers are kept (the same
    tensors), and so are the state-dict keys: checkpoints load into the plain model."""
    if device.type != "cpu":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if isinstance(model, torch.nn.modules.batchnorm._BatchNorm) and not isinstance(model, CPUSyncBatchNorm):
        converted = CPUSyncBatchNorm(model.num_features, model.eps, model.momentum, model.affine,
                                     model.track_running_stats)
        converted.weight, converted.bias = model.weight, model.bias
        converted.running_mean, converted.running_var = model.running_mean, model.running_var
        converted.num_batches_tracked = model.num_batches_tracked
        converted.train(model.training)
        return converted
    for name, child in model.named_children():
        setattr(model, name, sync_batchnorm(child, device))
    return model


class CPUSyncBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
    """Synchronised BatchNorm for CPU processes (gloo): in training, the mean and the (biased) variance are reduced
    over all ranks with autograd-aware all_reduces (two passes, as one process computes them); in evaluation, the
    running statistics as usual."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training or world()[1] == 1:
            return super().forward(input)
        dims = [0, *range(2, input.dim())]
        shape = [1, -1] + [1] * (input.dim() - 2)
        count = torch.full((1,), input.numel() / input.shape[1], dtype=input.dtype)
        totals = differentiable.all_reduce(torch.cat([count, input.sum(dims)]))
        count, mean = totals[0], totals[1:] / totals[0]
        centred = input - mean.view(shape)
        var = differentiable.all_reduce(centred.pow(2).sum(dims)) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.detach(), factor)
                self.running_var.lerp_(var.detach() * count / max(float(count) - 1, 1.0), factor)
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out
