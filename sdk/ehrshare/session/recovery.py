"""Recovery of a lost or stolen wallet, as a hospital admin's session runs it.

After identity proofing at its hospital (out of band), an admin proposes on chain to rebind the
member's identity to the certificate of the member's new wallet; admins of other hospitals run
the same call, which approves. The chaincode rebinds when a quorum of distinct hospitals has
approved (docs/chaincode.md, *Recovery of a lost wallet*). Nothing here issues certificates
(:meth:`ehrshare.provisioning.Consortium.reissue_member` does) or touches wallets.
"""

from __future__ import annotations

import hashlib
import logging

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ehrshare.contract.types import Rebinding
from ehrshare.faults import fault_point
from ehrshare.session.core import SessionCore
from ehrshare.session.errors import RequestRejected

_log = logging.getLogger(__name__)

__all__ = ["MemberRecovery", "certificate_sha256"]


def certificate_sha256(cert_pem: str) -> str:
    """The SHA-256 of a PEM certificate's DER bytes, as the chaincode names certificates."""
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


class MemberRecovery(SessionCore):
    """A session's part in recovering another member's lost wallet (admins only)."""

    def recover_member(self, ibe_id: str, cert_pem: str, *, quorum: int | None = None) -> Rebinding:
        """Propose, or approve, rebinding ``ibe_id`` to the certificate ``cert_pem``.

        Safe to run again (after a crash, or by every approving admin): a rebinding that took
        effect, or one this admin's hospital already approved, is returned as it is; an open
        one is approved; otherwise a new proposal is made. ``quorum`` (at least 2) applies to
        a new proposal only. Returns the proposal; ``.done`` tells whether it took effect.
        """
        sha = certificate_sha256(cert_pem)
        current: Rebinding | None
        try:
            current = self.chain.get_rebinding(ibe_id, sha)
        except RequestRejected as exc:
            if "was proposed" not in exc.reason:
                raise
            current = None
        if current is not None and (
            current.done
            or (self.identity.msp_id in current.approved_by and current.expires_at >= self._now())
        ):
            return current
        fault_point("recover.before_submit")
        result = self.chain.propose_rebinding(ibe_id, cert_pem, quorum)
        _log.info(
            "rebinding of %s to certificate %s: %s (%d of %d hospitals)",
            ibe_id,
            sha[:16],
            result.status,
            len(result.approved_by),
            result.quorum,
        )
        fault_point("recover.after_submit")
        return result

    def rebinding(self, ibe_id: str, cert_sha256: str) -> Rebinding:
        """A rebinding proposal of ``ibe_id`` and its approvals."""
        return self.chain.get_rebinding(ibe_id, cert_sha256)
