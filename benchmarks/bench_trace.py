"""Trace estimators against the exact trace of an explicit Hessian: relative RMSE over 50 seeds.

The model: an MLP 48-40-10 (tanh, 2,370 parameters) on 512 CIFAR-10 images average-pooled to 4x4x3 (random
images when --data-root is not given), cross-entropy; at its initialisation and after 300 Adam steps.
1. Each method alone at 10, 30 and 99 products: Hutchinson, Hutch++, XTrace.
2. Shared products: what `hessian`/`measure` do when the top eigenvalue and the trace are both asked. Top-1 by
   Lanczos (tol 1e-3) then the trace by Hutch++ or XTrace with 30 products, against the Krylov-deflated
   trace (the Lanczos basis's projected trace, free, plus Hutchinson on the rest) at 5, 10, 20 and 30 products:
   products in all (counted) and relative RMSE.

    python benchmarks/bench_trace.py --data-root ../shared/data
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from landscape.engine.curvature import top_eigenvalues  # noqa: E402
from landscape.engine.trace import deflated_trace, hutchinson_trace, hutchpp_trace, xtrace_trace  # noqa: E402

SEEDS = 50
ESTIMATORS = {"Hutchinson": hutchinson_trace, "Hutch++": hutchpp_trace, "XTrace": xtrace_trace}


class Matrix:
    """An explicit symmetric matrix as the operator the estimators take; counts its products."""

    def __init__(self, matrix: np.ndarray):
        self.matrix = torch.as_tensor(matrix, dtype=torch.float64)
        self.size, self.device, self.products = matrix.shape[0], torch.device("cpu"), 0

    def __call__(self, vector: torch.Tensor) -> torch.Tensor:
        self.products += 1
        return self.matrix @ vector


def images(data_root: str | None, count: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` training images pooled to 4x4x3 (48 features, standardised) and their labels."""
    if data_root:
        from landscape.training.data import cifar_folder, read_cifar10

        train_images, train_labels, _, _ = read_cifar10(cifar_folder(data_root, False, "cifar10"))
        x = torch.as_tensor(train_images[:count], dtype=torch.float64) / 255
        y = torch.as_tensor(train_labels[:count], dtype=torch.long)
    else:
        generator = torch.Generator().manual_seed(1)
        x, y = torch.rand(count, 3, 32, 32, generator=generator, dtype=torch.float64), \
            torch.randint(0, 10, (count,), generator=generator)
    x = F.avg_pool2d(x, 8).flatten(1)
    return (x - x.mean(0)) / x.std(0), y


def explicit_hessian(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for p in net.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in net.parameters()])

    def loss(vector):
        params, offset = {}, 0
        for name, shape in zip(names, shapes):
            params[name] = vector[offset:offset + shape.numel()].view(shape)
            offset += shape.numel()
        return F.cross_entropy(functional_call(net, params, (x,)), y)

    return torch.autograd.functional.hessian(loss, flat, vectorize=True).numpy()


def relative_rmse(estimates: list[float], exact: float) -> float:
    return float(np.sqrt(np.mean((np.asarray(estimates) - exact) ** 2)) / abs(exact))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    x, y = images(args.data_root)
    net = nn.Sequential(nn.Linear(48, 40), nn.Tanh(), nn.Linear(40, 10)).double()
    hessians = {"initialisation": explicit_hessian(net, x, y)}
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(300):
        optimizer.zero_grad()
        F.cross_entropy(net(x), y).backward()
        optimizer.step()
    hessians["after 300 Adam steps"] = explicit_hessian(net, x, y)
    parameters = hessians["initialisation"].shape[0]
    print(f"1. each method alone: relative RMSE over {SEEDS} seeds, MLP of {parameters:,} parameters\n")
    print("| weights | products | " + " | ".join(ESTIMATORS) + " |")
    print("| --- | --- |" + " --- |" * len(ESTIMATORS))
    for label, hessian in hessians.items():
        exact, operator = float(np.trace(hessian)), Matrix(hessian)
        for products in (10, 30, 99):
            errors = [relative_rmse([estimator(operator, products, seed=seed)[0] for seed in range(SEEDS)], exact)
                      for estimator in ESTIMATORS.values()]
            print(f"| {label} | {products} | " + " | ".join(f"{e:.4f}" for e in errors) + " |")
    print("\n2. top eigenvalue and trace together: products in all (mean over seeds) and the trace's relative RMSE\n")
    print("| weights | trace by | products | relative RMSE |")
    print("| --- | --- | --- | --- |")
    for label, hessian in hessians.items():
        exact = float(np.trace(hessian))
        plans = [(name, 30) for name in ("Hutch++", "XTrace")] + [("Krylov-deflated", n) for n in (5, 10, 20, 30)]
        for name, products in plans:
            estimates, counts = [], []
            for seed in range(SEEDS):
                operator = Matrix(hessian)
                eigen = top_eigenvalues(operator, 1, seed=seed, keep_basis=True)
                if name == "Krylov-deflated":
                    estimate = deflated_trace(operator, eigen.krylov, eigen.krylov_trace, products, seed)[0]
                else:
                    estimate = ESTIMATORS[name](operator, products, seed)[0]
                estimates.append(estimate)
                counts.append(operator.products)
            print(f"| {label} | {name} {products} | {np.mean(counts):.1f} | {relative_rmse(estimates, exact):.4f} |")


if __name__ == "__main__":
    main()
