"""Curvature of any model's loss: top eigenvalues, trace and spectral density of a curvature operator.

The operators (`engine.operators`: the Hessian, the generalized Gauss-Newton matrix, the empirical Fisher) give
v -> M v for the mean loss over a fixed set of batches. On top, in float64 on the device:
- `top_eigenvalues`: the k largest (algebraic) eigenvalues by Lanczos with full reorthogonalisation (twice,
  "twice is enough"), stopped when every error bound min(r, r^2/gap) is within tol and stays so over a quarter
  more products with the same values (`Confirmation`); its basis holds max(20, 4k) vectors (or what fits in half
  the available memory, or `basis_vectors`), thick-restarted when full: memory independent of the steps;
- `trace_after`: the trace from a budget of products (`engine.trace`), by default Krylov-deflated: the top
  eigenvalues' Lanczos basis V is reused (tr(V'MV) is known from its projected matrix, so every product goes to
  Hutchinson on the rest; as accurate with 10 products as a fresh Hutch++ sketch with 30, benchmarks/bench_trace.py);
  or XTrace, Hutch++ or Hutchinson from fresh products; each with its standard error;
- `spectral_density`: stochastic Lanczos quadrature (Ghorbani et al. 2019): per probe vector, the Ritz
  values and the squared first components of their eigenvectors (weights summing to one); reorthogonalised
  while the basis fits, else by the three-term recurrence alone.
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
from landscape.engine.batches import BatchSet, Objective, batch_set
from landscape.engine.devices import with_threads
from landscape.engine.functional import (Params, check_finite, check_forward, check_module, module_buffers,
                                         prepared_module, state_of)
from landscape.engine.memory import available_bytes
from landscape.engine.operators import DEFAULT_HVP, OPERATORS, CurvatureOperator, curvature_operator
from landscape.engine.trace import (DEFAULT_TRACE_METHOD, TRACE_METHODS, deflated_trace, estimate_trace,
                                    trace_vectors)
from landscape.errors import UsageError
from landscape.options import check_seed, choose, in_range, positive

BASIS_MEMORY_SHARE = 0.5  # the Lanczos basis may take at most this share of the device's free memory
DEFAULT_BASIS_VECTORS = 20  # the basis holds max(this, 4k) vectors unless told otherwise: on ResNet-18 (11M
                            # parameters) as accurate as 80 in as many products, at 3.2 GiB instead of 8.1
MAX_BASIS_VECTORS = 400  # beyond this many steps the basis is thick-restarted whatever the memory (the projected
                         # matrix and its eigendecomposition at every step grow with its square and cube)


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


def lanczos(matvec: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor, steps: int, sync: bool = True,
            reorthogonalise: bool = True) -> Lanczos:
    """Lanczos from `start` for at most `steps` steps, the basis fully reorthogonalised (twice) and kept.

    With `sync`, it stops early on an invariant subspace (beta ~ 0); without, it runs exactly `steps` steps and
    never waits for the device. Without `reorthogonalise`, only the three-term recurrence runs and two vectors are
    held (the basis is not kept): the tridiagonal then still gives the quadrature of stochastic Lanczos quadrature
    (the lost orthogonality adds copies of converged Ritz values, whose weights share their eigenvalue's; Paige,
    Meurant & Strakos), not eigenvectors."""
    size = start.shape[0]
    steps = min(steps, size)
    basis = torch.zeros(steps if reorthogonalise else 2, size, dtype=torch.float64, device=start.device)
    alphas: list[torch.Tensor] = []
    betas: list[torch.Tensor] = []
    q = start / start.norm()
    beta = torch.zeros((), dtype=torch.float64, device=start.device)
    scale = 0.0
    for j in range(steps):
        row = j if reorthogonalise else j % 2
        basis[row] = q
        w = matvec(q)
        alpha = torch.dot(w, q)
        w = w - alpha * q - (beta * basis[row - 1] if j else 0)
        if reorthogonalise:
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
        betas.append(beta)
        q = w / beta.clamp(min=1e-300)
    m = len(alphas)
    return Lanczos(torch.stack(alphas), torch.stack(betas[:m - 1]) if m > 1 else beta.new_zeros(0),
                   basis[:m] if reorthogonalise else basis[:0], beta)


@dataclass
class Eigen:
    """Top eigenvalues (descending), their error bounds and residuals, whether each met the tolerance, the products
    taken, how many vectors the basis held and how often it restarted, and optionally the Ritz vectors [k, P]."""

    values: np.ndarray
    residuals: np.ndarray
    bounds: np.ndarray
    converged: np.ndarray
    steps: int
    vectors: torch.Tensor | None = None
    basis: int = 0
    restarts: int = 0
    krylov: torch.Tensor | None = None  # with keep_basis: the final orthonormal basis V [m, P] (a view)
    krylov_trace: float = float("nan")  # tr(V'MV), known from the projected matrix without a product


MIN_CONFIRM_STEPS = 5


class Confirmation:
    """The stopping rule: every error bound within tol (min(r, r^2/gap), Parlett 11.7) is necessary but not enough,
    since an eigenvalue the Krylov space has not yet reached makes the gaps look wide and can leave a Ritz value
    standing for the wrong eigenvalue. So the bounds must hold again after a quarter more products (at least
    MIN_CONFIRM_STEPS), with the same top-k values to within tol; a change (an eigenvalue arrived) starts over."""

    def __init__(self, k: int, tol: float):
        self.k, self.tol = k, tol
        self.first: tuple[int, torch.Tensor] | None = None

    def done(self, products: int, values: torch.Tensor, bounds_met: bool) -> bool:
        top = values[-self.k:]
        if not bounds_met:
            self.first = None
            return False
        if self.first is None:
            self.first = (products, top)
            return False
        since, earlier = self.first
        if ((top - earlier).abs() > self.tol * top.abs().clamp(min=1e-12)).any():
            self.first = (products, top)  # the top moved: an eigenvalue arrived; confirm anew
            return False
        return products >= since + max(MIN_CONFIRM_STEPS, since // 4)


def basis_capacity(k: int, max_steps: int, size: int, device: torch.device, basis_vectors: int | None = None,
                   option: str = "max_steps") -> int:
    """How many vectors the Lanczos basis holds: `basis_vectors`, or by default max(DEFAULT_BASIS_VECTORS, 4k), at
    most `max_steps` and what fits in half the available memory (a thick restart keeps the top Ritz vectors when it
    is full); UsageError when not even k + 4 fit."""
    need = min(max_steps, size)
    fit = int(BASIS_MEMORY_SHARE * available_bytes(device) // (size * 8))
    capacity = min(need, fit, basis_vectors or max(DEFAULT_BASIS_VECTORS, 4 * k), MAX_BASIS_VECTORS)
    least = min(k + 4, need)
    if capacity < least:
        raise UsageError(f"{option} {max_steps:,}: even a restarted Lanczos needs {least} vectors of {size:,} "
                         f"parameters ({least * size * 8 / 2 ** 30:,.1f} GiB), more than half of the "
                         f"{available_bytes(device) / 2 ** 30:,.1f} GiB available on {device.type}"
                         + (f" (or than basis_vectors {basis_vectors})" if basis_vectors and basis_vectors < least
                            else "") + ": measure a block of parameters (params) or fewer top eigenvalues")
    return capacity


def check_basis_fits(steps: int, size: int, device: torch.device, option: str = "max_steps") -> None:
    """Refuse a run that must hold `steps` float64 vectors (Hutch++'s sketch) when they cannot be held."""
    need, have = steps * size * 8, available_bytes(device)
    if need > BASIS_MEMORY_SHARE * have:
        most = max(1, int(BASIS_MEMORY_SHARE * have // (size * 8)))
        raise UsageError(f"{option} {steps:,}: {steps:,} vectors of {size:,} parameters would take "
                         f"{need / 2 ** 30:,.1f} GiB, more than half of the {have / 2 ** 30:,.1f} GiB available on "
                         f"{device.type}: give at most {most:,}")


def combine_rows(basis: torch.Tensor, rows: int, coefficients: torch.Tensor, chunk: int = 1 << 20) -> None:
    """basis[:c] = coefficients' @ basis[:rows] in place (coefficients [rows, c]), a slab of columns at a time, so
    no second basis is ever held."""
    for start in range(0, basis.shape[1], chunk):
        slab = basis[:rows, start:start + chunk]
        basis[:coefficients.shape[1], start:start + chunk] = coefficients.T @ slab


def top_eigenvalues(operator: CurvatureOperator, k: int, *, max_steps: int = 80, tol: float = 1e-3, seed: int = 0,
                    vectors: bool = False, start: torch.Tensor | None = None,
                    basis_vectors: int | None = None, keep_basis: bool = False) -> Eigen:
    """The k largest eigenvalues of the operator by Lanczos with full reorthogonalisation, at most `max_steps`
    products, stopped by the confirmed error-bound rule (`Confirmation`).

    The basis holds `basis_capacity(...)` vectors; when it is full, a thick restart (Wu & Simon 2000) keeps the top
    Ritz vectors (half the basis, at least k + 1) and continues from the residual, so memory is capacity x
    parameters x 8 bytes whatever the step count (plain Lanczos when the steps fit). With `keep_basis` the final
    basis and the trace of its projection V'MV come back too (what `deflated_trace` reuses)."""
    size = operator.size
    capacity = basis_capacity(k, max_steps, size, operator.device, basis_vectors)
    steps = min(max_steps, size)
    keep = min(capacity - 2, max(k + 1, capacity // 2))
    if start is None:
        generator = torch.Generator().manual_seed(seed)
        start = torch.randn(size, generator=generator, dtype=torch.float64).to(operator.device)
    basis = torch.zeros(capacity, size, dtype=torch.float64, device=operator.device)
    projected = torch.zeros(capacity, capacity, dtype=torch.float64, device=operator.device)
    basis[0] = start / start.norm()
    confirmation = Confirmation(k, tol)
    column, restarts, scale = 0, 0, 0.0
    beta = torch.zeros((), dtype=torch.float64, device=operator.device)
    for products in range(1, steps + 1):
        w = operator(basis[column])
        coefficients = torch.zeros(column + 1, dtype=torch.float64, device=operator.device)
        for _ in range(2):  # full reorthogonalisation, twice ("twice is enough")
            h = basis[:column + 1] @ w
            w = w - basis[:column + 1].T @ h
            coefficients += h
        projected[column, :column + 1] = coefficients
        projected[:column + 1, column] = coefficients
        beta = w.norm()
        used = column + 1
        values, ritz = torch.linalg.eigh(projected[:used, :used])
        scale = max(scale, float(values.abs().max()))
        if float(beta) <= 1e-10 * max(scale, 1e-300) or used == size:
            break  # the Krylov space is invariant: its Ritz values are exact eigenvalues
        top = min(k, used)
        met = used > k and bool((error_bound(values, ritz, beta, top) <= tol * values[-top:].abs().clamp(min=1e-12)).all())
        if confirmation.done(products, values, met) or products == steps:
            break
        if used == capacity:  # full: keep the top Ritz vectors, continue from the residual
            combine_rows(basis, used, ritz[:, -keep:])
            projected.zero_()
            projected[:keep, :keep] = torch.diag(values[-keep:])
            column, restarts = keep, restarts + 1
        else:
            column = used
        basis[column] = w / beta
    values, ritz = torch.linalg.eigh(projected[:used, :used])
    top = min(k, used)
    residual = (beta * ritz[-1, -top:]).abs()
    bound = error_bound(values, ritz, beta, top)
    converged = bound <= tol * values[-top:].abs().clamp(min=1e-12)
    order = torch.arange(used - 1, used - 1 - top, -1, device=values.device)
    eigvecs = (basis[:used].T @ ritz[:, order]).T if vectors else None
    eigen = Eigen(values[order].cpu().numpy(), residual.flip(0).cpu().numpy(), bound.flip(0).cpu().numpy(),
                  converged.flip(0).cpu().numpy(), products, eigvecs, capacity, restarts)
    if keep_basis:
        eigen.krylov, eigen.krylov_trace = basis[:used], float(values.sum())
    return eigen


def trace_after(eigen: Eigen, operator: CurvatureOperator, products: int, method: str,
                seed: int = 0) -> tuple[float, float]:
    """The trace and its standard error from `products` more products, after `eigen` (a `top_eigenvalues(...,
    keep_basis=True)` of the same operator when `method` is krylov: its basis deflates the Hutchinson part)."""
    if method != "krylov":
        check_basis_fits(trace_vectors(method, products), operator.size, operator.device, "trace_samples")
        return estimate_trace(operator, products, method, seed)
    return deflated_trace(operator, eigen.krylov, eigen.krylov_trace, products, seed)


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


def spectral_density(operator: CurvatureOperator, probes: int, steps: int, seed: int = 0,
                     reorthogonalise: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Stochastic Lanczos quadrature: nodes and weights [probes, steps] (weights of each probe sum to one;
    a probe whose Lanczos stopped early has NaN nodes and zero weights in its unused slots). Without
    `reorthogonalise` each probe holds two vectors instead of `steps` (see `lanczos`)."""
    generator = torch.Generator().manual_seed(seed + 2)
    nodes = np.full((probes, steps), np.nan)
    weights = np.zeros((probes, steps))
    for i in range(probes):
        start = torch.randn(operator.size, generator=generator, dtype=torch.float64).to(operator.device)
        values, vectors = lanczos(operator, start, steps, reorthogonalise=reorthogonalise).ritz()
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
    trace_method: str = DEFAULT_TRACE_METHOD
    operator: str = "hessian"
    basis_vectors: int = 0  # 0: max(20, 4 top_k), or what fits in half the available memory; restarted when full

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
        choose(name("operator"), self.operator, OPERATORS)
        if self.basis_vectors and self.basis_vectors < min(self.top_k + 4, self.max_steps):
            raise UsageError(f"{name('basis_vectors')} {self.basis_vectors}: a restarted Lanczos for {self.top_k} "
                             f"eigenvalue(s) needs at least {self.top_k + 4} vectors; give more, or 0 (automatic)")
        least = {"hutch++": 3, "xtrace": 4}.get(self.trace_method, 1)
        if self.trace and self.trace_samples < least:
            raise UsageError(f"{name('trace_samples')} {self.trace_samples}: {self.trace_method} needs at least "
                             f"{least} products; give {least} or more, or {name('trace_method')} krylov")
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
    parameters: int = 0  # how many parameters the matrix is over
    basis_vectors: int = 0  # vectors the Lanczos basis held (fewer than lanczos_steps: restarted)
    restarts: int = 0  # thick restarts of the basis
    density_reorthogonalised: bool = True  # False: the density's basis did not fit; three-term recurrence only
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


def density_fits(options: SpectrumOptions, size: int, device: torch.device) -> bool:
    """Whether the density's Lanczos basis (density_steps vectors) fits in half the available memory."""
    return min(options.density_steps, size) * size * 8 <= BASIS_MEMORY_SHARE * available_bytes(device)


def measure(operator: CurvatureOperator, options: SpectrumOptions) -> Spectrum:
    """Top eigenvalues, and the trace and density if asked, of one operator; each one's products counted."""
    started = time.perf_counter()
    eigen = top_eigenvalues(operator, options.top_k, max_steps=options.max_steps, tol=options.tol, seed=options.seed,
                            basis_vectors=options.basis_vectors or None,
                            keep_basis=options.trace and options.trace_method == "krylov")
    counted = operator.products
    spectrum = Spectrum(eigen.values, eigen.residuals, eigen.bounds, eigen.converged, eigen.steps, counted,
                        parameters=operator.size, basis_vectors=eigen.basis, restarts=eigen.restarts)
    if options.trace:
        spectrum.trace, spectrum.trace_stderr = trace_after(eigen, operator, options.trace_samples,
                                                            options.trace_method, options.seed)
        spectrum.trace_hvps, counted = operator.products - counted, operator.products
    del eigen  # the Lanczos basis, before the density's
    if options.density:
        spectrum.density_reorthogonalised = density_fits(options, operator.size, operator.device)
        nodes, weights = spectral_density(operator, options.density_probes, options.density_steps, options.seed,
                                          spectrum.density_reorthogonalised)
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
        """Before any work: one forward on the first batch (one line if the model cannot take the data), the
        operator's own conditions (see `engine.operators`), and the least Lanczos basis must fit in memory."""
        size = sum(p.numel() for n, p in self.params.items() if self.wrt is None or n in self.wrt)
        device = next(iter(self.params.values())).device
        basis_capacity(self.options.top_k, self.options.max_steps, size, device, self.options.basis_vectors or None)
        if self.options.density and self.options.density_steps > size:
            raise UsageError(f"density_steps {self.options.density_steps:,}: Lanczos takes at most as many steps as "
                             f"the {size:,} parameters measured; give at most {size:,} (the default 80 is plenty for "
                             f"a density)")
        if self.options.trace:
            check_basis_fits(trace_vectors(self.options.trace_method, self.options.trace_samples), size, device,
                             "trace_samples")
        first = next(iter(self.batches))
        check_forward(self.module, self.params, self.buffers, first, self.objective, what)
        self.operator(device, BatchSet([first]))

    def operator(self, device: torch.device, batches: BatchSet,
                 on_product: Callable[[], None] | None = None) -> CurvatureOperator:
        return curvature_operator(self.options.operator, self.module,
                                  {n: p.to(device) for n, p in self.params.items()},
                                  {n: b.to(device) for n, b in self.buffers.items()}, batches, self.objective,
                                  hvp=self.hvp, wrt=self.wrt, on_product=on_product)

    def __call__(self, on_product: Callable[[], None] | None = None) -> Spectrum:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if self.device == "auto" \
            else torch.device(self.device)
        return measure(self.operator(device, self.batches.to(device), on_product), self.options)


def products_planned(options: SpectrumOptions) -> int:
    """Hessian-vector products a measurement takes at most (what a progress bar counts)."""
    return options.max_steps + (options.trace_samples if options.trace else 0) + \
        (options.density_probes * options.density_steps if options.density else 0)


def density_note(spectrum: Spectrum) -> str:
    """How the density's Lanczos was orthogonalised, as a file attribute says it."""
    return "full" if spectrum.density_reorthogonalised else \
        "none: three-term recurrence only (the basis would not fit in memory)"


@with_threads
def hessian(model: nn.Module, data, *, loss=None, closure=None, params=None, top_k: int = 5, tol: float = 1e-3,
            max_steps: int = 80, trace: bool = False, trace_samples: int = 100,
            trace_method: str = DEFAULT_TRACE_METHOD, density: bool = False, density_probes: int = 1,
            density_steps: int = 80, bn: str = "train",
            hvp: str = "auto", seed: int = 0, device=None, images: int | None = None, batch_size: int | None = None,
            executor=None, progress: bool = False, threads: int | None = None, operator: str = "hessian",
            basis_vectors: int = 0) -> Spectrum:
    """The Hessian (or `operator` "ggn": the generalized Gauss-Newton matrix, "fisher": the empirical Fisher) of
    the mean loss of `model` on `data`: top-k eigenvalues (Lanczos), and optionally the trace (`trace_samples`
    more products: `trace_method` krylov, Hutchinson deflated by the Lanczos basis; or xtrace, hutch++, hutchinson)
    and the spectral density (stochastic Lanczos quadrature).
    `basis_vectors` sets the vectors the Lanczos basis holds (0: max(20, 4 top_k), or what fits in half the
    available memory); below the steps taken the basis is thick-restarted.

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
                              seed, trace_method, operator, basis_vectors).validate()
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
    spectrum.attrs.update({"source": "python", "model": type(model).__name__, "bn": bn, "operator": operator,
                           "hvp": DEFAULT_HVP if hvp == "auto" else hvp, "images": batches.samples,
                           "params": ",".join(wrt) if params is not None else "all",
                           "options": json.dumps({**asdict(options), "bn": bn, "hvp": hvp,
                                                               "params": params if isinstance(params, (str, list))
                                                               else ("predicate" if params else None)}),
                           **({"trace_method": trace_method, "trace_products": trace_samples} if trace else {}),
                           **({"density_reorthogonalisation": density_note(spectrum)} if density else {}),
                           "device": str(device), "torch_version": torch.__version__,
                           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return spectrum
