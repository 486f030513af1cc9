"""The kinds of the attributes in our files, checked once when a file is read (no torch).

Every reader declares the kind of each attribute that it or a view converts (a number, a whole number, text, a
flag, a bare file name beside the file); `check_kinds` turns a value of the wrong kind into the file's one-line
"damaged or edited" UsageError, so a hand-edited or foreign file never reaches a `float()`, `int()` or `Path`
deep inside a view. Attributes a file does not have (or, in a stored JSON config, that are null) are left to the
reader's defaults.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from landscape.errors import UsageError

NUMBER = "a number"
WHOLE = "a whole number"
STRING = "text"
FLAG = "true or false"
FILE_NAME = "a file name beside this file"
NUMBERS = "a list of numbers"


def is_number(value) -> bool:
    """A real number (NaN and infinities included), not a flag."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def is_whole(value) -> bool:
    """A whole number, as an integer or as a float with no fraction."""
    return is_number(value) and math.isfinite(float(value)) and float(value) == int(value)


def is_file_name(value) -> bool:
    """A bare name of a file in the same folder ('' for none): no folder part, never '.' or '..'."""
    return isinstance(value, str) and "/" not in value and "\\" not in value and value not in (".", "..") \
        and "\0" not in value


CHECKS = {
    NUMBER: is_number,
    WHOLE: is_whole,
    STRING: lambda value: isinstance(value, str),
    FLAG: lambda value: isinstance(value, (bool, np.bool_)) or (is_whole(value) and int(value) in (0, 1)),
    FILE_NAME: is_file_name,
    NUMBERS: lambda value: isinstance(value, (list, tuple, np.ndarray)) and all(is_number(v) for v in value),
}


def is_numeric(array) -> bool:
    """An array of numbers (or flags), never text or objects: what a dataset of values must hold."""
    dtype = np.asarray(array).dtype
    return np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.bool_)


def wrong_kind(values: Mapping, kinds: Mapping[str, str]) -> str | None:
    """The first attribute of `values` that is not of its kind in `kinds`, said in words; None when all are."""
    for name, kind in kinds.items():
        if values.get(name) is not None and not CHECKS[kind](values[name]):
            return f"its {name} {values[name]!r} is not {kind}"
    return None


def check_kinds(values: Mapping, kinds: Mapping[str, str], path, redo: str) -> None:
    """Raise the file's one-line UsageError when an attribute is not of its declared kind; `redo` says how to make
    the file again."""
    problem = wrong_kind(values, kinds)
    if problem:
        raise UsageError(f"{path}: {problem}; the file was damaged or edited, {redo}")
