"""The gradient noise scale of McCandlish et al. (2018, "An Empirical Model of Large-Batch Training"), eq. 2.9:

    B_simple = tr(Sigma) / |G|^2,

G the mean gradient of the training loss over the images and Sigma the covariance of the per-sample gradients,
tr(Sigma) = sum_i |g_i - G|^2 / (n - 1). Per-sample gradients come from `torch.func.vmap(grad(...))` in chunks, with
BatchNorm on its running statistics (a per-sample gradient is undefined under batch statistics) and dropout off.
B_simple is the batch size beyond which a larger batch stops buying a proportionally better step.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.func import grad, vmap
from torch.utils._pytree import tree_map

from landscape.engine.batches import BatchSet, Objective
from landscape.engine.functional import FunctionalModel, Params

ENTRIES_PER_CHUNK = 1 << 24  # per-sample gradient entries held at once (64 MiB in float32)


def gradient_noise_scale(module: nn.Module, params: Params, buffers: Params, batches: BatchSet,
                         objective: Objective) -> dict[str, float]:
    """B_simple, tr(Sigma) and |G|^2 of the loss over all images of `batches` (`module` in eval mode)."""
    size = sum(p.numel() for p in params.values())
    chunk = max(1, ENTRIES_PER_CHUNK // size)
    detached = {n: p.detach() for n, p in params.items()}

    def sample_loss(point: Params, sample) -> torch.Tensor:
        return objective.loss_only(FunctionalModel(module, point, buffers), tree_map(lambda t: t[None], sample))

    per_sample = vmap(grad(sample_loss), in_dims=(None, 0), randomness="same", chunk_size=chunk)
    total = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in detached.items()}
    squares = torch.zeros((), dtype=torch.float64, device=next(iter(detached.values())).device)
    count = 0
    for batch in batches:
        grads = per_sample(detached, batch)
        for name, g in grads.items():
            g = g.double()
            total[name] += g.sum(dim=0)
            squares += g.pow(2).sum()
        count += next(iter(grads.values())).shape[0]
    mean_sq = float(sum((t / count).pow(2).sum() for t in total.values()))
    trace = (float(squares) - count * mean_sq) / (count - 1) if count > 1 else float("nan")
    return {"grad_noise_scale": trace / mean_sq if mean_sq > 0 else float("inf"), "grad_noise_trace": trace,
            "grad_norm_sq": mean_sq}
