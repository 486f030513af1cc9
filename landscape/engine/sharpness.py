"""Sharpness during training, every K steps, by one of three methods (`method`):

- `lanczos`: the top-k Hessian eigenvalues of every run (Cohen et al., ICLR 2021), from `steps` Lanczos steps
  from a random start seeded by (seed, step). With `warm`, a run's measurement starts instead from the sum of its
  previous top k + 1 Ritz vectors plus a fresh random component (its first measurement cold, `cold_steps`):
  measured on VGG-A with BatchNorm under SGD the top eigenvectors turn almost completely within 10 to 100 steps
  and the warm start was no better than a cold one of as many products (benchmarks/bench_sharpness.py), so it
  is off by default;
- `critical`: critical sharpness (Kalra et al. 2026): along the update d the optimizer took, the largest step
  multiplier s_c before the loss rises above its value at the pre-step weights, found by bisection in log2(s)
  over [2^-SEARCH_OCTAVES, 2^SEARCH_OCTAVES] (1 + SEARCH_STEPS forward passes, no host sync); reported as
  2 / (s_c lr), the curvature a quadratic would need for that crossing, so it meets the 2/lr threshold exactly
  when the step taken is critical (s_c = 1). A search whose bracket holds no crossing records NaN;
- `directional`: d'Hd / ||d||^2, the curvature along the update, from one Hessian-vector product.
Every `check_every`-th measurement also runs a cold Lanczos to convergence on the same weights, the truth the
estimate is held to (stored beside it; that one waits for the device to test convergence).

Nothing of training is touched: weights are read, not written; the random stream used is a generator of
its own; BatchNorm uses batch statistics without updating running ones; dropout is off. The fixed-step
measurements never wait for the device. The warm start vectors are the tracker's state, saved in the
run's checkpoint, so a resumed run measures exactly as an uninterrupted one.
"""
from __future__ import annotations

import torch

import math

from landscape.engine.batches import BatchSet, Objective
from landscape.engine.curvature import lanczos, top_eigenvalues
from landscape.engine.functional import evaluate_points, expand_points, flatten, module_buffers, prepared_module, state_of
from landscape.engine.operators import DEFAULT_HVP, HessianOperator
from landscape.errors import UsageError
from landscape.options import check_sharpness_options

WARM_NOISE = 0.1  # share of the start vector's norm that is fresh random direction
CHECK_TOL = 1e-4  # relative error bound of the converged check
CHECK_MAX_STEPS = 100
SEARCH_OCTAVES = 5  # the critical search brackets the step multiplier within 2^-5 .. 2^5
SEARCH_STEPS = 8  # bisections in log2: the multiplier to within 2^(10 / 2^9), 1.4%


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


class ModelRuns:
    """Models of one's own, seen as a run engine: `run_module(r)` and `active`."""

    def __init__(self, models: list):
        self.models = models
        self.active = [True] * len(models)

    def __len__(self) -> int:
        return len(self.models)

    def run_module(self, run: int):
        return (self.models[run], *state_of(self.models[run]))


class PreStepRuns:
    """A run engine seen at the weights before its last step (`before[r]`, None: not measured)."""

    def __init__(self, runs, before: list[dict | None]):
        self.runs, self.before = runs, before
        self.active = [bool(runs.active[r]) and before[r] is not None for r in range(len(before))]

    def __len__(self) -> int:
        return len(self.before)

    def run_module(self, run: int):
        module, params, buffers = self.runs.run_module(run)
        return module, {**params, **(self.before[run] or {})}, buffers


