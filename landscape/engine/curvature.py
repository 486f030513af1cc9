"""Curvature of any model's loss: Hessian-vector products, top eigenvalues, trace and spectral density.

`HessianOperator` gives v -> H v for the mean loss over a fixed set of batches (the batch-size-weighted
sum of the batches' Hessians is the Hessian of the whole set), with respect to all parameters or a chosen
block of them (`wrt`: the others are held fixed, so its spectrum is that of the block's submatrix), by
double backward (the default, measured faster on CPU; every batch's first-order graph is built once and
reused while it fits in a quarter of the free memory) or forward-over-reverse (`torch.func.jvp` of
`torch.func.grad`). BatchNorm uses batch statistics (`train`, running statistics neither used nor changed)
or the snapshot's (`eval`); dropout is off (`functional.prepared_module`). On top, in float64 on the device:
- `lanczos`: Lanczos with full reorthogonalisation (twice, "twice is enough");
- `top_eigenvalues`: the k largest (algebraic) eigenvalues, to a relative error-bound tolerance;
- `hutchpp_trace` (the default) and `hutchinson_trace`: tr H from a budget of products, Hutch++ (Meyer et al.
  2021: the exact trace on a sketch of the top of the spectrum, Hutchinson on the rest) or plain Hutchinson
  (mean of v'Hv over Rademacher v), each with its standard error;
- `spectral_density`: stochastic Lanczos quadrature (Ghorbani et al. 2019): per probe vector, the Ritz
  values and the squared first components of their eigenvectors (weights summing to one).
`measure` runs the ones asked for and counts each one's products; `hessian(model, data, ...)` is the API.
"""
from __future__ import annotations

import fnmatch
import json
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.func import grad, jvp

from landscape.engine.batches import BatchSet, Objective, batch_set
from landscape.engine.devices import with_threads
from landscape.engine.functional import (FunctionalModel, Params, check_finite, check_forward, check_module, flatten,
                                         module_buffers, prepared_module, state_of, unflatten)
from landscape.engine.memory import available_bytes
from landscape.errors import UsageError
from landscape.options import check_seed, choose, in_range, positive

HVP_METHODS = ("double-backward", "forward-over-reverse")
# `auto` is double backward: 1.25-1.4x faster than forward-over-reverse on CPU for VGG-A with BatchNorm
# (width 1/16 and 1/4, batch 64; benchmarks/bench_hessian.py prints both on the device at hand).
DEFAULT_HVP = "double-backward"
BASIS_MEMORY_SHARE = 0.5  # the Lanczos basis may take at most this share of the device's free memory


def select_parameters(params: Params, chosen) -> list[str]:
    """Names of the parameters to differentiate: all (None), those matching a glob pattern or a list of them,
    or those a predicate `chosen(name)` accepts; UsageError when none matches."""
    names = list(params)
    if chosen is None:
        return names
    if isinstance(chosen, str):
        patterns = [chosen]
    elif isinstance(chosen, (list, tuple, set)) and all(isinstance(p, str) for p in chosen):
        patterns = list(chosen)
    elif callable(chosen):
        picked = [n for n in names if chosen(n)]
        if not picked:
            raise UsageError(f"params: the predicate accepts none of the parameters (e.g. {', '.join(names[:3])})")
        return picked
    else:
        raise UsageError(f"params must be a name pattern such as 'layer4.*', a list of them, or a predicate of the "
                         f"name, got {type(chosen).__name__}")
    picked = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    if not picked:
        raise UsageError(f"params {', '.join(patterns)} matches no parameter; names look like "
                         f"{', '.join(names[:4])}")
    return picked


