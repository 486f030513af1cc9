"""What every figure shares: saving (PNG, PDF and the CSV of exactly what is drawn, each written atomically),
colours and markers that mean the same in every figure, and short file names (no torch).

Colours: learning rates get a sequential palette ordered by size (the largest rate darkest), the same rate the
same colour in every figure; files (or unordered categories, such as ablation cells) get a categorical
palette; within a figure that shows both, colour says the file and the marker says the rate.
"""
from __future__ import annotations

import csv
import hashlib
import io
import textwrap
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from landscape.files.atomic import FIGURE_FORMATS, figure_files, write_atomically  # noqa: E402
from landscape.views.csv_cells import inert_row  # noqa: E402

MARKERS = ("o", "s", "D", "^", "v", "P", "X", "*")
LINE_STYLES = ("-", "--", ":", "-.")
MAX_STEM = 120  # file names stay well under the 255 bytes of common file systems
PROTECTED: set[Path] = set()  # files no figure may replace: the command's inputs (`protect`)

# The look of seaborn's "whitegrid" style in its "paper" context, written out: importing seaborn imports
# scipy.stats, which took 1.5 s of every figure-drawing command's start. Font sizes at font_scale 1.
DEEP = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c", "#ccb974", "#64b5cd")
COLORBLIND = ("#0173b2", "#de8f05", "#029e73", "#d55e00", "#cc78bc", "#ca9161", "#fbafe4", "#949494", "#ece133",
              "#56b4e9")
FONT_SIZES = {"font.size": 9.6, "axes.labelsize": 9.6, "axes.titlesize": 9.6, "legend.title_fontsize": 9.6,
              "xtick.labelsize": 8.8, "ytick.labelsize": 8.8, "legend.fontsize": 8.8}
THEME = {"axes.axisbelow": True, "axes.edgecolor": ".8", "axes.grid": True, "axes.labelcolor": ".15",
         "axes.linewidth": 1.0, "grid.color": ".8", "text.color": ".15", "xtick.color": ".15", "ytick.color": ".15",
         "xtick.bottom": False, "ytick.left": False, "lines.linewidth": 1.2, "lines.markersize": 4.8,
         "lines.solid_capstyle": "round", "patch.edgecolor": "w", "patch.force_edgecolor": True,
         "patch.linewidth": 0.8, "font.sans-serif": ["Arial", "DejaVu Sans", "Liberation Sans", "Bitstream Vera Sans",
                                                     "sans-serif"],
         **{f"{axis}.{which}.{what}": size for axis in ("xtick", "ytick")
            for which, what, size in (("major", "size", 4.8), ("major", "width", 1.0), ("minor", "size", 3.2),
                                      ("minor", "width", 0.8))}}


class protect:
    """Within the block, writing a figure or CSV over one of `paths` is refused (a command's inputs)."""

    def __init__(self, paths):
        self.paths = {Path(p).resolve() for p in paths}

    def __enter__(self) -> "protect":
        PROTECTED.update(self.paths)
        return self

    def __exit__(self, *exc) -> None:
        PROTECTED.difference_update(self.paths)


def check_target(path: Path) -> None:
    from landscape.errors import UsageError

    if path.resolve() in PROTECTED:
        raise UsageError(f"a figure would be written over {path}, one of this command's inputs: rename the input "
                         f"or give another --out")


def setup(font_scale: float = 1.2) -> None:
    """Every figure's look (light grid, the "deep" colour cycle), its fonts scaled by `font_scale`."""
    plt.rcParams.update({**THEME, **{k: v * font_scale for k, v in FONT_SIZES.items()},
                         "axes.prop_cycle": matplotlib.cycler(color=DEEP)})


def rate_colours(rates) -> dict[float, tuple]:
    """One colour per learning rate, by size: the same rate the same colour in every figure."""
    finite = sorted({float(r) for r in rates if np.isfinite(float(r))})
    viridis = matplotlib.colormaps["viridis_r"]
    palette = [tuple(float(c) for c in viridis(x)[:3]) for x in np.linspace(0, 1, max(len(finite), 1) + 2)[1:-1]]
    colours = dict(zip(finite, palette))
    colours[float("nan")] = (0.3, 0.3, 0.3)
    return colours


def colour_of(colours: dict, rate: float):
    return colours[float(rate)] if np.isfinite(float(rate)) else (0.3, 0.3, 0.3)


def rate_markers(rates) -> dict[float, str]:
    """One marker per learning rate, by size, for figures whose colour says the file."""
    finite = sorted({float(r) for r in rates if np.isfinite(float(r))}, reverse=True)
    return {rate: MARKERS[i % len(MARKERS)] for i, rate in enumerate(finite)}


def marker_of(markers: dict, rate: float) -> str:
    return markers.get(float(rate), "o") if np.isfinite(float(rate)) else "o"


def category_colours(count: int) -> list:
    """A categorical palette for unordered things: files, ablation cells."""
    return [matplotlib.colors.to_rgb(COLORBLIND[i % len(COLORBLIND)]) for i in range(max(count, 1))]


def rate_text(rate: float) -> str:
    return f"lr={float(rate):g}" if np.isfinite(float(rate)) else "model"


def joined_stem(stems: list[str], suffix: str) -> str:
    """`a_vs_b_<suffix>`, shortened (with a hash of the whole) when it would be too long for a file name."""
    whole = "_vs_".join(stems)
    if len(whole) + len(suffix) + 1 <= MAX_STEM:
        return f"{whole}_{suffix}"
    digest = hashlib.sha1(whole.encode()).hexdigest()[:8]
    head = stems[0][:40]
    return f"{head}_and_{len(stems) - 1}_more_{digest}_{suffix}"


def short_stem(stem: str) -> str:
    """A single file's stem, shortened the same way when too long."""
    if len(stem) <= MAX_STEM:
        return stem
    return f"{stem[:60]}_{hashlib.sha1(stem.encode()).hexdigest()[:8]}"


def wrap_titles(fig) -> None:
    """Break every axes title and the figure's title into lines that fit their width (never cut at the edges)."""
    width_points = fig.get_figwidth() * 72

    def wrapped(text, points: float) -> None:
        chars = max(20, int(points / (0.52 * text.get_fontsize())))  # an average glyph is about half its size
        lines = text.get_text().split("\n")
        if any(len(line) > chars for line in lines):
            text.set_text("\n".join(textwrap.fill(line, chars) for line in lines))

    for ax in fig.axes:
        wrapped(ax.title, ax.get_position().width * width_points)
    if fig._suptitle is not None:
        wrapped(fig._suptitle, 0.95 * width_points)


def save_figure(fig, stem: Path, header: tuple[str, ...], rows: list[tuple]) -> list[Path]:
    """Write the figure in every format and its data as CSV under `stem`, each file atomically; close the figure."""
    wrap_titles(fig)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # colour bars spanning several axes: tight_layout's best effort
        if fig.get_layout_engine() is None:
            fig.tight_layout()
    paths = []
    targets = figure_files(stem)
    for target in targets:
        check_target(target)
    try:
        for fmt in FIGURE_FORMATS:
            path = stem.parent / f"{stem.name}.{fmt}"
            write_atomically(path, lambda buffer, fmt=fmt: fig.savefig(buffer, format=fmt, dpi=150))
            paths.append(path)
    finally:
        plt.close(fig)
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(inert_row(header))
    writer.writerows(inert_row(row) for row in rows)
    csv_path = stem.parent / f"{stem.name}.csv"
    write_atomically(csv_path, lambda buffer: buffer.write(text.getvalue().encode("utf-8")))
    return paths + [csv_path]
