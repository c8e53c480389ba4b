"""One base for every mistake a user can fix, and one way for a command-line tool to report it.

Each package raises its own subclass (``ConfigError``, ``DataError``, ``ModelDirError``...) so callers can
catch what they handle; a CLI wraps its ``main`` in :func:`cli`, which turns any :class:`UserError` (and an
``OSError``: a missing or unreadable file) into one ``error:`` line on stderr and exit status 2.
"""
from __future__ import annotations

import functools
import sys
from typing import Callable, Sequence


class UserError(ValueError):
    """A mistake in the user's input (a recipe, a file, a directory, a setting); the message is one line that
    names the fix."""


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (the one-line form every CLI prints)."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def cli(main: Callable[..., int], errors: tuple[type[BaseException], ...] = ()) -> Callable[..., int]:
    """``main`` with user errors (``UserError``, ``OSError`` and ``errors``) reported as one ``error:`` line on
    stderr and exit status 2, the same for every command of the package."""

    @functools.wraps(main)
    def wrapped(argv: Sequence[str] | None = None, *args, **kwargs) -> int:
        try:
            return main(argv, *args, **kwargs)
        except (UserError, OSError, *errors) as exc:
            print(f"error: {first_line(exc)}", file=sys.stderr)
            return 2

    return wrapped
