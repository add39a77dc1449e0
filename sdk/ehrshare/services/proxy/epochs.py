"""Which grant a re-key id names and whether the grant on chain lists its type-key epoch
(:func:`ehrshare.rekey_delivery.rekey_id`). Pure: no chain calls, no storage."""

from __future__ import annotations

from ehrshare.contract import Grant
from ehrshare.rekey_delivery import split_rekey_id

__all__ = ["covers", "grant_of"]


def grant_of(name: str) -> str:
    """The grant id of a re-key id (with a malformed epoch suffix: the name itself, which no
    grant has)."""
    try:
        return split_rekey_id(name)[0]
    except ValueError:
        return name


def covers(grant: Grant, name: str) -> bool:
    """Whether ``grant`` on chain lists the type-key epoch of re-key id ``name`` (epoch 0: every
    grant; epoch n ≥ 1: a root grant whose ``type_epochs`` holds n)."""
    try:
        _, epoch = split_rekey_id(name)
    except ValueError:
        return False
    return epoch == 0 or (grant.hop == 0 and epoch in grant.type_epochs)
