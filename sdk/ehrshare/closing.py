"""``Closing``: the context-manager half of every object that has a ``close()``.

``with thing:`` returns the object itself and calls ``close()`` on the way out, whatever
happened inside. It must not add behaviour beyond that (no exception handling, no state).
"""

from __future__ import annotations

from types import TracebackType
from typing import Self

__all__ = ["Closing"]


class Closing:
    """Base class for objects closed by ``with``: subclasses define :meth:`close`."""

    def close(self) -> None:
        """Release what the object holds."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
