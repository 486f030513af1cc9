"""Opening our HDF5 files safely: the format check, and refusing anything that reads outside the file (no torch).

Run, weights, surface and Hessian files travel between people, so a file from a stranger must be inert:
every reader goes through `open_ours`, which refuses, in one line, a file holding an external or soft link,
a dataset with external storage (its bytes in another file of the reader's machine) or a virtual dataset
(its bytes gathered from other files); none of our writers makes any of them. Any h5py error while reading
(a truncated file, a damaged chunk caught by its checksum) becomes the same kind of one-line UsageError.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import h5py

from landscape import __version__
from landscape.errors import UsageError
from landscape.files.attributes import check_kinds


def check_self_contained(f: h5py.File, path: Path) -> None:
    """Raise UsageError if the file links out of itself or keeps data elsewhere (external storage, virtual)."""
    seen = set()

    def refuse(name: str, what: str) -> None:
        raise UsageError(f"{path}: {name} is {what}, which reads data from outside the file; refusing to open "
                         f"it (landscape never writes one): ask for the file as written by landscape")

    def visit(group: h5py.Group, prefix: str) -> None:
        for key in group:
            name = f"{prefix}/{key}"
            link = group.get(key, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                refuse(name, f"an external link to {link.filename}")
            if not isinstance(link, h5py.HardLink):
                refuse(name, "a soft or user-defined link")
            item = group[key]
            if hash(item.id) in seen:
                continue
            seen.add(hash(item.id))
            if isinstance(item, h5py.Group):
                visit(item, name)
            elif isinstance(item, h5py.Dataset):
                if item.is_virtual:
                    refuse(name, "a virtual dataset")
                if item.external:
                    refuse(name, "a dataset with external storage")

    visit(f, "")


def root_attrs(format_name: str, version: int, attrs: dict) -> dict:
    """The root attributes every file of ours carries (format, schema version, landscape version), then `attrs`
    (strings as str, None left out)."""
    return {"format": format_name, "schema_version": version, "landscape_version": __version__,
            **{k: (str(v) if isinstance(v, str) else v) for k, v in attrs.items() if v is not None}}


def text_attrs(f: h5py.File) -> dict:
    """Root attributes with bytes decoded."""
    return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}


@contextmanager
def open_ours(path: str | Path, format_name: str, version: int, writer: str, kinds: dict[str, str] | None = None):
    """Open one of our files for reading, yield (file, attrs); UsageError (one line) when it is missing, foreign,
    too new, reads outside itself, has a root attribute not of its kind in `kinds` (`files.attributes`), or is
    damaged while read inside the block."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such file; give a file written by `{writer}`")
    if not h5py.is_hdf5(path):
        raise UsageError(f"{path}: not an HDF5 file; give a file written by `{writer}`")
    try:
        with h5py.File(path, "r") as f:
            attrs = text_attrs(f)
            if attrs.get("format") != format_name:
                raise UsageError(f"{path}: an HDF5 file, but not a {format_name.replace('-', ' ')} file (no format="
                                 f"{format_name!r} attribute); give a "
                                 f"file written by `{writer}`")
            try:
                found = int(attrs.get("schema_version", 0))
            except (TypeError, ValueError):
                raise UsageError(f"{path}: its schema_version {attrs.get('schema_version')!r} is not a number; "
                                 f"the file was edited or damaged") from None
            if found > version:
                raise UsageError(f"{path}: schema version {found} of {format_name} is newer than this landscape "
                                 f"({__version__}, schema {version}); upgrade landscape to read it")
            check_self_contained(f, path)
            check_kinds(attrs, kinds or {}, path, f"make it again with `{writer}`")
            yield f, attrs
    except UsageError:
        raise
    except Exception as exc:  # h5py reports damage as OSError, KeyError, ValueError, RuntimeError, TypeError...
        kind = format_name.removeprefix("landscape-")
        raise UsageError(f"{path}: unreadable {kind} file, it may be truncated or corrupt (or edited) "
                         f"({type(exc).__name__}: {' '.join(str(exc).split())[:120]})") from None


def read_versioned(path: str | Path, format_name: str, version: int, writer: str, read,
                   kinds: dict[str, str] | None = None):
    """`read(file, attrs)` inside `open_ours`: every error while reading is one line."""
    with open_ours(path, format_name, version, writer, kinds) as (f, attrs):
        return read(f, attrs)


def file_format(path: str | Path) -> str | None:
    """The `format` attribute of an HDF5 file, or None when it has none or is not HDF5."""
    try:
        with h5py.File(path, "r") as f:
            value = f.attrs.get("format")
    except Exception:
        return None
    return value.decode() if isinstance(value, bytes) else (str(value) if value is not None else None)
