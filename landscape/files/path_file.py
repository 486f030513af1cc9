"""The path file (`landscape connect`): HDF5 schema version 1, writer and reader (numpy and h5py only).

Loss and metrics along paths between two models. `/t` [T] are the path positions (0: model A, 1: model B). For each
path `<p>` (`line`; `aligned_line`, the line to B with its hidden units permuted to match A; `curve`, the trained
Bezier curve or polygonal chain) and split `<s>` (`train`, `test`): `/paths/<p>/<s>/<metric>` [T] (`loss`, `acc`,
...) and the scalars `/paths/<p>/<s>/barrier_<metric>` (for the loss: max over t of L(t) minus the straight
interpolation of its end values, Frankle et al.; for another metric: its largest drop below that interpolation).
With alignment: `/alignment/orders/<g>` (the order of B's units in permutation group g: new unit i is old unit
order[i]) and the attributes `similarity_before`, `similarity_after` (sum of <W_A, W_B> over the permuted
tensors), `moved_units`, `groups`, `sweeps`. With a curve: `/curve/bend/<parameter name>` (the trained bend; dots
of the name kept) and `/curve/losses` [epochs] (the mean training loss along the path per epoch).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from landscape.errors import UsageError
from landscape.files.atomic import write_atomically
from landscape.files.attributes import FILE_NAME, NUMBER, STRING, WHOLE, check_kinds, is_numeric
from landscape.files.hdf5 import read_versioned, root_attrs

PATH_FORMAT = "landscape-path"
PATH_SCHEMA_VERSION = 1
PATH_NAMES = {"line": "the line from A to B", "aligned_line": "the line from A to B with B's units aligned to A",
              "curve": "the trained curve from A to (aligned) B"}
ALIGNMENT_KINDS = {"similarity_before": NUMBER, "similarity_after": NUMBER, "moved_units": WHOLE, "groups": WHOLE,
                   "sweeps": WHOLE}
ATTRIBUTE_KINDS = {"model": STRING, "source": STRING, "bn": STRING, "end_statistics": STRING, "align": STRING, "curve": STRING,
                   "points": WHOLE, "images": WHOLE, "test_images": WHOLE, "bn_images": WHOLE, "seed": WHOLE,
                   "curve_epochs": WHOLE, "curve_lr": NUMBER, "options": STRING, "seconds": NUMBER,
                   "device": STRING, "a": STRING, "b": STRING, "run_file": FILE_NAME, "status": STRING}


@dataclass
class PathFile:
    """A path file in memory (numpy)."""

    path: Path
    attrs: dict
    t: np.ndarray
    values: dict[str, dict[str, dict[str, np.ndarray]]]
    barriers: dict[str, dict[str, dict[str, float]]]
    alignment: dict = field(default_factory=dict)
    orders: list[np.ndarray] = field(default_factory=list)
    bend: dict[str, np.ndarray] = field(default_factory=dict)
    curve_losses: np.ndarray | None = None

    @property
    def label(self) -> str:
        return str(self.attrs.get("model", self.path.stem))

    @property
    def options(self) -> dict:
        return json.loads(self.attrs.get("options", "{}"))


def write_path(path: Path, connection) -> Path:
    """Write a `connectivity.connect.Connection` atomically; return the path."""

    def write(target) -> None:
        with h5py.File(target, "w") as f:
            f.attrs.update(root_attrs(PATH_FORMAT, PATH_SCHEMA_VERSION, {"status": "complete", **connection.attrs}))
            t = f.create_dataset("t", data=np.asarray(connection.t, dtype=np.float64))
            t.attrs["description"] = "position along each path: 0 is model A, 1 is model B"
            for name, splits in connection.values.items():
                for split, metrics in splits.items():
                    group = f.require_group(f"paths/{name}/{split}")
                    group.attrs["description"] = f"{PATH_NAMES[name]}, on the {split} images"
                    for metric, series in metrics.items():
                        dset = group.create_dataset(metric, data=np.asarray(series, dtype=np.float64))
                        dset.attrs["description"] = f"mean {metric} at each t"
                        dset.dims[0].label = "t"
                    for metric, value in connection.barriers[name][split].items():
                        dset = group.create_dataset(f"barrier_{metric}", data=float(value))
                        dset.attrs["description"] = (
                            "max over t of the loss minus the straight interpolation of its end values" if
                            metric == "loss" else f"largest drop of {metric} below the interpolation of its end values")
            matching = connection.alignment
            if matching is not None:
                group = f.create_group("alignment")
                group.attrs.update({"similarity_before": matching.similarity_before,
                                    "similarity_after": matching.similarity_after, "moved_units": matching.moved,
                                    "groups": len(matching.orders), "sweeps": matching.sweeps,
                                    "description": "weight matching (Ainsworth et al. 2023) of B's units to A's"})
                for index, order in enumerate(matching.orders):
                    dset = group.create_dataset(f"orders/{index}", data=np.asarray(order, dtype=np.int64))
                    dset.attrs["description"] = "new unit i of B is old unit order[i]"
            if connection.bend is not None:
                group = f.create_group("curve")
                group.attrs["description"] = f"the trained bend of the {connection.attrs.get('curve')} curve"
                for name, value in connection.bend.items():
                    group.create_dataset(f"bend/{name}", data=np.asarray(value))
                group.create_dataset("losses", data=np.asarray(connection.curve_losses, dtype=np.float64))

    write_atomically(Path(path), write)
    return Path(path)


def read_path(path: str | Path) -> PathFile:
    """Read a path file; UsageError (one line) if it is missing, damaged, not ours or too new."""

    def read(f, attrs: dict) -> PathFile:
        if "t" not in f or "paths" not in f:
            raise UsageError(f"{path}: inconsistent path file: it has no /t or /paths; make it again with "
                             f"`landscape connect`")
        t = f["t"][...]
        damaged = UsageError(f"{path}: inconsistent path file: a dataset holds text, not numbers; the file was "
                             f"damaged or edited, make it again with `landscape connect`")
        if not is_numeric(t):
            raise damaged
        values, barriers = {}, {}
        for name in sorted(f["paths"], key=lambda n: list(PATH_NAMES).index(n) if n in PATH_NAMES else 99):
            splits = f["paths"][name]
            values[name], barriers[name] = {}, {}
            for split, group in splits.items():
                if not all(isinstance(v, h5py.Dataset) and is_numeric(v[()]) for v in group.values()):
                    raise damaged
                values[name][split] = {k: v[...] for k, v in group.items() if not k.startswith("barrier_")}
                barriers[name][split] = {k.removeprefix("barrier_"): float(v[()]) for k, v in group.items()
                                         if k.startswith("barrier_")}
                if any(v.shape != t.shape for v in values[name][split].values()):
                    raise UsageError(f"{path}: inconsistent path file: /paths/{name}/{split} does not follow /t; "
                                     f"make it again with `landscape connect`")
        alignment = dict(f["alignment"].attrs) if "alignment" in f else {}
        check_kinds(alignment, ALIGNMENT_KINDS, path, "make it again with `landscape connect`")
        orders = [f["alignment/orders"][k][...] for k in sorted(f["alignment/orders"], key=int)] \
            if "alignment/orders" in f else []
        bend = {}
        if "curve/bend" in f:
            f["curve/bend"].visititems(lambda name, item: bend.__setitem__(name.replace("/", "."), item[...])
                                       if isinstance(item, h5py.Dataset) else None)
        losses = f["curve/losses"][...] if "curve/losses" in f else None
        return PathFile(Path(path), attrs, t, values, barriers, alignment, orders, bend, losses)

    return read_versioned(path, PATH_FORMAT, PATH_SCHEMA_VERSION, "landscape connect", read, ATTRIBUTE_KINDS)
