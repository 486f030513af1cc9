"""Seconds per curvature-vector product, lever by lever (issue: curvature ahead of curvlinops):

1. the Gauss-Newton product for cross-entropy: closed form at the output (forward-mode J v, softmax's Hessian
   written out, one backward; the default) against the double-vector-Jacobian trick with autograd's output Hessian;
2. the Hessian product on the kept gradient graph (the default) against rebuilding that graph (a forward and a
   backward) for every product, as hessian-eigenthings and curvlinops do: a double-backward product costs at
   least the kept-graph one, so at equal products this ratio bounds how far below theirs our time can go;
3. batched products: a block of vectors through one batched backward (`is_grads_batched`, a vmap over the
   tangents) against one product at a time, for the Hessian (double backward on the kept gradient graph);
4. two rewrites of the model tried for cheaper second derivatives, neither kept: BatchNorm on running statistics
   written as its affine map x * s + t (`--bn eval`), and channels_last convolutions, each alone and both,
   against the unchanged model, for the Hessian and the Gauss-Newton product. The last column shows
   channels_last's lost accuracy on CPU (oneDNN's channels_last backward), and the last lines the same for a
   plain gradient against float64.
Each row: the same model, images and vectors; the products agree to float rounding (printed).

    python benchmarks/bench_curvature_products.py --model vgg_bn --width 0.25 --images 256 --block 8 --bn eval
"""
from __future__ import annotations

import argparse
import copy
import itertools
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from landscape.engine.batches import Objective  # noqa: E402
from landscape.engine.devices import resolve_device  # noqa: E402
from landscape.engine.functional import (FunctionalModel, channels_last_params, flatten,  # noqa: E402
                                         module_buffers, prepared_module, state_of)
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


class AffineBatchNorm(_BatchNorm):
    """BatchNorm that on running statistics computes x * s + t, s = weight / sqrt(var + eps), t = bias - mean * s."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        pass

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.training or self.running_mean is None:
            return super().forward(input)
        scale = torch.rsqrt(self.running_var + self.eps) * (self.weight if self.weight is not None else 1)
        shift = -self.running_mean * scale + (self.bias if self.bias is not None else 0)
        shape = (1, -1) + (1,) * (input.dim() - 2)
        return torch.addcmul(shift.view(shape), input, scale.view(shape))


def affine_batch_norm(module: nn.Module) -> nn.Module:
    """A copy of `module` (sharing its tensors) whose BatchNorm layers are AffineBatchNorms."""
    rewritten = copy.deepcopy(module, {id(t): t for t in [*module.parameters(), *module.buffers()]})
    for layer in rewritten.modules():
        if isinstance(layer, _BatchNorm):
            layer.__class__ = AffineBatchNorm
    return rewritten


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
    rebuilt = HessianOperator(module, params, kept, batches, Objective(), reuse_graph=False)
    seconds, products = seconds_per_product(rebuilt, vectors, args.repeats)
    difference = float((products - reference).norm() / reference.norm())
    print(f"| Hessian, the gradient's graph rebuilt for every product (as hessian-eigenthings and curvlinops do) | "
          f"{seconds:.4f} | {seconds / base:.2f}x | {difference:.1e} |")
    sync(device)
    start = time.perf_counter()
    for _ in range(args.repeats):
        products = batched_hessian(operator, vectors)
    sync(device)
    seconds = (time.perf_counter() - start) / (args.repeats * args.block)
    difference = float((products - reference).norm() / reference.norm())
    print(f"| Hessian, a block of {args.block} in one batched backward | {seconds:.4f} | {seconds / base:.2f}x | "
          f"{difference:.1e} |")
    for name, operator_class in (("Hessian", HessianOperator), ("GGN, closed form", GaussNewtonOperator)):
        rewritten_model_rows(name, operator_class, module, params, kept, batches, vectors, args.repeats)
    gradient_errors(module, params, kept, batches[0])


def gradient_errors(module, params, buffers, batch) -> None:
    """The loss gradient's relative distance from a float64 one, in the default and the channels_last format."""
    def gradient(point, state, inputs) -> torch.Tensor:
        point = {n: p.detach().clone().requires_grad_(True) for n, p in point.items()}
        outputs = FunctionalModel(module, point, state)(inputs)
        loss = torch.nn.functional.cross_entropy(outputs.double(), batch[1])
        return flatten(dict(zip(point, torch.autograd.grad(loss, list(point.values())))))

    inputs = batch[0]
    truth = gradient({n: p.double() for n, p in params.items()},
                     {n: b.double() if b.is_floating_point() else b for n, b in buffers.items()}, inputs.double())
    for label, point, layout in (("default format", params, inputs),
                                 ("channels_last", channels_last_params(params),
                                  inputs.contiguous(memory_format=torch.channels_last))):
        error = float((gradient(point, buffers, layout) - truth).norm() / truth.norm())
        print(f"gradient on {len(inputs)} images, {label}: {error:.1e} from float64")


def rewritten_model_rows(name: str, operator_class, module, params, buffers, batches, vectors: torch.Tensor,
                         repeats: int) -> None:
    """The product on the unchanged model (baseline), with BatchNorm affine, channels_last, and both."""
    variants = {}
    for affine, channels_last in ((False, False), (True, False), (False, True), (True, True)):
        rewritten = affine_batch_norm(module) if affine else module
        operator = operator_class(rewritten, channels_last_params(params) if channels_last else params, buffers,
                                  batches, Objective())
        if channels_last:
            operator.forward = lambda point, op=operator: FunctionalModel(op.module, {**op.frozen, **point},
                                                                          op.buffers, channels_last=True)
        variants[affine, channels_last] = operator
    timed = {key: [] for key in variants}
    results = {}
    for _ in range(repeats):  # alternated, so that a busy spell hits every variant alike
        for key, operator in variants.items():
            seconds, results[key] = seconds_per_product(operator, vectors[:2], 1)
            timed[key].append(seconds)
    base, reference = min(timed[False, False]), results[False, False]
    labels = {(False, False): "unchanged model (baseline)", (True, False): "BatchNorm as its affine map",
              (False, True): "channels_last", (True, True): "both"}
    for key, label in labels.items():
        seconds = min(timed[key])
        difference = float((results[key] - reference).norm() / reference.norm())
        print(f"| {name}, {label} | {seconds:.4f} | {seconds / base:.2f}x | {difference:.1e} |")


if __name__ == "__main__":
    main()
