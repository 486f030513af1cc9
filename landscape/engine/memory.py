"""What a run needs in memory and what the device has: checked before anything large is allocated.

The model is built on PyTorch's `meta` device (shapes, no storage) and a meta batch is sent through
it, so an impossible `--width`, `--image-size` or `--batch-size` is refused with the numbers, as
one line, instead of allocating until the allocator gives up; a model that cannot take the image
size at all (too many poolings) is refused the same way.
"""
from __future__ import annotations

import torch
from torch import nn

from landscape.errors import UsageError
from landscape.machine import available_memory

GIB = 2 ** 30
BYTES_PER_PARAMETER = 16  # weight, gradient and two optimizer moments in float32 (Adam's; SGD needs less)


def available_bytes(device: torch.device) -> int:
    """Free memory on a CUDA device; on the CPU the kernel's estimate of what can be had without swapping
    (MemAvailable: free memory plus the page cache and buffers it can reclaim), else the free pages."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return available_memory()


def largest_output_bytes(run_forward) -> int:
    """The bytes of the largest tensor any module outputs while `run_forward()` runs (once, under a global hook): with
    its input, about the peak activation memory of an evaluation without gradients."""
    largest = [0]

    def count(module: nn.Module, inputs, output) -> None:
        if isinstance(output, torch.Tensor):
            largest[0] = max(largest[0], output.numel() * output.element_size())

    hook = torch.nn.modules.module.register_module_forward_hook(count)
    try:
        run_forward()
    finally:
        hook.remove()
    return largest[0]


def check_dataset_fits(images: int, size: int, device: torch.device, what: str) -> None:
    """Refuse a dataset whose uint8 images at `size` would not fit in memory."""
    need = images * 3 * size * size
    have = available_bytes(torch.device("cpu"))
    if need > 0.8 * have:
        raise UsageError(f"{what}: {images} images at {size}x{size} need {need / GIB:,.1f} GiB, but this machine has "
                         f"{have / GIB:,.1f} GiB available: lower --image-size or use --train-subset")


def model_needs(build, runs: int, batch_size: int, image_size: int, in_channels: int = 3) -> tuple[int, int, int]:
    """(parameters, bytes for the runs' weights and optimizer state, bytes of one batch's activations), from a
    model built by `build()` on the meta device; UsageError if the model cannot take the image size."""
    try:
        with torch.device("meta"):
            model = build()
    except (RuntimeError, OverflowError, ValueError) as exc:  # e.g. "Storage size calculation overflowed"
        raise UsageError(f"the model is too large to build ({' '.join(str(exc).split())[:100]}): lower --width or "
                         f"--image-size") from None
    parameters = sum(p.numel() for p in model.parameters())
    activations = [0]

    def count(module: nn.Module, inputs, output) -> None:
        if isinstance(output, torch.Tensor) and not list(module.children()):
            activations[0] += output.numel() * 4

    hooks = [m.register_forward_hook(count) for m in model.modules()]
    try:
        model.train()
        model(torch.empty(batch_size, in_channels, image_size, image_size, device="meta"))
    except (RuntimeError, ValueError) as exc:
        raise UsageError(f"the model cannot take {image_size}x{image_size} images "
                         f"({' '.join(str(exc).split())[:150]}); use a larger --image-size") from None
    finally:
        for hook in hooks:
            hook.remove()
    return parameters, parameters * BYTES_PER_PARAMETER * runs, 2 * activations[0]  # saved for backward


def check_model_fits(build, *, name: str, runs: int, batch_size: int, image_size: int, device: torch.device,
                     stacked: bool) -> None:
    """Refuse a run whose weights, optimizer state and activations would not fit on `device`.

    `stacked` (the fused engine): all runs' activations are alive at once; otherwise one run's at a time.
    """
    parameters, state, per_batch = model_needs(build, runs, batch_size, image_size)
    need = state + per_batch * (runs if stacked else 1)
    have = available_bytes(device)
    if need > 0.9 * have:
        raise UsageError(f"{name} needs about {need / GIB:,.1f} GiB ({parameters:,} parameters x {runs} runs with "
                         f"optimizer state, and the activations of a batch of {batch_size} at {image_size}x{image_size})"
                         f", but {device.type} has {have / GIB:,.1f} GiB free: lower --width, --image-size or "
                         f"--batch-size")
