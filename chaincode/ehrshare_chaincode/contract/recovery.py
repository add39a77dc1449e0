"""Recovery of a lost or stolen wallet: hospital admins rebind an identity to a new certificate.

After identity proofing at a hospital (out of band), that hospital's admin proposes the
rebinding of an identity to a certificate its organisation's CA issued with the same enrollment
id; admins of other hospitals approve it. The approval that brings the count of distinct
hospitals to the proposal's quorum (at least :data:`MIN_QUORUM`) rebinds the identity in the
same transaction: from that commit on the identity is pinned to the new certificate, and
:class:`~.context.TxContext` refuses every other certificate of the identity in every function
(the KGC nodes compare GetIdentity's ``cert_sha256`` and refuse the old one as well). The IBE
identity stays, so records, grants and type keys stay valid.

What this module must not do: let one hospital reach a quorum alone, let an approval of a
proposal made against an earlier binding rebind again, or count an approval twice.
"""

from __future__ import annotations

from typing import Any, Final

from ..auditlog import SYSTEM_CHAIN
from ..certs import issued_by, parse_certificate
from ..stub import ChaincodeError
from .checks import cert_arg, check_ibe, check_int
from .context import ADMIN, PATIENT, TxContext
from .functions import evaluate, submit
from .identities import load_identity
from .keys import K_IBE, K_IDENTITY, K_ORG_CA, K_REBINDING

__all__ = ["MIN_QUORUM", "PROPOSAL_TTL_S", "RECOVERABLE_ROLES", "Recovery"]

MIN_QUORUM: Final = 2
"""Hospitals whose admins must approve a rebinding, at least (a proposal may ask for more)."""
PROPOSAL_TTL_S: Final = 7 * 24 * 3600
"""A proposal not approved by its quorum within this time is void (propose again)."""
RECOVERABLE_ROLES: Final = ("patient", "clinician", "auditor")
"""Members who recover this way; services and admins are re-issued by their organisation."""


class Recovery:
    """ProposeRebinding, ApproveRebinding and GetRebinding."""

    @submit
    def ProposeRebinding(self, ctx: TxContext, ibe_id: str, cert_pem: str, quorum: str = "") -> Any:
        """An admin proposes to rebind ``ibe_id`` to a new certificate (counts as its approval).

        The certificate must be a member certificate the identity's organisation's registered
        CA issued, valid now, with the identity's enrollment id, and not the bound one.
        ``quorum`` is how many distinct hospitals must approve ("" means :data:`MIN_QUORUM`;
        never fewer). Proposing the same certificate again while its proposal is open approves
        it (a retry after a crash completes it).
        """
        admin = ctx.registered(ADMIN)
        ident = load_identity(ctx, ibe_id)
        if ident["role"] not in RECOVERABLE_ROLES:
            raise ChaincodeError(
                f"identity {ibe_id} has role {ident['role']}; only "
                + ", ".join(RECOVERABLE_ROLES)
                + " identities are rebound by recovery"
            )
        n_orgs = len(ctx.stub.get_state_by_partial_composite_key(K_ORG_CA, []))
        need = MIN_QUORUM if quorum == "" else check_int(quorum, "quorum", MIN_QUORUM, 64)
        raw = cert_arg(cert_pem, "certificate")
        cert = parse_certificate(raw)
        msp_id = str(ident["msp_id"])
        enrollment_id = ibe_id.split("/", 1)[1]
        if cert.enrollment_id != enrollment_id:
            raise ChaincodeError(
                f"certificate of {cert.enrollment_id} does not name identity {ibe_id} "
                f"(its common name must be {enrollment_id})"
            )
        org_ca = ctx.get_json(K_ORG_CA, msp_id)
        if org_ca is None:
            raise ChaincodeError(f"the ca of {msp_id} is not registered")
        problem = issued_by(raw, str(org_ca["ca_pem"]).encode(), now=ctx.now, org=msp_id)
        if problem is not None:
            raise ChaincodeError(problem)
        if cert.sha256 == ident["cert_sha256"]:
            raise ChaincodeError(f"certificate {cert.sha256} is already bound to {ibe_id}")
        current = ctx.get_json(K_REBINDING, ibe_id, cert.sha256)
        if current is not None and _open(ctx, current, ident):
            return self._approve(ctx, current, ident)
        if need > n_orgs:
            raise ChaincodeError(
                f"quorum {need} needs more hospitals than the {n_orgs} with a registered ca"
            )
        proposal = {
            "ibe_id": ibe_id,
            "cert_pem": raw.decode(),
            "cert_sha256": cert.sha256,
            "from_sha256": ident["cert_sha256"],
            "quorum": need,
            "approvals": [],
            "status": "open",
            "proposed_at": ctx.now,
            "expires_at": ctx.now + PROPOSAL_TTL_S,
            "proposed_by": admin.name,
        }
        ctx.log(
            _chain(ident),
            "ProposeRebinding",
            "ok",
            detail={"ibe_id": ibe_id, "cert_sha256": cert.sha256, "quorum": need},
        )
        return self._approve(ctx, proposal, ident)

    @submit
    def ApproveRebinding(self, ctx: TxContext, ibe_id: str, cert_sha256: str) -> Any:
        """An admin of another hospital approves an open proposal; at the quorum it takes effect.

        One approval per hospital: a second approval from a hospital that approved is refused.
        """
        ctx.registered(ADMIN)
        ident = load_identity(ctx, ibe_id)
        proposal = ctx.get_json(K_REBINDING, ibe_id, cert_sha256)
        if proposal is None:
            raise ChaincodeError(
                f"no rebinding of {ibe_id} to certificate {cert_sha256} was proposed"
            )
        if proposal["status"] == "done":
            raise ChaincodeError(
                f"the rebinding of {ibe_id} to certificate {cert_sha256} already took effect"
            )
        if not _open(ctx, proposal, ident):
            raise ChaincodeError(
                f"the rebinding of {ibe_id} to certificate {cert_sha256} is void (it expired or "
                "the identity was rebound since); propose it again"
            )
        return self._approve(ctx, proposal, ident)

    @evaluate
    def GetRebinding(self, ctx: TxContext, ibe_id: str, cert_sha256: str) -> Any:
        """A rebinding proposal and its approvals (admins, and the identity itself)."""
        caller = ctx.registered()
        check_ibe(ibe_id)
        if caller.role != ADMIN and caller.ibe_id != ibe_id:
            raise ChaincodeError(f"identity {caller.name} may not read rebindings of {ibe_id}")
        proposal = ctx.get_json(K_REBINDING, ibe_id, cert_sha256)
        if proposal is None:
            raise ChaincodeError(
                f"no rebinding of {ibe_id} to certificate {cert_sha256} was proposed"
            )
        return proposal

    def _approve(self, ctx: TxContext, proposal: dict[str, Any], ident: dict[str, Any]) -> Any:
        admin = ctx.caller
        ibe_id, sha = proposal["ibe_id"], proposal["cert_sha256"]
        if any(a["msp_id"] == admin.msp_id for a in proposal["approvals"]):
            raise ChaincodeError(
                f"hospital {admin.msp_id} already approved the rebinding of {ibe_id} to "
                f"certificate {sha}"
            )
        proposal["approvals"].append({"admin": admin.name, "msp_id": admin.msp_id, "at": ctx.now})
        count = len(proposal["approvals"])
        ctx.log(
            _chain(ident),
            "ApproveRebinding",
            "ok",
            detail={"ibe_id": ibe_id, "cert_sha256": sha, "approvals": count},
        )
        if count >= int(proposal["quorum"]):
            _rebind(ctx, proposal, ident)
        ctx.put_json(proposal, K_REBINDING, ibe_id, sha)
        return proposal


