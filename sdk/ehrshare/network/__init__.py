"""Helpers that install and run the real network's processes (Kubo today) on 127.0.0.1.

Scripts and configuration live in the repository's ``network/`` folder; the Python the SDK and
the tests import lives here. Nothing in this package is needed by the embedded backend.
"""

from __future__ import annotations

__all__: list[str] = []