class SharpnessTracker:
    """Every run's sharpness at chosen steps (see the module docstring).

    `batches`: the fixed samples measured on, or None to measure on each step's own batch (`measure(batch=)`).
    """

    def __init__(self, batches: BatchSet | None, *, top_k: int, steps: int, cold_steps: int = 20, seed: int = 0,
                 warm: bool = False, check_every: int = 0, objective: Objective | None = None,
                 images: int | str = 0, method: str = "lanczos", dash: str = "--"):
        check_sharpness_options(top_k, steps, cold_steps, check_every, dash, method)
        self.batches = batches.fixed() if batches is not None else None
        self.sizes = batches.sizes if batches is not None else None
        self.top_k, self.steps, self.cold_steps, self.seed = top_k, steps, cold_steps, seed
        self.warm, self.check_every = warm, check_every
        self.objective = objective or Objective()
        self.method = method
        self.module = None
        self.failures: torch.Tensor | int = 0  # critical searches without a crossing (a device count)
        self.starts: dict[int, torch.Tensor] = {}  # run -> the next measurement's warm start (without its noise)
        self.measurements = 0
        start = ("warm-started from the previous top k + 1 Ritz vectors plus 10% fresh random" if warm
                 else "cold, from a random vector")
        described = {
            "lanczos": f"Lanczos, full reorthogonalisation, fixed steps ({start}), {DEFAULT_HVP} HVPs",
            "critical": f"critical sharpness 2 / (s_c lr): s_c the largest multiplier of the update before the loss "
                        f"rises, by {SEARCH_STEPS} bisections in log2 within 2^-{SEARCH_OCTAVES}..2^{SEARCH_OCTAVES} "
                        f"({1 + SEARCH_STEPS} forward passes; NaN where the bracket holds no crossing)",
            "directional": f"directional curvature d'Hd / ||d||^2 along the update d, one {DEFAULT_HVP} HVP"}
        self.attrs = {"top_k": top_k, "images": images, "iterations": steps, "cold_iterations": cold_steps,
                      "warm_start": int(warm), "check_every": check_every, "bn": "train", "seed": seed,
                      "sharpness_method": method, "method": described[method],
                      **({"forward_passes": 1 + SEARCH_STEPS} if method == "critical" else {})}

    @property
    def needs_update(self) -> bool:
        """Whether a measurement needs the step's update (it is then made after the step, at the weights before)."""
        return self.method != "lanczos"

    def batch_set(self, module, batch=None) -> BatchSet:
        if self.module is None:
            self.module = prepared_module(module, "train")
        if batch is not None:
            return BatchSet([batch])
        if self.batches is not None:
            return BatchSet(self.batches, self.sizes)
        raise UsageError("sharpness on the step's own batch needs the batch: pass it to measure()")

    def operator(self, module, params, buffers, batch=None) -> HessianOperator:
        batches = self.batch_set(module, batch)
        return HessianOperator(self.module, params, module_buffers(self.module, buffers), batches, self.objective)

    def measure_along(self, module, params, buffers, update: dict, lr: float, batch=None) -> tuple[torch.Tensor, int]:
        """[1] the critical or directional sharpness of one run along its update, and the HVPs used."""
        if self.method == "directional":
            operator = self.operator(module, params, buffers, batch)
            direction = flatten(update, list(operator.params))
            value = torch.dot(direction, operator(direction)) / torch.dot(direction, direction)
            return value.reshape(1), operator.products
        batches = self.batch_set(module, batch)
        kept = module_buffers(self.module, buffers)
        objective = Objective(loss=self.objective.loss, closure=self.objective.closure, metrics={})

        def loss_at(multiplier) -> torch.Tensor:
            point = {n: (p + multiplier * update[n].to(p.dtype) if n in update else p)[None] for n, p in params.items()}
            return evaluate_points(self.module, point, expand_points(kept, 1), batches, objective)["loss"][0]

        start = loss_at(0.0)
        low = torch.tensor(-float(SEARCH_OCTAVES), dtype=torch.float64, device=start.device)
        high = -low
        for _ in range(SEARCH_STEPS):
            middle = (low + high) / 2
            rises = loss_at(torch.exp2(middle)) > start
            high, low = torch.where(rises, middle, high), torch.where(rises, low, middle)
        found = (high < SEARCH_OCTAVES) & (low > -SEARCH_OCTAVES) & torch.isfinite(start)
        value = torch.where(found, 2 / (torch.exp2((low + high) / 2) * lr), torch.full_like(low, math.nan))
        self.failures = self.failures + (~found).long()
        return value.reshape(1), 0

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

    def before_step(self, runs) -> list[dict | None]:
        """Copies of every active run's parameters before a step whose update will be measured."""
        return [{n: p.clone() for n, p in runs.run_module(r)[1].items()} if runs.active[r] else None
                for r in range(len(runs))]

    def measure_after(self, runs, before: list[dict | None], step: int, batch=None,
                      lrs: list[float] | None = None) -> dict[str, torch.Tensor]:
        """The measurement of `step` once it is taken: at the weights `before` it (`before_step`), along the update
        to the weights `runs` hold now (for critical and directional)."""
        updates = [{n: runs.run_module(r)[1][n] - b[n] for n in b} if b is not None else None
                   for r, b in enumerate(before)]
        return self.measure(PreStepRuns(runs, before), step, batch, updates, lrs)

    def failure_note(self) -> str:
        """'' or how many critical searches found no crossing (one host sync, at the end)."""
        failed = int(self.failures)
        return (f"critical sharpness: no crossing within 2^-{SEARCH_OCTAVES}..2^{SEARCH_OCTAVES} times the update at "
                f"{failed} of the run-measurements (recorded as NaN)") if failed else ""

    def measure(self, runs, step: int, batch=None, updates: list[dict | None] | None = None,
                lrs: list[float] | None = None) -> dict[str, torch.Tensor]:
        """Every run's measurement at `step` (an engine with `run_module` and `active`): 'top' [R, k], 'hvps' [R],
        and with a check due, 'check' [R, k]; NaN rows for runs that stopped. The critical and directional
        methods need each run's update and (critical) learning rate."""
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
            if self.needs_update:
                top, products = self.measure_along(module, params, buffers, updates[run], float(lrs[run]), batch)
            else:
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
        return {"starts": {int(k): v.detach().cpu() for k, v in self.starts.items()}, "measurements": self.measurements,
                "failures": int(self.failures)}

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        self.starts = {int(k): v.to(device) for k, v in state.get("starts", {}).items()}
        self.measurements = int(state.get("measurements", 0))
        self.failures = int(state.get("failures", 0))
