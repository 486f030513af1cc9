"""Trace estimators of a symmetric operator v -> M v (flat float64 vectors) from a budget of products.

- `hutchinson_trace`: the mean of v'Mv over Rademacher v (Hutchinson 1989);
- `hutchpp_trace`: Hutch++ (Meyer, Musco, Musco, Woodruff 2021): a third of the products sketch the top of the
  spectrum, a third give the sketch's trace exactly, the rest Hutchinson on what the sketch leaves;
- `xtrace_trace`: XTrace (Epperly, Tropp, Webber 2024): half the products sketch Y = M Omega, half give M Q on its
  basis; each test vector's estimate uses the basis of the *other* vectors' sketch and Hutchinson with its own
  (exchangeable, so every product serves both parts); the estimate is the mean of those, its standard error their
  spread;
- `deflated_trace`: the Krylov-deflated estimate shared with Lanczos (`landscape.engine.curvature`): tr(V'MV) of
  an orthonormal basis V whose projection V'MV is already known (free), plus Hutchinson on (I - VV')M(I - VV'):
  every product goes to the remainder (Krylov-aware trace estimation, Chen & Hallman 2023).
Each returns (estimate, standard error). All are unbiased; all but Hutchinson exact when M's rank is below their
sketch's. Random vectors are drawn on the CPU so every device gives the same ones.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from landscape.errors import UsageError
from landscape.options import choose

Operator = Callable[[torch.Tensor], torch.Tensor]  # with .size (int) and .device
TRACE_METHODS = ("krylov", "xtrace", "hutch++", "hutchinson")  # krylov: after Lanczos (`curvature.trace_after`)
DEFAULT_TRACE_METHOD = "krylov"
RANK_TOLERANCE = 1e-12  # |R_ii| below this share of the largest: the sketch is rank-deficient (M's rank is lower)


def rademacher(size: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """A vector of random signs (float64), drawn on the CPU so every device gives the same one."""
    return (torch.randint(0, 2, (size,), generator=generator, dtype=torch.float64) * 2 - 1).to(device)


def mean_and_stderr(values: list[torch.Tensor] | torch.Tensor) -> tuple[float, float]:
    estimates = (torch.stack(values) if isinstance(values, list) else values).cpu().double()
    count = estimates.numel()
    stderr = float(estimates.std() / math.sqrt(count)) if count > 1 else float("nan")
    return float(estimates.mean()), stderr


def hutchinson_trace(operator: Operator, samples: int, seed: int = 0) -> tuple[float, float]:
    """tr M estimated as the mean of v'Mv over Rademacher vectors v, and the standard error of that mean."""
    generator = torch.Generator().manual_seed(seed + 1)
    values = []
    for _ in range(samples):
        v = rademacher(operator.size, generator, operator.device)
        values.append(torch.dot(v, operator(v)))
    return mean_and_stderr(values)