def _chain(ident: dict[str, Any]) -> str:
    return str(ident["ibe_id"]) if ident["role"] == PATIENT else SYSTEM_CHAIN


def _open(ctx: TxContext, proposal: dict[str, Any], ident: dict[str, Any]) -> bool:
    return (
        proposal["status"] == "open"
        and ctx.now <= int(proposal["expires_at"])
        and proposal["from_sha256"] == ident["cert_sha256"]
    )


def _rebind(ctx: TxContext, proposal: dict[str, Any], ident: dict[str, Any]) -> None:
    """Bind the identity to the proposal's certificate; every other certificate is refused."""
    ibe_id = str(ident["ibe_id"])
    cert = parse_certificate(str(proposal["cert_pem"]).encode())
    link = ctx.get_json(K_IBE, ibe_id)
    assert isinstance(link, dict)  # load_identity found the identity through this link
    old_key = str(link["client_key"])
    rebound = dict(ident)
    rebound.update(
        {
            "subject": cert.subject,
            "issuer": cert.issuer,
            "cert_sha256": cert.sha256,
            "pinned": True,
            "rebound_at": ctx.now,
            "previous_cert_sha256": ident["cert_sha256"],
        }
    )
    if cert.client_key != old_key:
        # The old subject/issuer pair keeps a tombstone, so its certificates stay refused.
        tomb = {"ibe_id": ibe_id, "msp_id": ident["msp_id"], "revoked_at": ctx.now}
        ctx.put_json(tomb, K_IDENTITY, old_key)
        ctx.put_json({"client_key": cert.client_key}, K_IBE, ibe_id)
    ctx.put_json(rebound, K_IDENTITY, cert.client_key)
    proposal["status"] = "done"
    proposal["rebound_at"] = ctx.now
    ctx.log(
        _chain(ident),
        "Rebound",
        "ok",
        detail={
            "ibe_id": ibe_id,
            "cert_sha256": cert.sha256,
            "previous_cert_sha256": ident["cert_sha256"],
            "approved_by": [a["admin"] for a in proposal["approvals"]],
        },
    )
