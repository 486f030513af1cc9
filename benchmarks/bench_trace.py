"""Trace estimators against the exact trace: relative RMSE over 20 seeds of Hutchinson and Hutch++ at 10, 30 and 99
Hessian-vector products, on the explicit Hessian of a small MLP (6-10-4, tanh, 114 parameters, cross-entropy on 30
random samples), at its initialisation and after 300 SGD steps.

    python benchmarks/bench_trace.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from landscape.engine.curvature import hutchinson_trace, hutchpp_trace  # noqa: E402


class Matrix:
    """An explicit symmetric matrix as the operator the estimators take."""

    def __init__(self, matrix: np.ndarray):
        self.matrix = torch.as_tensor(matrix, dtype=torch.float64)
        self.size, self.device = matrix.shape[0], torch.device("cpu")

    def __call__(self, vector: torch.Tensor) -> torch.Tensor:
        return self.matrix @ vector


def explicit_hessian(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for p in net.parameters()]
    flat = torch.cat([p.detach().double().reshape(-1) for p in net.parameters()])
    buffers = {n: b.double() for n, b in net.named_buffers()}

    def loss(vector):
        params, offset = {}, 0
        for name, shape in zip(names, shapes):
            params[name] = vector[offset:offset + shape.numel()].view(shape)
            offset += shape.numel()
        return F.cross_entropy(functional_call(net, {**params, **buffers}, (x.double(),)), y)

    return torch.autograd.functional.hessian(loss, flat).numpy()


def main() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 4))
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(30, 6, generator=generator), torch.randint(0, 4, (30,), generator=generator)
    print("| weights | products | Hutchinson relative RMSE | Hutch++ relative RMSE | Hutchinson / Hutch++ |")
    print("| --- | --- | --- | --- | --- |")
    for label in ("initialisation", "after 300 SGD steps"):
        if label != "initialisation":
            optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
            for _ in range(300):
                optimizer.zero_grad()
                F.cross_entropy(net(x), y).backward()
                optimizer.step()
        hessian = explicit_hessian(net, x, y)
        exact, operator = np.trace(hessian), Matrix(hessian)
        for products in (10, 30, 99):
            rmse = [np.sqrt(np.mean([(estimator(operator, products, seed=seed)[0] - exact) ** 2
                                     for seed in range(20)])) / abs(exact)
                    for estimator in (hutchinson_trace, hutchpp_trace)]
            print(f"| {label} | {products} | {rmse[0]:.4f} | {rmse[1]:.4f} | {rmse[0] / rmse[1]:.2f} |")


if __name__ == "__main__":
    main()
