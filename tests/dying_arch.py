"""A plugin for the executor tests: ``dying_unet``, a small U-Net that fails at a chosen training step, once (while
``marker`` does not exist) or every time. By default its process kills itself (SIGKILL, no clean-up, as when a node
goes down); with ``raise_on_rank`` the forward raises instead, only in the torchrun process of that rank."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from registry import register_arch
from registry.archs.unet import unet


@register_arch("dying_unet", test_kwargs={"base_channels": 4, "depth": 3})
def dying_unet(num_classes: int, in_chans: int = 3, marker: str = "", at_step: int = 1, every_time: bool = False,
               raise_on_rank: int = -1, **unet_kwargs):
    model = unet(num_classes, in_chans, **unet_kwargs)
    steps = [0]

    def maybe_die(module, inputs):
        if not module.training or not marker:
            return
        steps[0] += 1
        if steps[0] == at_step and (every_time or not Path(marker).exists()):
            if raise_on_rank < 0:
                Path(marker).touch()
                os.kill(os.getpid(), signal.SIGKILL)
            elif int(os.environ.get("RANK", "0")) == raise_on_rank:
                Path(marker).touch()
                raise RuntimeError(f"rank {raise_on_rank} alone failed at step {at_step}")

    model.register_forward_pre_hook(maybe_die)
    return model
