"""The project's own error types: the lowest layer, imported by every other.

:class:`InputError` means *bad input*: a file, value or setting the user gave that cannot be used. Its message is
one line meant for the user; the CLI prints it and exits 2, the docks show it. Anything else that escapes is a bug.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input, with a one-line message for the user (a ``ValueError``, so callers may catch either)."""


def positive_int(value, label: str) -> int:
    """``value`` as an int when it is a whole number ≥ 1 (``3`` or ``3.0``); else an InputError naming ``label``."""
    try:
        ok = int(value) == value and value >= 1
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise InputError(f"{label} must be a positive integer, got {value!r}")
    return int(value)


def check_seed(value, label: str = "seed", *, allow_none: bool = True) -> int | None:
    """A random seed as an int ≥ 0 (``3`` or ``3.0``; None where ``allow_none``: fresh entropy); else an InputError
    naming ``label`` (NumPy's own refusal of a negative, fractional or text seed is an internal traceback)."""
    if value is None and allow_none:
        return None
    try:
        ok = not isinstance(value, (bool, str, bytes)) and int(value) == value and value >= 0
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise InputError(f"{label} must be a whole number ≥ 0{' or None' if allow_none else ''}, got {value!r}")
    return int(value)
