"""The project's own error types: the lowest layer, imported by every other.

:class:`InputError` means *bad input*: a file, value or setting the user gave that cannot be used. Its message is
one line meant for the user; the CLI prints it and exits 2, the docks show it. Anything else that escapes is a bug.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input, with a one-line message for the user (a ``ValueError``, so callers may catch either)."""
