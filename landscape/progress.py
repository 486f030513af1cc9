"""Progress with the time left for every long command: a tqdm bar on a terminal; off a terminal (a log, a
batch job) a line every few percent; nothing at all with --quiet. The first unit of work gives the estimated total,
and a command with a budget (`--budget-hours`, DEFAULT_BUDGET_HOURS) refuses work estimated beyond it."""
from __future__ import annotations

import sys
import time

from tqdm import tqdm

from landscape.errors import OverBudget

DEFAULT_BUDGET_HOURS = 48.0  # what a command of the command line runs without being told more by --budget-hours


def live(enabled: bool = True) -> bool:
    """Whether to draw bars: asked for, and stderr is a terminal."""
    return enabled and sys.stderr.isatty()


def bar(total: int, description: str, unit: str, enabled: bool = True, **options) -> tqdm:
    """A progress bar on stderr (rate and time left), disabled off a terminal or when not `enabled`."""
    return tqdm(total=total, desc=description, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=False,
                disable=not live(enabled), **options)


def check_budget(description: str, estimate: float, work: str, budget_hours: float | None) -> None:
    """OverBudget when `estimate` seconds exceed `budget_hours` (None: no budget)."""
    if budget_hours is None or not estimate > budget_hours * 3600:
        return
    needed = int(estimate / 3600) + 1
    raise OverBudget(f"{description}: about {duration(estimate)} for {work}, beyond --budget-hours {budget_hours:g}: "
                     f"ask for less work, or give --budget-hours {needed} to run it anyway")


def duration(seconds: float) -> str:
    """12s, 3m05s, 2h07m, 3d04h."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


class Progress:
    """What a long command shows: a bar on a terminal, else one line per `every` share of the work done
    (with the time taken and left); nothing when not `enabled`."""

    def __init__(self, total: int, description: str, unit: str, enabled: bool = True, every: float = 0.05,
                 budget_hours: float | None = None):
        self.total, self.description, self.unit, self.enabled = max(total, 1), description, unit, enabled
        self.budget_hours = budget_hours
        self.bar = bar(total, description, unit, enabled)
        self.started = time.perf_counter()
        self.every, self.next_line, self.done = every, every, 0

    def update(self, done: int) -> None:
        """`done` units of the total are finished. The first update also says the estimated total time (units x
        seconds per unit so far), on a terminal too, so a request of days is known at once."""
        if done == self.done:
            return
        first = self.done == 0
        self.bar.update(done - self.bar.n)
        self.done = done
        spent = time.perf_counter() - self.started
        estimate = spent * self.total / done if done else float("nan")
        if first and done < self.total:
            check_budget(self.description, estimate, f"{self.total:,} {self.unit}s, measured on the first {done:,}",
                         self.budget_hours)
        if not self.enabled:
            return
        if first and done < self.total:
            self.write(f"{self.description}: the first {done:,} {self.unit}(s) took {duration(spent)}: about "
                       f"{duration(estimate)} for all {self.total:,}")
        if self.bar.disable is False:
            return
        share = done / self.total
        if share >= self.next_line or done == self.total:
            sys.stderr.write(f"{self.description}: {done:,}/{self.total:,} {self.unit}s ({100 * share:.0f}%), "
                             f"{duration(spent)} so far, {duration(estimate - spent)} left of about "
                             f"{duration(estimate)}\n")
            sys.stderr.flush()
            while self.next_line <= share:
                self.next_line += self.every

    def write(self, line: str) -> None:
        """A line of its own, above the bar on a terminal."""
        if self.enabled:
            self.bar.write(line, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()
