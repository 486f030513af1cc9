"""Curvature of the training loss: Hessian-vector products, top eigenvalues, trace and spectral density.

`HessianOperator` gives v -> H v for the mean cross-entropy over a fixed set of images split into
batches (the batch-size-weighted sum of the batches' Hessians is the Hessian of the whole set), on
every parameter, by forward-over-reverse (`torch.func.jvp` of `torch.func.grad`) or by double
backward (the reference kept for tests). BatchNorm uses batch statistics (`train`, running
statistics neither used nor changed) or the snapshot's (`eval`); dropout is off
(`evaluation.prepared_module`). On top of it, all in float64 on the device:
- `lanczos`: Lanczos with full reorthogonalisation (twice, "twice is enough");
- `top_eigenvalues`: the k largest (algebraic) eigenvalues, to a relative residual tolerance;
- `hutchinson_trace`: tr H ~ mean of v'Hv over Rademacher v, with its standard error;
- `spectral_density`: stochastic Lanczos quadrature (Ghorbani et al. 2019): per probe vector, the
  Ritz values and the squared first components of their eigenvectors (weights summing to one).
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, jvp

from landscape.errors import UsageError
from landscape.engine.functional import Params, flatten, unflatten
from landscape.engine.memory import available_bytes
from landscape.progress import bar

HVP_METHODS = ("double-backward", "forward-over-reverse")
# `auto` is double backward: 1.25-1.4x faster than forward-over-reverse on CPU for VGG-A with BatchNorm
# (width 1/16 and 1/4, batch 64; benchmarks/bench_hessian.py prints both on the device at hand).
DEFAULT_HVP = "double-backward"


class HessianOperator:
    """H v of the mean cross-entropy of `module` at `params` over `batches` (a fixed list of (images, labels)).

    With double backward, the first-order graph of every batch is built once and kept (`reuse_graph`,
    automatic: when the tensors it saves, measured on the first batch, fit in a quarter of the free
    memory), so each product costs one backward pass instead of a forward and two backwards.
    """

    def __init__(self, module: nn.Module, params: Params, buffers: Params,
                 batches: list[tuple[torch.Tensor, torch.Tensor]], method: str = "auto",
                 reuse_graph: bool | None = None):
        method = DEFAULT_HVP if method == "auto" else method
        if method not in HVP_METHODS:
            raise UsageError(f"--hvp {method!r} is unknown: choose one of {', '.join(HVP_METHODS)}")
        self.module, self.buffers, self.batches, self.method = module, buffers, batches, method
        self.params = {n: p.detach() for n, p in params.items()}
        total = sum(labels.shape[0] for _, labels in batches)
        self.shares = [labels.shape[0] / total for _, labels in batches]
        self.size = sum(p.numel() for p in self.params.values())
        self.device = next(iter(self.params.values())).device
        self.products = 0  # Hessian-vector products computed so far
        self.reuse_graph = reuse_graph if method == "double-backward" else False
        self.graphs: list[tuple[list[torch.Tensor], tuple[torch.Tensor, ...]]] | None = None

    def loss(self, params: Params, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(self.module, (params, self.buffers), (images,)), labels)

    def first_order(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[list[torch.Tensor], tuple]:
        """Leaf copies of the parameters and the batch's gradient with its graph (for a second backward)."""
        leaves = {n: p.clone().requires_grad_(True) for n, p in self.params.items()}
        grads = torch.autograd.grad(self.loss(leaves, images, labels), list(leaves.values()), create_graph=True)
        return list(leaves.values()), grads

    def build_graphs(self) -> None:
        """Decide whether to keep every batch's graph (measured on the first) and, if so, build them."""
        if self.reuse_graph is None:
            saved = [0]

            def count(tensor: torch.Tensor) -> torch.Tensor:
                saved[0] += tensor.numel() * tensor.element_size()
                return tensor

            with torch.autograd.graph.saved_tensors_hooks(count, lambda tensor: tensor):
                first = self.first_order(*self.batches[0])
            self.reuse_graph = saved[0] * len(self.batches) < 0.25 * available_bytes(self.device)
            self.graphs = [first] if self.reuse_graph else None
        if self.reuse_graph:
            self.graphs = (self.graphs or [])[:1] + [self.first_order(*batch) for batch in self.batches[1:]]

    def batch_product(self, vector: Params, images: torch.Tensor, labels: torch.Tensor, index: int) -> Params:
        """H_B v for batch `index`."""
        if self.method == "forward-over-reverse":
            _, product = jvp(lambda p: grad(self.loss)(p, images, labels), (self.params,), (vector,))
            return product
        leaves, grads = self.graphs[index] if self.graphs is not None else self.first_order(images, labels)
        products = torch.autograd.grad(grads, leaves, grad_outputs=list(vector.values()),
                                       retain_graph=self.graphs is not None)
        return dict(zip(self.params, products))

    def __call__(self, vector: torch.Tensor) -> torch.Tensor:
        """H v for a flat float64 vector v [P]; returns float64 [P]."""
        if self.method == "double-backward" and self.graphs is None and self.reuse_graph is not False:
            self.build_graphs()
        as_params = unflatten(vector, self.params)
        total = torch.zeros(self.size, dtype=torch.float64, device=self.device)
        for index, (share, (images, labels)) in enumerate(zip(self.shares, self.batches)):
            total += share * flatten(self.batch_product(as_params, images, labels, index), list(self.params))
        self.products += 1
        return total


