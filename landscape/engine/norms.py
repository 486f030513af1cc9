"""Norm-based complexity measures of one model (the baselines of Jiang et al. 2019, sec. 4 and appendix C).

- `spectral_norms`: the largest singular value of each weight matrix; a convolution kernel [out, in, kh, kw] is
  read as the matrix [out, in * kh * kw] (the reshaping Jiang et al. use, not the operator norm of the convolution);
  `log_spectral_product` is the sum of their logarithms, `spectral_sum` their sum. Vectors (biases, BatchNorm
  scales) are not layers and are left out.
- `path_norm`: the sum over all input-to-output paths of the product of the squared weights along the path
  (Neyshabur et al. 2015, p = 2, squared), computed as Jiang et al. do: every parameter squared, a forward pass of an
  all-ones input in eval mode, the outputs summed. Exact for ReLU networks of linear and convolution layers (all
  activations are then non-negative); with BatchNorm its running statistics enter as they are.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from landscape.engine.functional import FunctionalModel, Params
from landscape.errors import UsageError


def spectral_norms(params: Params) -> dict[str, float]:
    """Each weight matrix's (or reshaped kernel's) largest singular value, by name (float64 SVD)."""
    return {name: float(torch.linalg.matrix_norm(p.detach().double().flatten(1), ord=2))
            for name, p in params.items() if p.dim() >= 2}


def spectral_measures(params: Params) -> dict[str, float]:
    norms = list(spectral_norms(params).values())
    if not norms:
        return {}
    return {"log_spectral_product": float(sum(math.log(v) for v in norms)), "spectral_sum": float(sum(norms))}


@torch.no_grad()
def path_norm(module: nn.Module, params: Params, buffers: Params, example) -> float:
    """Sum over paths of the product of squared weights: f_{w^2}(1) summed over outputs, `module` in eval mode.

    `example`: one batch's inputs (a tensor), whose shape past the first axis the all-ones input takes."""
    if not isinstance(example, torch.Tensor):
        raise UsageError("the path norm needs tensor inputs (an all-ones image goes through the model); leave "
                         "path_norm out for models that take other inputs")
    squared = {n: p.detach().double() ** 2 for n, p in params.items()}
    kept = {n: b.double() if b.is_floating_point() else b for n, b in buffers.items()}
    ones = torch.ones((1, *example.shape[1:]), dtype=torch.float64, device=example.device)
    training = module.training
    module.eval()
    try:
        out = FunctionalModel(module, squared, kept)(ones)
    finally:
        module.train(training)
    return float(out.sum())
