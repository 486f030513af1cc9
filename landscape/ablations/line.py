"""A study's 1D line between two cells (Keskar et al. 2017, Figure 3): the loss and accuracy on the straight line
from the first seed of one cell to the first seed of another, by `landscape connect`'s own code, written as a path
file and its figure beside the study's measures (`line_<a>_<b>.h5`)."""
from __future__ import annotations

from pathlib import Path

from landscape.ablations.spec import Spec
from landscape.errors import UsageError


def line_path(spec: Spec, preset: str, root: Path) -> Path | None:
    line = spec.study.line if spec.study is not None else {}
    if not line:
        return None
    return Path(root) / spec.name / preset / f"line_{line['a']}_{line['b']}.h5"


def study_line(spec: Spec, preset: str, root: Path, *, images: int, test_images: int, device: str = "auto",
               data_root: str | None = None, threads: int | str = 0, progress: bool = False) -> list[Path]:
    """Compute the study's line (if it names one) between the two cells' first seeds; return the files written."""
    from landscape.commands.connect import ConnectOptions, compute_connection
    from landscape.files.path_file import read_path
    from landscape.views.path_plots import plot_paths

    out = line_path(spec, preset, root)
    if out is None:
        return []
    line = spec.study.line
    ends = []
    for side in ("a", "b"):
        cell = next(c for c in spec.cells if str(c.axis.get(line["axis"])) == str(line[side]))
        path = spec.result_path(root, preset, cell, 0)
        if not path.is_file():
            raise UsageError(f"the study's line needs {path} (cell {cell.label}, seed 0); run `landscape ablate run "
                             f"{spec.name} --preset {preset}` first")
        ends.append(path)
    options = ConnectOptions(images=images, test_images=test_images, bn_images=images, points=25, device=device,
                             data_root=data_root, threads=threads)
    path = compute_connection(*ends, options, out, overwrite=True, progress=progress)
    return [path, *plot_paths([read_path(path)], path.parent)]