class HessianOperator:
    """H v of the mean loss of `module` at `params` over `batches`, with respect to the parameters in `wrt`."""

    def __init__(self, module: nn.Module, params: Params, buffers: Params, batches: BatchSet | list,
                 objective: Objective | None = None, method: str = "auto", reuse_graph: bool | None = None,
                 wrt: list[str] | None = None, on_product: Callable[[], None] | None = None):
        method = DEFAULT_HVP if method == "auto" else method
        choose("hvp", method, HVP_METHODS)
        if not isinstance(batches, BatchSet):
            batches = BatchSet(list(batches))
        self.module, self.buffers, self.method = module, buffers, method
        self.objective = objective or Objective()
        self.batches = batches.fixed()
        self.shares = batches.shares
        names = wrt or list(params)
        self.params = {n: params[n].detach() for n in names}
        self.frozen = {n: p.detach() for n, p in params.items() if n not in self.params}
        self.size = sum(p.numel() for p in self.params.values())
        self.device = next(iter(self.params.values())).device
        self.products = 0  # Hessian-vector products computed so far
        self.on_product = on_product
        self.reuse_graph = reuse_graph if method == "double-backward" else False
        self.graphs: list[tuple[list[torch.Tensor], tuple[torch.Tensor, ...]]] | None = None

    def loss(self, params: Params, batch) -> torch.Tensor:
        return self.objective.loss_only(FunctionalModel(self.module, {**self.frozen, **params}, self.buffers), batch)

    def first_order(self, batch) -> tuple[list[torch.Tensor], tuple]:
        """Leaf copies of the parameters and the batch's gradient with its graph (for a second backward)."""
        leaves = {n: p.clone().requires_grad_(True) for n, p in self.params.items()}
        grads = torch.autograd.grad(self.loss(leaves, batch), list(leaves.values()), create_graph=True,
                                    allow_unused=True)
        grads = tuple(g if g is not None else torch.zeros_like(p) for g, p in zip(grads, leaves.values()))
        return list(leaves.values()), grads

    def build_graphs(self) -> None:
        """Decide whether to keep every batch's graph (measured on the first) and, if so, build them."""
        if self.reuse_graph is None:
            saved = [0]

            def count(tensor: torch.Tensor) -> torch.Tensor:
                saved[0] += tensor.numel() * tensor.element_size()
                return tensor

            with torch.autograd.graph.saved_tensors_hooks(count, lambda tensor: tensor):
                first = self.first_order(self.batches[0])
            self.reuse_graph = saved[0] * len(self.batches) < 0.25 * available_bytes(self.device)
            self.graphs = [first] if self.reuse_graph else None
        if self.reuse_graph:
            self.graphs = (self.graphs or [])[:1] + [self.first_order(batch) for batch in self.batches[1:]]

    def batch_product(self, vector: Params, batch, index: int) -> Params:
        """H_B v for batch `index`."""
        if self.method == "forward-over-reverse":
            _, product = jvp(lambda p: grad(self.loss)(p, batch), (self.params,), (vector,))
            return product
        leaves, grads = self.graphs[index] if self.graphs is not None else self.first_order(batch)
        products = torch.autograd.grad(grads, leaves, grad_outputs=list(vector.values()),
                                       retain_graph=self.graphs is not None, allow_unused=True)
        return {n: p if p is not None else torch.zeros_like(v) for (n, v), p in zip(vector.items(), products)}

    def __call__(self, vector: torch.Tensor) -> torch.Tensor:
        """H v for a flat float64 vector v [P]; returns float64 [P]."""
        if self.method == "double-backward" and self.graphs is None and self.reuse_graph is not False:
            self.build_graphs()
        as_params = unflatten(vector, self.params)
        total = torch.zeros(self.size, dtype=torch.float64, device=self.device)
        for index, (share, batch) in enumerate(zip(self.shares, self.batches)):
            try:
                product = self.batch_product(as_params, batch, index)
            except (RuntimeError, NotImplementedError) as exc:
                if "derivative for" not in str(exc) and "not implemented" not in str(exc):
                    raise
                raise UsageError(f"the model uses an operation without a second derivative in torch "
                                 f"({' '.join(str(exc).split())[:120]}): use a plain implementation of it (for "
                                 f"HuggingFace models, attn_implementation='eager')") from None
            total += share * flatten(product, list(self.params))
        self.products += 1
        if self.on_product is not None:
            self.on_product()
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


