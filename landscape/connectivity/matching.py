"""Weight matching (Ainsworth et al. 2023, "Git Re-Basin", Algorithm 1): the permutation of B's hidden units that
best matches A's weights.

For one group with the others held, the best order maximises sum_w <W_A, P W_B> over the tensors the group
permutes, a linear assignment (scipy's `linear_sum_assignment`) on the summed unit-by-unit similarity. Groups are
visited in a seeded random order, sweep after sweep, until a whole sweep improves nothing (or `max_sweeps`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from landscape.connectivity.permutations import PermutationSpec, apply_permutation, permute_axis

Params = dict[str, torch.Tensor]


@dataclass
class Matching:
    """Per-group orders for B, the similarity sum_w <W_A, W_B> before and after, and the sweeps taken."""

    orders: list[torch.Tensor]
    similarity_before: float
    similarity_after: float
    sweeps: int

    @property
    def moved(self) -> int:
        """Hidden units whose place changed."""
        return int(sum((order != torch.arange(len(order))).sum() for order in self.orders))


def unit_rows(tensor: torch.Tensor, axis: int, block: int, offset: int, count: int) -> torch.Tensor:
    """[count, rest]: units [offset, offset + count) of `tensor` along `axis`, each unit's entries (its block and
    the other axes) in a row."""
    shape = tensor.shape
    units = shape[axis] // block
    viewed = tensor.reshape(*shape[:axis], units, block, *shape[axis + 1:]).movedim(axis, 0)
    return viewed[offset:offset + count].reshape(count, -1)


def similarity(spec: PermutationSpec, a: Params, b: Params) -> float:
    return float(sum((a[name].double() * b[name].double()).sum() for name in spec.axes if name in a))


def weight_matching(spec: PermutationSpec, a: Params, b: Params, *, max_sweeps: int = 100,
                    seed: int = 0) -> Matching:
    """The orders of B's units per group that best match A (see the module docstring)."""
    from scipy.optimize import linear_sum_assignment

    a = {n: t.detach().double().cpu() for n, t in a.items() if n in spec.axes}
    b = {n: t.detach().double().cpu() for n, t in b.items() if n in spec.axes}
    orders = [torch.arange(size) for size in spec.sizes]
    members = [spec.members(group) for group in range(len(spec.sizes))]
    rng = np.random.default_rng(seed)
    before = similarity(spec, a, b)
    sweeps = 0
    for sweeps in range(1, max_sweeps + 1):
        improved = False
        for group in rng.permutation(len(spec.sizes)):
            size = spec.sizes[group]
            score = torch.zeros(size, size, dtype=torch.float64)
            for name, axis, block, offset in members[group]:
                if name not in a:
                    continue
                other = b[name]
                for other_axis, other_group, other_block, other_offset in spec.axes[name]:
                    if other_axis != axis:
                        other = permute_axis(other, other_axis, other_block, orders[other_group], other_offset)
                score += unit_rows(a[name], axis, block, offset, size) @ unit_rows(other, axis, block, offset, size).T
            rows, columns = linear_sum_assignment(score.numpy(), maximize=True)
            order = torch.as_tensor(columns[np.argsort(rows)])
            old = float(score[torch.arange(size), orders[group]].sum())
            new = float(score[torch.arange(size), order].sum())
            if new > old + 1e-12 * max(abs(old), 1.0):
                orders[group] = order
                improved = True
        if not improved:
            break
    after = similarity(spec, a, apply_permutation(spec, b, orders))
    return Matching(orders, before, after, sweeps)
