"""The CLI's two rich consoles, made in one place.

Messages are soft-wrapped: a line is never broken at the terminal's width, so a path, an id or a
command to copy stays whole and a script (or a test) can match it whatever the width. Tables
still fit themselves to the width.
"""

from __future__ import annotations

from rich.console import Console

__all__ = ["err_console", "out_console"]


def err_console(*, quiet: bool = False) -> Console:
    """A console on stderr for progress, warnings and errors."""
    return Console(stderr=True, soft_wrap=True, quiet=quiet)


def out_console() -> Console:
    """A console on stdout for results meant for a person."""
    return Console(soft_wrap=True)
