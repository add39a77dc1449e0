"""Error types shared by every content-addressed store.

One class per way a storage call can fail, so callers can tell "try again later" (the daemon is
down) from "this pointer is dangling" (content not found) from "someone altered the bytes"
(integrity). Messages name the CID or URL involved and never carry record contents.
"""

from __future__ import annotations

from ehrshare.errors import EXIT_UNAVAILABLE, EhrshareError, IntegrityFailure, Unavailable

__all__ = ["ContentNotFound", "IntegrityError", "StorageError", "StorageUnavailable"]


class StorageError(EhrshareError):
    """Base class: a storage operation failed for a reason not covered by a subclass (exit
    code 4, as for a store that is down)."""

    exit_code = EXIT_UNAVAILABLE


class StorageUnavailable(Unavailable, StorageError):
    """The store cannot be reached at all (daemon down, wrong URL, timeout on connect).

    Retrying later, or starting the daemon, can fix it; the data itself is not at fault.
    """


class ContentNotFound(IntegrityFailure, StorageError):
    """The store does not hold the content named by a CID (never added, unpinned or deleted):
    a dangling pointer, an integrity failure (exit code 5)."""

    def __init__(self, cid: str, detail: str = "") -> None:
        self.cid = cid
        message = f"content {cid} not found"
        super().__init__(f"{message}: {detail}" if detail else message)


class IntegrityError(IntegrityFailure, StorageError):
    """Bytes read back do not match the CID or the SHA-256 recorded for them.

    Never swallow this: it means the store (or something between it and us) returned
    altered or truncated content.
    """

    def __init__(self, cid: str, detail: str) -> None:
        self.cid = cid
        super().__init__(f"integrity check failed for {cid}: {detail}")
