"""How a training step uses the device: mixed precision, memory layout, host-to-device copies.

On CUDA: autocast in bfloat16 where the GPU supports it, else float16 with a GradScaler
(float16's range needs loss scaling, bfloat16's does not); channels-last tensors for
convolutional networks; pinned host memory and asynchronous copies. On the CPU every one of
these is off, and the step is the plain float32 one, bit for bit.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Accelerator:
    device: torch.device
    amp_dtype: torch.dtype | None
    scaler: torch.amp.GradScaler

    @classmethod
    def for_device(cls, device: torch.device) -> Accelerator:
        if device.type != "cuda":
            return cls(device, None, torch.amp.GradScaler("cpu", enabled=False))
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
        return cls(device, dtype, scaler)

    @property
    def pin_memory(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def images(self, images: Tensor) -> Tensor:
        """A batch on the device; channels-last on CUDA, where convolutions run faster so."""
        if self.device.type != "cuda":
            return images.to(self.device)
        return images.to(self.device, non_blocking=True, memory_format=torch.channels_last)

    def prepare(self, net: torch.nn.Module) -> torch.nn.Module:
        net.to(self.device)
        if self.device.type == "cuda":
            net.to(memory_format=torch.channels_last)
        return net
