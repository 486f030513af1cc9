"""Progress with the time left for every long command: a tqdm bar on a terminal, nothing (or the caller's
one line per epoch) otherwise, and nothing at all with --quiet."""
from __future__ import annotations

import sys

from tqdm import tqdm


def live(enabled: bool = True) -> bool:
    """Whether to draw bars: asked for, and stderr is a terminal."""
    return enabled and sys.stderr.isatty()


def bar(total: int, description: str, unit: str, enabled: bool = True, **options) -> tqdm:
    """A progress bar on stderr (rate and time left), disabled off a terminal or when not `enabled`."""
    return tqdm(total=total, desc=description, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=False,
                disable=not live(enabled), **options)


def duration(seconds: float) -> str:
    """12s, 3m05s, 2h07m."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
