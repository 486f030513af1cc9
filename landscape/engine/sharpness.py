"""Sharpness during training: the top Hessian eigenvalues of every run every K steps, by Lanczos.

Cohen et al. (ICLR 2021) track sharpness, the top eigenvalue of the training-loss Hessian. Each measurement
runs `steps` Lanczos steps from a random start seeded by (seed, step). With `warm`, a run's measurement starts
instead from the sum of its previous top k + 1 Ritz vectors (one beyond k, so an eigenvalue rising towards the
top is already in the start) plus a fresh random component, and its first measurement is cold (`cold_steps`):
that pays where the top eigenvectors turn little between measurements; measured on VGG-A with BatchNorm under
SGD they turn almost completely within 10 to 100 steps, and the warm start was no better than a cold one of
as many products (benchmarks/bench_sharpness.py), so it is off by default. Every `check_every`-th measurement
also runs a cold Lanczos to convergence on the same weights, the truth the estimate is held to (stored beside
it; that one waits for the device to test convergence).

Nothing of training is touched: weights are read, not written; the random stream used is a generator of
its own; BatchNorm uses batch statistics without updating running ones; dropout is off. The fixed-step
measurements never wait for the device. The warm start vectors are the tracker's state, saved in the
run's checkpoint, so a resumed run measures exactly as an uninterrupted one.
"""
from __future__ import annotations

import torch

from landscape.engine.batches import BatchSet, Objective
from landscape.engine.curvature import DEFAULT_HVP, HessianOperator, lanczos, top_eigenvalues
from landscape.engine.functional import module_buffers, prepared_module
from landscape.errors import UsageError
from landscape.options import check_sharpness_options

WARM_NOISE = 0.1  # share of the start vector's norm that is fresh random direction
CHECK_TOL = 1e-4  # relative error bound of the converged check
CHECK_MAX_STEPS = 100


