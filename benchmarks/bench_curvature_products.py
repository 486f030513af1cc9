"""Seconds per curvature-vector product, lever by lever (issue: curvature ahead of curvlinops):

1. the Gauss-Newton product for cross-entropy: closed form at the output (forward-mode J v, softmax's Hessian
   written out, one backward; the default) against the double-vector-Jacobian trick with autograd's output Hessian;
2. batched products: a block of vectors through one batched backward (`is_grads_batched`, a vmap over the
   tangents) against one product at a time, for the Hessian (double backward on the kept gradient graph).
Each row: the same model, images and vectors; the products agree to float rounding (printed).

    python benchmarks/bench_curvature_products.py --model vgg_bn --width 0.25 --images 256 --block 8
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from landscape.engine.batches import Objective  # noqa: E402
from landscape.engine.devices import resolve_device  # noqa: E402
from landscape.engine.functional import module_buffers, prepared_module, state_of  # noqa: E402
from landscape.engine.operators import GaussNewtonOperator, HessianOperator  # noqa: E402
from landscape.training.models import build_model  # noqa: E402


def seconds_per_product(operator, vectors: torch.Tensor, repeats: int) -> tuple[float, torch.Tensor]:
    operator(vectors[0])  # the batches' graphs are built and kept (not timed)
    sync(vectors.device)
    start = time.perf_counter()
    for _ in range(repeats):
        products = torch.stack([operator(v) for v in vectors])
    sync(vectors.device)
    return (time.perf_counter() - start) / (repeats * len(vectors)), products


def batched_hessian(operator: HessianOperator, vectors: torch.Tensor) -> torch.Tensor:
    """H V for a block V [b, P]: one batched backward per batch through its kept gradient graph."""
    total = torch.zeros_like(vectors)
    sizes = [p.numel() for p in operator.params.values()]
    bounds = list(itertools.pairwise([0, *itertools.accumulate(sizes)]))
    for share, (leaves, grads) in zip(operator.shares, operator.batch_states()):
        tangents = [vectors[:, s:e].reshape(len(vectors), *p.shape).to(p.dtype) for (s, e), p in zip(bounds, leaves)]
        out = torch.autograd.grad(grads, leaves, tangents, retain_graph=True, is_grads_batched=True)
        total += share * torch.cat([o.reshape(len(vectors), -1) for o in out], dim=1).double()
    return total


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="vgg_bn")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--block", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--bn", default="train", choices=("train", "eval"))
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    net = build_model(args.model, width=args.width).to(device)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(args.images, 3, 32, 32, generator=generator).to(device)
    y = torch.randint(0, 10, (args.images,), generator=generator).to(device)
    batches = [(x[i:i + args.batch_size], y[i:i + args.batch_size]) for i in range(0, args.images, args.batch_size)]
    params, buffers = state_of(net)
    module = prepared_module(net, args.bn)
    kept = module_buffers(module, buffers)
    size = sum(p.numel() for p in params.values())
    vectors = torch.randn(args.block, size, generator=generator, dtype=torch.float64).to(device)
    print(f"{args.model} width {args.width:g} ({size:,} parameters), {args.images} images in batches of "
          f"{args.batch_size}, BatchNorm {args.bn}, {device.type}, {torch.get_num_threads()} threads\n")
    print("| product | seconds per vector | against the baseline | relative difference |")
    print("| --- | --- | --- | --- |")
    ggn = {method: seconds_per_product(GaussNewtonOperator(module, params, kept, batches, Objective(), method=method),
                                       vectors, args.repeats) for method in ("autograd", "closed-form")}
    base, reference = ggn["autograd"]
    print(f"| GGN, double-vector-Jacobian trick (baseline) | {base:.4f} | 1.00x | |")
    seconds, products = ggn["closed-form"]
    difference = float((products - reference).norm() / reference.norm())
    print(f"| GGN, closed form at the output, forward-mode Jv | {seconds:.4f} | {seconds / base:.2f}x | "
          f"{difference:.1e} |")
    operator = HessianOperator(module, params, kept, batches, Objective())
    base, reference = seconds_per_product(operator, vectors, args.repeats)
    print(f"| Hessian, one vector at a time (baseline) | {base:.4f} | 1.00x | |")
    sync(device)
    start = time.perf_counter()
    for _ in range(args.repeats):
        products = batched_hessian(operator, vectors)
    sync(device)
    seconds = (time.perf_counter() - start) / (args.repeats * args.block)
    difference = float((products - reference).norm() / reference.norm())
    print(f"| Hessian, a block of {args.block} in one batched backward | {seconds:.4f} | {seconds / base:.2f}x | "
          f"{difference:.1e} |")


if __name__ == "__main__":
    main()
