"""What training, evaluation and ``bench perf`` ask of the device: the precision to compute in (chosen once), clock
reads after a device synchronisation (so measured times are real), and the peak memory used.

Precision: bf16 autocast on CUDA cards that support it (no loss scaler needed), fp16 with a scaler on older cards,
float32 on the CPU.
"""

from __future__ import annotations

import contextlib
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from registry.errors import UserError


@dataclass
class Precision:
    autocast: Callable[[], contextlib.AbstractContextManager]
    scaler: torch.amp.GradScaler | None
    name: str
    dtype: torch.dtype = torch.float32  # what the matrix multiplies of the autocast regions compute in


def choose_precision(device: torch.device, amp: bool | str) -> Precision:
    """``amp = true``: bf16 autocast on GPUs with bf16 tensor cores (compute capability 8.0, Ampere, and later), fp16
    with loss scaling before them; ``"fp16"`` or ``"bf16"`` asks for one (fp16 is what the reference experiment
    trained in); false: float32. The CPU always trains in float32. Not torch.cuda.is_bf16_supported(): it also says
    yes where bf16 is only emulated (V100, T4), on the current device rather than this one."""
    if device.type != "cuda" or amp is False:
        return Precision(contextlib.nullcontext, None, "float32")
    has_bf16 = torch.cuda.get_device_capability(device)[0] >= 8
    if amp == "bf16" and not has_bf16:
        raise UserError(f"[recipe] amp = \"bf16\": {torch.cuda.get_device_name(device)} has no bf16 tensor cores "
                        "(compute capability 8.0 or later); use amp = \"fp16\" or true")
    if amp == "bf16" or (amp is True and has_bf16):
        return Precision(lambda: torch.autocast("cuda", dtype=torch.bfloat16), None, "bf16 autocast", torch.bfloat16)
    return Precision(lambda: torch.autocast("cuda", dtype=torch.float16), torch.amp.GradScaler("cuda"),
                     "fp16 autocast + loss scaling", torch.float16)


def clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "CUDA allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process RSS"
