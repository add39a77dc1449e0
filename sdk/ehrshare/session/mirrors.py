"""The asyncio mirrors of :class:`~ehrshare.session.Session`'s verbs, generated from the sync
methods so that the two cannot drift (same arguments), each run in a worker thread."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any, Concatenate, ParamSpec, TypeVar

__all__ = ["in_thread"]

_S = TypeVar("_S")
_P = ParamSpec("_P")
_R = TypeVar("_R")


def in_thread(
    method: Callable[Concatenate[_S, _P], _R],
) -> Callable[Concatenate[_S, _P], Coroutine[Any, Any, _R]]:
    """The asyncio mirror of a sync :class:`Session` method: same signature (generated, so the
    two cannot drift), run in a worker thread."""

    @functools.wraps(method)
    async def mirror(self: _S, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        return await asyncio.to_thread(method, self, *args, **kwargs)

    mirror.__name__ = f"a{method.__name__}"
    mirror.__qualname__ = f"Session.a{method.__name__}"
    mirror.__doc__ = f":meth:`{method.__name__}` in a worker thread."
    return mirror