def hutchpp_trace(operator: Operator, products: int, seed: int = 0) -> tuple[float, float]:
    """Hutch++ with `products` products (at least 3): k = products // 3 of them sketch the range of M (Q, an
    orthonormal basis of M S for Rademacher S), k more give tr(Q'MQ) exactly, and the rest estimate the trace of
    the deflated (I - QQ')M(I - QQ') by Hutchinson; returns the sum and the standard error of that last part."""
    if products < 3:
        raise UsageError(f"Hutch++ needs at least 3 products (a third sketch, a third exact, a third sampled), got "
                         f"{products}: raise trace_samples, or use the hutchinson trace method")
    generator = torch.Generator().manual_seed(seed + 1)
    k = min(products // 3, operator.size)
    sketch = torch.stack([operator(rademacher(operator.size, generator, operator.device)) for _ in range(k)])
    basis = torch.linalg.qr(sketch.T).Q.T  # [k, P] orthonormal rows spanning M S
    exact = sum(torch.dot(q, operator(q)) for q in basis)
    if k == operator.size:  # the sketch spans every direction: the trace is exact, nothing is left to sample
        return float(exact), 0.0
    return remainder_trace(operator, basis, float(exact), products - 2 * k, generator)


def remainder_trace(operator: Operator, basis: torch.Tensor, exact: float, samples: int,
                    generator: torch.Generator) -> tuple[float, float]:
    """`exact` (the trace of M on the span of the orthonormal rows of `basis`) plus Hutchinson with `samples`
    products on the rest, (I - BB')M(I - BB'); the standard error is that of the sampled part."""
    rest = []
    for _ in range(samples):
        v = rademacher(operator.size, generator, operator.device)
        v = v - basis.T @ (basis @ v)
        rest.append(torch.dot(v, operator(v)))
    if not rest:
        return exact, float("nan")
    mean, stderr = mean_and_stderr(rest)
    return exact + mean, stderr


def xtrace_trace(operator: Operator, products: int, seed: int = 0) -> tuple[float, float]:
    """XTrace with `products` products (at least 4; an odd last one is not spent): k = products // 2 Rademacher
    test vectors omega_i, Y = M Omega, Y = QR, then M Q. Estimate i is tr(M) of the basis Q_i of the other k - 1
    columns of Y, plus omega_i' (I - Q_i Q_i') M (I - Q_i Q_i') omega_i; Q_i is Q with the direction
    s_i = R^-T e_i / |R^-T e_i| removed (the one column i alone adds), so every estimate is k x k algebra on
    Q'MQ, Q'Omega and R. Returns their mean and its standard error (their spread / sqrt(k))."""
    if products < 4:
        raise UsageError(f"XTrace needs at least 4 products (two test vectors, each sketched and projected), got "
                         f"{products}: raise trace_samples, or use the hutchinson trace method")
    generator = torch.Generator().manual_seed(seed + 1)
    k = min(products // 2, operator.size)
    omega = torch.stack([rademacher(operator.size, generator, operator.device) for _ in range(k)])  # [k, P]
    sketch = torch.empty_like(omega)
    for i in range(k):
        sketch[i] = operator(omega[i])
    own = (omega * sketch).sum(dim=1)  # omega_i' M omega_i
    q, r = torch.linalg.qr(sketch.T)  # Q [P, k], R [k, k]
    del sketch
    projected = torch.empty(k, k, dtype=torch.float64, device=omega.device)  # H = Q'MQ
    for j in range(k):
        projected[:, j] = q.T @ operator(q[:, j].contiguous())
    projected = (projected + projected.T) / 2
    diagonal = r.diagonal().abs()
    if k == operator.size or bool((diagonal <= RANK_TOLERANCE * diagonal.max()).any()):
        return float(projected.trace()), 0.0  # Q spans every direction M reaches: tr(Q'MQ) is tr(M) exactly
    w = q.T @ omega.T  # [k, k]: column i is Q' omega_i
    s = torch.linalg.inv(r).T
    s = s / s.norm(dim=0, keepdim=True)  # column i: s_i
    hs, hw = projected @ s, projected @ w
    shs = (s * hs).sum(dim=0)  # s_i' H s_i
    c = (s * w).sum(dim=0)  # s_i' w_i
    rw = (r * w).sum(dim=0)  # r_i' w_i, with r_i = Q' M omega_i (column i of R)
    whw = (w * hw).sum(dim=0)
    s_r = (s * r).sum(dim=0)
    s_hw = (s * hw).sum(dim=0)
    outside = own - 2 * rw + whw  # u' M u for u = omega_i - Q w_i (the part of omega_i outside span Q)
    estimates = projected.trace() - shs + outside + 2 * c * (s_r - s_hw) + c ** 2 * shs
    return mean_and_stderr(estimates)


def deflated_trace(operator: Operator, basis: torch.Tensor, projected_trace: float, samples: int,
                   seed: int = 0) -> tuple[float, float]:
    """tr M from an orthonormal basis [m, P] whose projection's trace tr(V'MV) is known (Lanczos' tridiagonal),
    plus Hutchinson with `samples` products on (I - VV')M(I - VV'). Unbiased when V does not depend on the
    Hutchinson vectors (a Lanczos start drawn separately)."""
    generator = torch.Generator().manual_seed(seed + 3)
    if basis.shape[0] >= operator.size:
        return projected_trace, 0.0
    return remainder_trace(operator, basis, projected_trace, samples, generator)


def trace_vectors(method: str, products: int) -> int:
    """Vectors of the parameters' size a trace method holds at once (what must fit in memory)."""
    return {"hutch++": 2 * (products // 3), "xtrace": 3 * (products // 2), "krylov": 1}.get(method, 2)


def estimate_trace(operator: Operator, products: int, method: str, seed: int = 0) -> tuple[float, float]:
    """The trace by `method` (xtrace, hutch++ or hutchinson) from `products` fresh products, and its standard error
    (krylov needs a Lanczos basis: `curvature.trace_after`)."""
    choose("trace_method", method, TRACE_METHODS[1:])
    estimator = {"xtrace": xtrace_trace, "hutch++": hutchpp_trace, "hutchinson": hutchinson_trace}[method]
    return estimator(operator, products, seed)
