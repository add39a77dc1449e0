"""A FHIR R4 REST API in front of the SDK, for hospital systems (``ehrshare fhir serve``).

One module per concept: :mod:`.auth` (who is calling; bearer tokens bound to wallets),
:mod:`.mtls` (mutual TLS with the wallet's TLS certificate), :mod:`.gateway` (requests to
sessions, answers as FHIR JSON), :mod:`.transaction` (transaction Bundles), :mod:`.consent`
(grants as Consent),
:mod:`.auditevent` (the operation log as AuditEvent), :mod:`.provenance` (record versions as
Provenance), :mod:`.capability` (the CapabilityStatement), :mod:`.outcome` (errors as
OperationOutcome), :mod:`.members` (members as references), :mod:`.server` (HTTP). FHIR content
and record types: :mod:`ehrshare.fhir`.
"""

from __future__ import annotations

from ehrshare.fhirapi.auth import TokenBook, token_file_for
from ehrshare.fhirapi.gateway import Gateway
from ehrshare.fhirapi.server import FhirServer, parse_listen

__all__ = ["FhirServer", "Gateway", "TokenBook", "parse_listen", "token_file_for"]
