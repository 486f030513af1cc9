"""Figures of path files (`landscape connect`): loss and each metric along t, one column per split (no torch)."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from landscape.files.path_file import PathFile
from landscape.views.figures import save_figure

PATH_STYLES = {"line": ("-", "line"), "aligned_line": ("--", "aligned line"), "curve": (":", "curve")}


def plot_paths(files: list[PathFile], out_dir: Path) -> list[Path]:
    """One figure per path file: rows loss and metrics, columns train and test; a line per path with its barrier."""
    written = []
    out_dir.mkdir(parents=True, exist_ok=True)
    for item in files:
        splits = sorted({split for path in item.values.values() for split in path}, key=lambda s: s != "train")
        metrics = sorted({m for path in item.values.values() for split in path.values() for m in split},
                         key=lambda m: m != "loss")
        fig, axes = plt.subplots(len(metrics), len(splits), figsize=(5.2 * len(splits), 3.2 * len(metrics)),
                                 squeeze=False)
        rows = []
        for column, split in enumerate(splits):
            for row, metric in enumerate(metrics):
                ax = axes[row][column]
                for name, path in item.values.items():
                    if split not in path or metric not in path[split]:
                        continue
                    style, label = PATH_STYLES.get(name, ("-", name))
                    height = item.barriers[name][split].get(metric, float("nan"))
                    ax.plot(item.t, path[split][metric], linestyle=style, marker="o", markersize=3,
                            label=f"{label} (barrier {height:.3g})")
                    rows += [(item.label, name, split, metric, float(t), float(v))
                             for t, v in zip(item.t, path[split][metric])]
                ax.set_xlabel("t (0: A, 1: B)")
                ax.set_ylabel(metric)
                ax.set_title(f"{metric} on the {split} images", fontsize="small")
                ax.legend(fontsize="x-small")
        fig.suptitle(f"{item.attrs.get('a', 'A')} to {item.attrs.get('b', 'B')}: BatchNorm {item.attrs.get('bn')}, "
                     f"alignment {item.attrs.get('align')}, curve {item.attrs.get('curve')}", fontsize="small")
        written += save_figure(fig, out_dir / f"{item.path.stem}", ("label", "path", "split", "metric", "t", "value"),
                               rows)
    return written
