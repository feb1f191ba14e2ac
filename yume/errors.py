"""Errors the command line reports as one readable line (no traceback unless `-v`)."""

from __future__ import annotations


class StateFileError(RuntimeError):
    """A file the pipeline wrote earlier (a checkpoint, an export, a record) is unreadable.

    The message names the file, what is wrong with it and what to do; nothing is guessed in its place.
    """
