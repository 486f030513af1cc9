"""CSV that a spreadsheet reads as data: no cell of ours is ever taken for a formula (no torch)."""
from __future__ import annotations

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def inert_cell(value):
    """A text cell starting with =, +, -, @ or a control character gets a leading apostrophe (the spreadsheets'
    own mark for text); numbers, negative ones included (as numbers or as text), are kept as they are."""
    if not isinstance(value, str) or value[:1] not in FORMULA_STARTS:
        return value
    try:
        float(value)  # a number written as text ("-0.5", "-inf") stays a number
        return value
    except ValueError:
        return "'" + value


def inert_row(row) -> list:
    return [inert_cell(value) for value in row]