def check_basis_fits(steps: int, size: int, device: torch.device, option: str = "max_steps") -> None:
    """Refuse a Lanczos run whose basis of `steps` float64 vectors cannot be held on the device."""
    need, have = steps * size * 8, available_bytes(device)
    if need > BASIS_MEMORY_SHARE * have:
        most = max(1, int(BASIS_MEMORY_SHARE * have // (size * 8)))
        raise UsageError(f"{option} {steps:,}: the Lanczos basis would take {need / 2 ** 30:,.1f} GiB ({steps:,} vectors "
                         f"of {size:,} parameters), more than half of the {have / 2 ** 30:,.1f} GiB free on "
                         f"{device.type}: give at most {most:,}")


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
    """Top eigenvalues (descending), their error bounds and residuals, whether each met the tolerance, the Lanczos
    steps taken, and optionally the Ritz vectors [k, P]."""

    values: np.ndarray
    residuals: np.ndarray
    bounds: np.ndarray
    converged: np.ndarray
    steps: int
    vectors: torch.Tensor | None = None


def ritz_pairs(result: Lanczos, k: int, tol: float, vectors: bool = False) -> Eigen:
    """The k largest Ritz values of a Lanczos run, descending, with residuals, error bounds and convergence."""
    values, vecs = result.ritz()
    top = min(k, values.shape[0])
    residual = (result.last_beta * vecs[-1, -top:]).abs()
    bound = error_bound(values, vecs, result.last_beta, top)
    converged = bound <= tol * values[-top:].abs().clamp(min=1e-12)
    order = torch.arange(values.shape[0] - 1, values.shape[0] - 1 - top, -1, device=values.device)
    eigvecs = (result.basis.T @ vecs[:, order]).T if vectors else None
    return Eigen(values[order].cpu().numpy(), residual.flip(0).cpu().numpy(), bound.flip(0).cpu().numpy(),
                 converged.flip(0).cpu().numpy(), int(result.alpha.shape[0]), eigvecs)


def top_eigenvalues(operator: HessianOperator, k: int, *, max_steps: int = 80, tol: float = 1e-3, seed: int = 0,
                    vectors: bool = False, start: torch.Tensor | None = None) -> Eigen:
    """The k largest eigenvalues of H by Lanczos, until every error bound is within tol * |value| (or max_steps)."""
    if start is None:
        generator = torch.Generator().manual_seed(seed)
        start = torch.randn(operator.size, generator=generator, dtype=torch.float64).to(operator.device)

    def converged(result: Lanczos) -> bool:
        if result.alpha.shape[0] < k + 1:
            return False
        values, vecs = result.ritz()
        return bool((error_bound(values, vecs, result.last_beta, k) <= tol * values[-k:].abs().clamp(min=1e-12)).all())

    return ritz_pairs(lanczos(operator, start, max_steps, converged, check_every=1), k, tol, vectors)


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
    # with a single Ritz value there is no gap to the rest of the spectrum to lean on: the residual alone bounds it
    return torch.where(torch.isfinite(gap), torch.minimum(residual, residual ** 2 / gap), residual)


TRACE_METHODS = ("hutch++", "hutchinson")


def rademacher(size: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """A vector of random signs (float64), drawn on the CPU so every device gives the same one."""
    return (torch.randint(0, 2, (size,), generator=generator, dtype=torch.float64) * 2 - 1).to(device)


def mean_and_stderr(values: list[torch.Tensor]) -> tuple[float, float]:
    estimates = torch.stack(values).cpu().numpy()
    stderr = float(estimates.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else float("nan")
    return float(estimates.mean()), stderr


def hutchinson_trace(operator: HessianOperator, samples: int, seed: int = 0) -> tuple[float, float]:
    """tr H estimated as the mean of v'Hv over Rademacher vectors v, and the standard error of that mean."""
    generator = torch.Generator().manual_seed(seed + 1)
    values = []
    for _ in range(samples):
        v = rademacher(operator.size, generator, operator.device)
        values.append(torch.dot(v, operator(v)))
    return mean_and_stderr(values)


def hutchpp_trace(operator: HessianOperator, products: int, seed: int = 0) -> tuple[float, float]:
    """Hutch++ with `products` products (at least 3): k = products // 3 of them sketch the range of H (Q, an
    orthonormal basis of H S for Rademacher S), k more give tr(Q'HQ) exactly, and the rest estimate the trace of
    the deflated (I - QQ')H(I - QQ') by Hutchinson; returns the sum and the standard error of that last part.
    Exact when H has rank below k; at a budget of about 100 products measured several times more accurate than
    Hutchinson, at 10-30 products slightly less (benchmarks/bench_trace.py)."""
    if products < 3:
        raise UsageError(f"Hutch++ needs at least 3 products (a third sketch, a third exact, a third sampled), got "
                         f"{products}: raise trace_samples, or use the hutchinson trace method")
    generator = torch.Generator().manual_seed(seed + 1)
    k = min(products // 3, operator.size)
    sketch = torch.stack([operator(rademacher(operator.size, generator, operator.device)) for _ in range(k)])
    basis = torch.linalg.qr(sketch.T).Q.T  # [k, P] orthonormal rows spanning H S
    exact = sum(torch.dot(q, operator(q)) for q in basis)
    if k == operator.size:  # the sketch spans every direction: the trace is exact, nothing is left to sample
        return float(exact), 0.0
    rest = []
    for _ in range(products - 2 * k):
        v = rademacher(operator.size, generator, operator.device)
        v = v - basis.T @ (basis @ v)
        rest.append(torch.dot(v, operator(v)))
    mean, stderr = mean_and_stderr(rest)
    return float(exact) + mean, stderr


def estimate_trace(operator: HessianOperator, products: int, method: str, seed: int = 0) -> tuple[float, float]:
    """The trace by `method` (hutch++ or hutchinson) from `products` products, and its standard error."""
    choose("trace_method", method, TRACE_METHODS)
    return (hutchpp_trace if method == "hutch++" else hutchinson_trace)(operator, products, seed)


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


@dataclass
class SpectrumOptions:
    """What to measure of one Hessian, and how (the keyword arguments of `hessian`, the options of the command)."""

    top_k: int = 5
    tol: float = 1e-3
    max_steps: int = 80
    trace: bool = False
    trace_samples: int = 100
    density: bool = False
    density_probes: int = 1
    density_steps: int = 80
    seed: int = 0
    trace_method: str = "hutch++"

    def validate(self, dash: str = "") -> "SpectrumOptions":
        """Check every value; options are named with `dash` ("--" on the command line) and dashes or underscores."""
        def name(option: str) -> str:
            return dash + (option.replace("_", "-") if dash else option)

        for option in ("top_k", "max_steps", "trace_samples", "density_probes", "density_steps"):
            positive(name(option), getattr(self, option))
        if self.top_k > self.max_steps:
            raise UsageError(f"{name('top_k')} {self.top_k} needs at least as many {name('max_steps')} "
                             f"(got {self.max_steps})")
        in_range(name("tol"), self.tol, 0, 1, low_open=True)
        check_seed(name("seed"), self.seed)
        choose(name("trace_method"), self.trace_method, TRACE_METHODS)
        if self.trace and self.trace_method == "hutch++" and self.trace_samples < 3:
            raise UsageError(f"{name('trace_samples')} {self.trace_samples}: Hutch++ needs at least 3 products; give "
                             f"3 or more, or {name('trace_method')} hutchinson")
        return self


@dataclass
class Spectrum:
    """One Hessian's measurements (numpy): what `hessian(...)` returns; `.save(path)` writes a Hessian file."""

    eigenvalues: np.ndarray  # [k] descending
    residuals: np.ndarray  # [k] Ritz residual norms
    error_bounds: np.ndarray  # [k] min(r, r^2 / gap)
    converged: np.ndarray  # [k] bool: error bound within tol x |eigenvalue|
    lanczos_steps: int
    eigen_hvps: int
    trace: float = float("nan")
    trace_stderr: float = float("nan")
    trace_hvps: int = 0
    density_nodes: np.ndarray | None = None  # [probes, steps]
    density_weights: np.ndarray | None = None
    density_grid: np.ndarray | None = None  # [1000]
    density: np.ndarray | None = None  # [1000], the smoothed density on density_grid
    density_hvps: int = 0
    seconds: float = 0.0
    parameters: int = 0  # how many parameters the Hessian is over
    attrs: dict = field(default_factory=dict)

    @property
    def hvps(self) -> int:
        return self.eigen_hvps + self.trace_hvps + self.density_hvps

    def save(self, path) -> "object":
        """Write this spectrum as a Hessian file (one run, one snapshot); return the path."""
        from pathlib import Path

        from landscape.files.hessian_file import hessian_result, write_hessian

        result = hessian_result(Path(path), self.attrs, [float("nan")], [0], [-1], self.eigenvalues.shape[0],
                                trace=self.trace_hvps > 0,
                                density=self.density_nodes.shape if self.density_nodes is not None else None)
        result.put(0, 0, self)
        result.attrs["status"] = "complete"
        write_hessian(result)
        return result.path


def measure(operator: HessianOperator, options: SpectrumOptions) -> Spectrum:
    """Top eigenvalues, and the trace and density if asked, of one operator; each one's products counted."""
    started = time.perf_counter()
    check_basis_fits(options.max_steps, operator.size, operator.device, "max_steps")
    eigen = top_eigenvalues(operator, options.top_k, max_steps=options.max_steps, tol=options.tol, seed=options.seed)
    counted = operator.products
    spectrum = Spectrum(eigen.values, eigen.residuals, eigen.bounds, eigen.converged, eigen.steps, counted,
                        parameters=operator.size)
    if options.trace:
        check_basis_fits(2 * (options.trace_samples // 3), operator.size, operator.device, "trace_samples")
        spectrum.trace, spectrum.trace_stderr = estimate_trace(operator, options.trace_samples, options.trace_method,
                                                               options.seed)
        spectrum.trace_hvps, counted = operator.products - counted, operator.products
    if options.density:
        check_basis_fits(options.density_steps, operator.size, operator.device, "density_steps")
        nodes, weights = spectral_density(operator, options.density_probes, options.density_steps, options.seed)
        spectrum.density_nodes, spectrum.density_weights = nodes, weights
        spectrum.density_grid, spectrum.density = smoothed_density(nodes, weights)
        spectrum.density_hvps = operator.products - counted
    spectrum.seconds = time.perf_counter() - started
    return spectrum


@dataclass
class HessianTask:
    """One measurement, picklable for a worker: the module skeleton, its weights, batches and what to measure.

    `device` "auto" is the worker's own: its GPU if it has one, else the CPU."""

    module: nn.Module
    params: Params
    buffers: Params
    batches: BatchSet
    objective: Objective
    options: SpectrumOptions
    hvp: str = "auto"
    wrt: list[str] | None = None
    device: str = "auto"

    def check(self, what: str = "the model") -> None:
        """Before any work: one forward on the first batch (one line if the model cannot take the data), and the
        Lanczos bases must fit in memory."""
        size = sum(p.numel() for n, p in self.params.items() if self.wrt is None or n in self.wrt)
        device = next(iter(self.params.values())).device
        check_basis_fits(self.options.max_steps, size, device, "max_steps")
        if self.options.trace and self.options.trace_method == "hutch++":
            check_basis_fits(2 * (self.options.trace_samples // 3), size, device, "trace_samples")
        if self.options.density:
            check_basis_fits(self.options.density_steps, size, device, "density_steps")
        check_forward(self.module, self.params, self.buffers, next(iter(self.batches)), self.objective, what)

    def __call__(self, on_product: Callable[[], None] | None = None) -> Spectrum:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if self.device == "auto" \
            else torch.device(self.device)
        operator = HessianOperator(self.module, {n: p.to(device) for n, p in self.params.items()},
                                   {n: b.to(device) for n, b in self.buffers.items()}, self.batches.to(device),
                                   self.objective, self.hvp, wrt=self.wrt, on_product=on_product)
        return measure(operator, self.options)


def products_planned(options: SpectrumOptions) -> int:
    """Hessian-vector products a measurement takes at most (what a progress bar counts)."""
    return options.max_steps + (options.trace_samples if options.trace else 0) + \
        (options.density_probes * options.density_steps if options.density else 0)


@with_threads
def hessian(model: nn.Module, data, *, loss=None, closure=None, params=None, top_k: int = 5, tol: float = 1e-3,
            max_steps: int = 80, trace: bool = False, trace_samples: int = 100, trace_method: str = "hutch++",
            density: bool = False, density_probes: int = 1, density_steps: int = 80, bn: str = "train",
            hvp: str = "auto", seed: int = 0, device=None, images: int | None = None, batch_size: int | None = None,
            executor=None, progress: bool = False, threads: int | None = None) -> Spectrum:
    """The Hessian of the mean loss of `model` on `data`: top-k eigenvalues (Lanczos), and optionally the trace
    (`trace_samples` products of Hutch++, or of Hutchinson) and the spectral density (stochastic Lanczos
    quadrature).

    `params`: all parameters (None), a name pattern ('layer4.*'), a list of patterns or a predicate of the name:
    the Hessian of that block, the others held fixed. `data`, `loss`, `closure` as for `surface`; `bn`: train
    (batch statistics, the loss that was trained) or eval (running statistics). The model is never changed.
    Returns a `Spectrum` (numpy `.eigenvalues`, `.converged`, `.trace`, `.density_grid`, `.density`, ...).
    """
    from landscape.engine.devices import resolve_device
    from landscape.progress import bar

    check_module(model)
    choose("bn", bn, ("train", "eval"))
    options = SpectrumOptions(top_k, tol, max_steps, trace, trace_samples, density, density_probes, density_steps,
                              seed, trace_method).validate()
    device = resolve_device(device, "device", default=next(model.parameters()).device)
    objective = Objective(loss=loss, closure=closure, metrics={})
    module = prepared_module(model, bn)
    weights, buffers = state_of(model, device)
    check_finite(weights, "the model")
    wrt = select_parameters(weights, params)
    batches = batch_set(data, device=device, objective=objective, images=images, batch_size=batch_size)
    task = HessianTask(module, weights, module_buffers(module, buffers), batches, objective, options, hvp, wrt,
                       str(device) if executor is None else "auto")
    task.check()
    if executor is not None:
        found: list[Spectrum] = []
        executor.run_tasks([task], lambda index, spectrum: found.append(spectrum), lambda: False)
        spectrum = found[0]
    else:
        products = bar(products_planned(options), "hessian", "HVP", progress)
        spectrum = task(on_product=lambda: products.update(1))
        products.close()
    spectrum.attrs.update({"source": "python", "model": type(model).__name__, "bn": bn,
                           "hvp": DEFAULT_HVP if hvp == "auto" else hvp, "images": batches.samples,
                           "params": ",".join(wrt) if params is not None else "all",
                           "options": json.dumps({**asdict(options), "bn": bn, "hvp": hvp,
                                                               "params": params if isinstance(params, (str, list))
                                                               else ("predicate" if params else None)}),
                           **({"trace_method": trace_method, "trace_products": trace_samples} if trace else {}),
                           "device": str(device), "torch_version": torch.__version__,
                           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return spectrum