@dataclass
class Lanczos:
    """m steps of Lanczos: the tridiagonal (alpha [m], beta [m - 1]) and the orthonormal basis [m, P]."""

    alpha: torch.Tensor
    beta: torch.Tensor
    basis: torch.Tensor
    last_beta: torch.Tensor

    def ritz(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Eigenvalues (ascending) and eigenvectors of the tridiagonal matrix."""
        m = self.alpha.shape[0]
        t = torch.diag(self.alpha)
        if m > 1:
            t = t + torch.diag(self.beta, 1) + torch.diag(self.beta, -1)
        return torch.linalg.eigh(t)


def lanczos(matvec: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor, steps: int,
            should_stop: Callable[["Lanczos"], bool] | None = None, check_every: int = 5,
            sync: bool = True) -> Lanczos:
    """Lanczos from `start` for at most `steps` steps, fully reorthogonalised.

    With `sync`, it stops early on an invariant subspace (beta ~ 0) and when `should_stop` (called every
    `check_every` steps) says so; without, it runs exactly `steps` steps and never waits for the device.
    """
    size = start.shape[0]
    steps = min(steps, size)
    basis = torch.zeros(steps, size, dtype=torch.float64, device=start.device)
    alphas: list[torch.Tensor] = []
    betas: list[torch.Tensor] = []
    q = start / start.norm()
    beta = torch.zeros((), dtype=torch.float64, device=start.device)
    scale = 0.0
    for j in range(steps):
        basis[j] = q
        w = matvec(q)
        alpha = torch.dot(w, q)
        w = w - alpha * q - (beta * basis[j - 1] if j else 0)
        for _ in range(2):  # full reorthogonalisation against every earlier vector
            w = w - basis[:j + 1].T @ (basis[:j + 1] @ w)
        beta = w.norm()
        alphas.append(alpha)
        if j + 1 == steps:
            break
        if sync:
            scale = max(scale, abs(float(alpha)), float(beta))
            if float(beta) <= 1e-10 * max(scale, 1e-300):
                break  # the Krylov space is invariant: its Ritz values are exact eigenvalues
            if should_stop is not None and (j + 1) % check_every == 0 and should_stop(
                    Lanczos(torch.stack(alphas), torch.stack(betas) if betas else beta.new_zeros(0),
                            basis[:j + 1], beta)):
                break
        betas.append(beta)
        q = w / beta.clamp(min=1e-300)
    m = len(alphas)
    return Lanczos(torch.stack(alphas), torch.stack(betas[:m - 1]) if m > 1 else beta.new_zeros(0), basis[:m], beta)


@dataclass
class Eigen:
    """Top eigenvalues (descending), their residual estimates |beta_m s_mi|, Lanczos steps, eigenvectors."""

    values: np.ndarray
    residuals: np.ndarray
    steps: int
    vectors: torch.Tensor | None = None


def top_eigenvalues(operator: HessianOperator, k: int, *, max_steps: int = 80, tol: float = 1e-3, seed: int = 0,
                    vectors: bool = False) -> Eigen:
    """The k largest eigenvalues of H by Lanczos, until every error bound (`error_bound`) is within tol * |value|."""
    generator = torch.Generator().manual_seed(seed)
    start = torch.randn(operator.size, generator=generator, dtype=torch.float64).to(operator.device)

    def converged(result: Lanczos) -> bool:
        if result.alpha.shape[0] < k + 1:
            return False
        values, vecs = result.ritz()
        return bool((error_bound(values, vecs, result.last_beta, k) <= tol * values[-k:].abs().clamp(min=1e-12)).all())

    result = lanczos(operator, start, max_steps, converged, check_every=1)
    values, vecs = result.ritz()
    top = min(k, values.shape[0])
    residual = (result.last_beta * vecs[-1, -top:]).abs()
    order = torch.arange(values.shape[0] - 1, values.shape[0] - 1 - top, -1, device=values.device)
    eigvecs = (result.basis.T @ vecs[:, order]).T if vectors else None
    return Eigen(values[order].cpu().numpy(), residual.flip(0).cpu().numpy(), int(result.alpha.shape[0]), eigvecs)


def error_bound(values: torch.Tensor, vectors: torch.Tensor, last_beta: torch.Tensor, k: int) -> torch.Tensor:
    """Error bounds of the top k Ritz values (ascending order, as `values`): min(r, r^2 / gap), with r = |beta_m s_mi|
    the residual norm and gap the distance to the nearest other Ritz value (Parlett, The Symmetric Eigenvalue
    Problem, Sec. 11.7)."""
    residual = (last_beta * vectors[-1, -k:]).abs()
    top = values[-k:]
    others = values.unsqueeze(0).expand(k, -1)
    distance = (others - top.unsqueeze(1)).abs()
    distance[torch.arange(k), torch.arange(values.shape[0] - k, values.shape[0])] = float("inf")
    gap = distance.min(dim=1).values.clamp(min=1e-300)
    return torch.minimum(residual, residual ** 2 / gap)


def hutchinson_trace(operator: HessianOperator, samples: int, seed: int = 0) -> tuple[float, float]:
    """tr H estimated as the mean of v'Hv over Rademacher vectors v, and the standard error of that mean."""
    generator = torch.Generator().manual_seed(seed + 1)
    values = []
    for _ in range(samples):
        v = (torch.randint(0, 2, (operator.size,), generator=generator, dtype=torch.float64) * 2 - 1)
        v = v.to(operator.device)
        values.append(torch.dot(v, operator(v)))
    estimates = torch.stack(values).cpu().numpy()
    stderr = float(estimates.std(ddof=1) / math.sqrt(samples)) if samples > 1 else float("nan")
    return float(estimates.mean()), stderr


def spectral_density(operator: HessianOperator, probes: int, steps: int,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stochastic Lanczos quadrature: nodes and weights [probes, steps] (weights of each probe sum to one;
    a probe whose Lanczos stopped early has NaN nodes and zero weights in its unused slots)."""
    generator = torch.Generator().manual_seed(seed + 2)
    nodes = np.full((probes, steps), np.nan)
    weights = np.zeros((probes, steps))
    for i in range(probes):
        start = torch.randn(operator.size, generator=generator, dtype=torch.float64).to(operator.device)
        values, vectors = lanczos(operator, start, steps).ritz()
        m = values.shape[0]
        nodes[i, :m] = values.cpu().numpy()
        weights[i, :m] = (vectors[0] ** 2).cpu().numpy()
    return nodes, weights


def smoothed_density(nodes: np.ndarray, weights: np.ndarray, points: int = 1000,
                     sigma_share: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """The quadrature as a density on a grid: Gaussians of width sigma_share * (spectrum width), averaged over
    probes. Integrates to one over the grid (which extends 5 sigma beyond the extreme nodes)."""
    finite = nodes[np.isfinite(nodes)]
    low, high = float(finite.min()), float(finite.max())
    sigma = sigma_share * max(high - low, 1e-12)
    grid = np.linspace(low - 5 * sigma, high + 5 * sigma, points)
    density = np.zeros(points)
    for probe_nodes, probe_weights in zip(nodes, weights):
        keep = np.isfinite(probe_nodes)
        density += (probe_weights[keep, None] * np.exp(-(grid[None] - probe_nodes[keep, None]) ** 2 / (2 * sigma ** 2))
                    ).sum(axis=0) / (sigma * math.sqrt(2 * math.pi))
    return grid, density / len(nodes)


def sharpness(operator: HessianOperator, k: int, steps: int, seed: int) -> torch.Tensor:
    """The k largest eigenvalues [k] after a fixed number of Lanczos steps, left on the device (no host sync)."""
    generator = torch.Generator().manual_seed(seed)
    start = torch.randn(operator.size, generator=generator, dtype=torch.float64).to(operator.device)
    values, _ = lanczos(operator, start, steps, sync=False).ritz()
    return values.flip(0)[:k]


# ---------------------------------------------------------------- `landscape hessian`


@dataclass
class HessianOptions:
    """Every option of `landscape hessian` (stored as JSON in the Hessian file)."""

    lr: str | None = None  # a rate of the run file, or "all"
    run: int | None = None
    epoch: str | None = None  # a snapshot epoch, or "all"; default the last
    top_k: int = 5
    tol: float = 1e-3
    max_steps: int = 80
    trace: bool = False
    trace_samples: int = 100
    density: bool = False
    density_probes: int = 1
    density_steps: int = 80
    images: int | None = 4096  # None: the whole training split
    batch_size: int = 0  # 0: the run's training batch size
    bn: str = "train"
    hvp: str = "auto"
    seed: int = 0
    device: str = "auto"
    data_root: str | None = None

    def validate(self) -> "HessianOptions":
        from landscape.training.config import choose, in_range, positive

        choose("--bn", self.bn, ("train", "eval"))
        choose("--hvp", self.hvp, ("auto",) + HVP_METHODS)
        for option, value in (("--top-k", self.top_k), ("--max-steps", self.max_steps),
                              ("--trace-samples", self.trace_samples), ("--density-probes", self.density_probes),
                              ("--density-steps", self.density_steps)):
            positive(option, value)
        if self.images is not None:
            positive("--images", self.images)
        if self.top_k > self.max_steps:
            raise UsageError(f"--top-k {self.top_k} needs at least as many --max-steps (got {self.max_steps})")
        in_range("--tol", self.tol, 0, 1, low_open=True)
        if self.batch_size < 0:
            raise UsageError(f"--batch-size must be 0 (the run's) or positive, got {self.batch_size}")
        return self


def pick_runs(run, options: HessianOptions) -> list[int]:
    """Run indices from --lr RATE|all or --run."""
    from landscape.files.weights_file import resolve_run

    if options.lr == "all":
        return list(range(len(run.lrs)))
    rate = None
    if options.lr is not None:
        try:
            rate = float(options.lr)
        except ValueError:
            raise UsageError(f"--lr {options.lr!r} is neither a learning rate nor all") from None
    return [resolve_run(run.lrs, rate, options.run, run.path)]


def pick_epochs(weights, epoch: str | None) -> list[int]:
    """Snapshot epochs from --epoch E|all (default: the last)."""
    from landscape.files.weights_file import resolve_epoch

    if epoch == "all":
        return list(weights.epochs)
    if epoch is None:
        return [weights.epochs[-1]]
    try:
        return [resolve_epoch(weights, int(epoch))]
    except ValueError:
        raise UsageError(f"--epoch {epoch!r} is neither an epoch nor all") from None


def compute_hessian(run_path: str | Path, options: HessianOptions, out: str | Path | None = None, *,
                    overwrite: bool = False, progress: bool = True) -> Path:
    """Measure the chosen snapshots of `run_path` and write the Hessian file; return its path."""
    from landscape.engine.functional import ImageSet, module_buffers, prepared_module, snapshot_model
    from landscape.files.hessian_file import HessianResult, write_hessian
    from landscape.files.weights_file import weights_of_run
    from landscape.files.run_file import read_run
    from landscape.training.runner import check_output, resolve_device

    options.validate()
    run = read_run(run_path)
    weights = weights_of_run(run)
    runs, epochs = pick_runs(run, options), pick_epochs(weights, options.epoch)
    out = Path(out) if out else run.path.with_name(f"{run.path.stem}_hessian.h5")
    check_output(out, overwrite)
    device = resolve_device(options.device)
    images = ImageSet(run, device, options.data_root)
    total = len(images.dataset.train)
    split = images.split("train", min(options.images, total) if options.images else None)
    batches = list(images.batches(split, options.batch_size or images.batch_size))
    shape, k = (len(runs), len(epochs)), options.top_k
    arrays = {"lrs": run.lrs[runs], "runs": np.asarray(runs), "epochs": np.asarray(epochs),
              "eigenvalues": np.full((*shape, k), np.nan), "residuals": np.full((*shape, k), np.nan),
              "lanczos_steps": np.zeros(shape, dtype=np.int64), "hvps": np.zeros(shape, dtype=np.int64),
              "seconds": np.zeros(shape)}
    if options.trace:
        arrays.update(trace=np.full(shape, np.nan), trace_stderr=np.full(shape, np.nan))
    if options.density:
        arrays.update({"density/nodes": np.full((*shape, options.density_probes, options.density_steps), np.nan),
                       "density/weights": np.zeros((*shape, options.density_probes, options.density_steps)),
                       "density/grid": np.full((*shape, 1000), np.nan),
                       "density/values": np.full((*shape, 1000), np.nan)})
    stored = {k: v for k, v in options.__dict__.items() if k not in ("device", "data_root")}
    result = HessianResult(out, attrs={
        "options": json.dumps(stored, sort_keys=True), "run_file": run.path.name, "weights_file": weights.path.name,
        "model": run.model, "bn": options.bn, "hvp": DEFAULT_HVP if options.hvp == "auto" else options.hvp,
        "images": len(split),
        "batch_size": options.batch_size or images.batch_size, "tol": options.tol, "max_steps": options.max_steps,
        "seed": options.seed, "device": str(device), "torch_version": torch.__version__,
        "optimizer": str(json.loads(run.attrs["config"]).get("optimizer", "")),
        "momentum": float(json.loads(run.attrs["config"]).get("momentum", 0.0)),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, arrays=arrays)
    out.parent.mkdir(parents=True, exist_ok=True)
    measurements = bar(len(runs) * len(epochs), "hessian", "snapshot", progress)
    for i, index in enumerate(runs):
        for j, epoch in enumerate(epochs):
            started = time.perf_counter()
            model, params, buffers = snapshot_model(run, weights, index, epoch, device)
            module = prepared_module(model, options.bn)
            operator = HessianOperator(module, params, module_buffers(module, buffers), batches, options.hvp)
            eigen = top_eigenvalues(operator, k, max_steps=options.max_steps, tol=options.tol, seed=options.seed)
            arrays["eigenvalues"][i, j, :len(eigen.values)] = eigen.values
            arrays["residuals"][i, j, :len(eigen.values)] = eigen.residuals
            arrays["lanczos_steps"][i, j] = eigen.steps
            if options.trace:
                arrays["trace"][i, j], arrays["trace_stderr"][i, j] = hutchinson_trace(
                    operator, options.trace_samples, options.seed)
            if options.density:
                nodes, quad = spectral_density(operator, options.density_probes, options.density_steps, options.seed)
                arrays["density/nodes"][i, j], arrays["density/weights"][i, j] = nodes, quad
                arrays["density/grid"][i, j], arrays["density/values"][i, j] = smoothed_density(nodes, quad)
            arrays["hvps"][i, j] = operator.products
            arrays["seconds"][i, j] = time.perf_counter() - started
            measurements.update(1)
            line = (f"hessian: lr={run.lrs[index]:g} epoch {epoch}: top eigenvalue {eigen.values[0]:.4g} "
                    f"({eigen.steps} Lanczos steps, {operator.products} HVPs, {arrays['seconds'][i, j]:.1f}s)")
            if progress:
                measurements.write(line, file=sys.stderr)
            write_hessian(result)  # what is done so far is on disk
    measurements.close()
    return out


# ---------------------------------------------------------------- sharpness during `landscape run`


class SharpnessTracker:
    """Top Hessian eigenvalues of every run, every K steps, on a fixed seeded subset of training images.

    Lanczos runs a fixed number of steps from a start vector seeded by (seed, step) and never waits
    for the device; nothing of training is touched (weights are read, not written; no random stream is
    used; BatchNorm uses batch statistics without updating running ones; dropout is off).
    """

    def __init__(self, split, normalize, *, images: int, batch_size: int, top_k: int, iterations: int, seed: int):
        from landscape.training.data import Split, eval_batches

        if images > len(split):
            raise UsageError(f"--sharpness-images {images} exceeds the {len(split)} training images: "
                             f"give at most {len(split)}")
        index = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed + 15_485_863))[:images]
        index = index.sort().values.to(split.images.device)
        subset = Split(split.images[index], split.labels[index], split.device)
        self.batches = list(eval_batches(subset, normalize, batch_size))
        self.top_k, self.iterations, self.seed = top_k, iterations, seed
        self.attrs = {"top_k": top_k, "images": images, "iterations": iterations, "bn": "train",
                      "method": f"Lanczos (full reorthogonalisation, fixed steps), {DEFAULT_HVP} HVPs",
                      "batch_size": batch_size, "seed": seed}
        self.module = None

    def measure(self, runs, step: int) -> torch.Tensor:
        """[R, k] on the device: each active run's top eigenvalues now; NaN rows for stopped runs."""
        from landscape.engine.functional import module_buffers, prepared_module

        rows = []
        for run in range(len(runs)):
            module, params, buffers = runs.run_module(run)
            if self.module is None:
                self.module = prepared_module(module, "train")
            if not runs.active[run]:
                rows.append(torch.full((self.top_k,), float("nan"), dtype=torch.float64, device=self.batches[0][0].device))
                continue
            operator = HessianOperator(self.module, params, module_buffers(self.module, buffers), self.batches)
            rows.append(sharpness(operator, self.top_k, self.iterations, seed=self.seed * 1_000_003 + step))
        return torch.stack(rows)
