"""The device settings of a training step: all off on the CPU, AMP and friends on CUDA."""

import pytest
import torch

from hierpipe.train.accelerator import Accelerator


def test_cpu_step_is_plain_float32():
    accelerator = Accelerator.for_device(torch.device("cpu"))
    assert accelerator.amp_dtype is None and not accelerator.pin_memory
    assert not accelerator.scaler.is_enabled()
    images = torch.rand(2, 3, 8, 8)
    moved = accelerator.images(images)
    assert moved.is_contiguous() and torch.equal(moved, images)
    with accelerator.autocast():
        out = torch.nn.Linear(4, 2)(torch.rand(3, 4))
    assert out.dtype == torch.float32
    # a disabled scaler passes the loss and the step through untouched
    value = torch.tensor(2.5, requires_grad=True)
    assert accelerator.scaler.scale(value) is value


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_step_uses_mixed_precision_and_channels_last():
    accelerator = Accelerator.for_device(torch.device("cuda"))
    assert accelerator.amp_dtype in (torch.bfloat16, torch.float16)
    assert accelerator.scaler.is_enabled() == (accelerator.amp_dtype == torch.float16)
    images = accelerator.images(torch.rand(2, 3, 8, 8).pin_memory())
    assert images.is_contiguous(memory_format=torch.channels_last)
    with accelerator.autocast():
        out = torch.nn.Linear(4, 2).cuda()(torch.rand(3, 4, device="cuda"))
    assert out.dtype == accelerator.amp_dtype