def eigh_without_sync(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigen-decomposition of a small symmetric matrix without the host-side error check of `torch.linalg.eigh`
    (which waits for a CUDA device); on the CPU the two are the same."""
    if matrix.device.type == "cuda" and hasattr(torch, "_linalg_eigh"):
        values, vectors = torch._linalg_eigh(matrix, "L", True)
        return values, vectors
    return torch.linalg.eigh(matrix)


def tridiagonal(alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    t = torch.diag(alpha)
    if alpha.shape[0] > 1:
        t = t + torch.diag(beta, 1) + torch.diag(beta, -1)
    return t


def random_vector(size: int, seed: int, device: torch.device) -> torch.Tensor:
    """A Gaussian vector drawn on `device` from a generator of its own (no host copy, no host sync)."""
    generator = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(size, generator=generator, dtype=torch.float64, device=device)


class SharpnessTracker:
    """Every run's top-k Hessian eigenvalues at chosen steps (see the module docstring).

    `batches`: the fixed samples measured on, or None to measure on each step's own batch (`measure(batch=)`).
    """

    def __init__(self, batches: BatchSet | None, *, top_k: int, steps: int, cold_steps: int = 20, seed: int = 0,
                 warm: bool = False, check_every: int = 0, objective: Objective | None = None,
                 images: int | str = 0):
        check_sharpness_options(top_k, steps, cold_steps, check_every)
        self.batches = batches.fixed() if batches is not None else None
        self.sizes = batches.sizes if batches is not None else None
        self.top_k, self.steps, self.cold_steps, self.seed = top_k, steps, cold_steps, seed
        self.warm, self.check_every = warm, check_every
        self.objective = objective or Objective()
        self.module = None
        self.starts: dict[int, torch.Tensor] = {}  # run -> the next measurement's warm start (without its noise)
        self.measurements = 0
        start = ("warm-started from the previous top k + 1 Ritz vectors plus 10% fresh random" if warm
                 else "cold, from a random vector")
        self.attrs = {"top_k": top_k, "images": images, "iterations": steps, "cold_iterations": cold_steps,
                      "warm_start": int(warm), "check_every": check_every, "bn": "train", "seed": seed,
                      "method": f"Lanczos, full reorthogonalisation, fixed steps ({start}), {DEFAULT_HVP} HVPs"}

    def operator(self, module, params, buffers, batch=None) -> HessianOperator:
        if self.module is None:
            self.module = prepared_module(module, "train")
        if batch is not None:
            batches = BatchSet([batch])
        elif self.batches is not None:
            batches = BatchSet(self.batches, self.sizes)
        else:
            raise UsageError("sharpness on the step's own batch needs the batch: pass it to measure()")
        return HessianOperator(self.module, params, module_buffers(self.module, buffers), batches, self.objective)

    def measure_one(self, run: int, module, params, buffers, step: int, batch=None) -> tuple[torch.Tensor, int]:
        """[k] top eigenvalues (descending, on the device) of one run now, and the products used."""
        operator = self.operator(module, params, buffers, batch)
        noise = random_vector(operator.size, self.seed * 1_000_003 + step, operator.device)
        previous = self.starts.get(run) if self.warm else None
        if previous is not None:
            start, steps = previous + WARM_NOISE * noise / noise.norm(), self.steps
        else:  # cold: every measurement, or a warm-started run's first
            start, steps = noise, self.cold_steps if self.warm else self.steps
        result = lanczos(operator, start, steps, sync=False)
        values, vectors = eigh_without_sync(tridiagonal(result.alpha, result.beta))
        keep = min(self.top_k + 1, values.shape[0])
        ritz = result.basis.T @ vectors[:, -keep:]  # [P, keep], the top k + 1 Ritz vectors
        self.starts[run] = ritz.sum(dim=1) / ritz.sum(dim=1).norm()
        top = values.flip(0)[:self.top_k]
        if top.shape[0] < self.top_k:
            top = torch.cat([top, top.new_full((self.top_k - top.shape[0],), float("nan"))])
        return top, operator.products

    def check_one(self, module, params, buffers, step: int, batch=None) -> torch.Tensor:
        """[k] the converged top eigenvalues from a cold start (waits for the device)."""
        operator = self.operator(module, params, buffers, batch)
        eigen = top_eigenvalues(operator, self.top_k, max_steps=CHECK_MAX_STEPS, tol=CHECK_TOL,
                                seed=self.seed * 7_919 + step)
        return torch.as_tensor(eigen.values, dtype=torch.float64, device=operator.device)

    def due_check(self) -> bool:
        """Whether the measurement about to be made is also checked."""
        return bool(self.check_every) and self.measurements % self.check_every == 0

    def measure(self, runs, step: int, batch=None) -> dict[str, torch.Tensor]:
        """Every run's measurement at `step` (an engine with `run_module` and `active`): 'top' [R, k], 'hvps' [R],
        and with a check due, 'check' [R, k]; NaN rows for runs that stopped."""
        checked = self.due_check()
        self.measurements += 1
        device = None
        tops, hvps, checks = [], [], []
        for run in range(len(runs)):
            module, params, buffers = runs.run_module(run)
            device = next(iter(params.values())).device
            if not runs.active[run]:
                tops.append(torch.full((self.top_k,), float("nan"), dtype=torch.float64, device=device))
                hvps.append(0)
                checks.append(tops[-1])
                continue
            top, products = self.measure_one(run, module, params, buffers, step, batch)
            tops.append(top)
            hvps.append(products)
            if checked:
                checks.append(self.check_one(module, params, buffers, step, batch))
        out = {"top": torch.stack(tops), "hvps": torch.tensor(hvps, dtype=torch.int64)}
        if checked:
            out["check"] = torch.stack(checks)
        return out

    def state_dict(self) -> dict:
        """What a resumed run needs to measure on identically: the warm starts and the count of measurements."""
        return {"starts": {int(k): v.detach().cpu() for k, v in self.starts.items()}, "measurements": self.measurements}

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        self.starts = {int(k): v.to(device) for k, v in state.get("starts", {}).items()}
        self.measurements = int(state.get("measurements", 0))
