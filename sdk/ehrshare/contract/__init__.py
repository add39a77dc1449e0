"""The SDK's typed client for the EHR chaincode: one method per contract function.

Every caller reaches the chaincode through :class:`EhrContract` (records, access, audit,
members) and its DKG-board part, never by a string-named call; whether a function is submitted
or evaluated is decided here, from the chaincode's own function table.
"""

from __future__ import annotations

__all__: list[str] = []
