"""A Fabric channel's blocks, delivered by the peers of two organisations, verify — and edits to
a copy are named: data, a re-hashed header, a signature by a non-orderer, copies that differ.

Our header encoding and hash are checked against Fabric's own: each real block's previous hash
must equal the hash we compute for the block before it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from ehrshare.identity import Identity, Signer
from ehrshare.ledger.envelope import serialize_identity
from ehrshare.ledger.errors import LedgerIntegrityError
from ehrshare.ledger.fabric_blocks import (
    block_hash,
    common,
    data_hash,
    fetch_blocks,
    signed_bytes,
    verify_copies,
)
from ehrshare.ledger.witness import sign_head
from ehrshare.network.fabric import ORDERER_MSP, FabricNet

pytestmark = [pytest.mark.fabric, pytest.mark.slow]

Admins = Callable[[str], tuple[Identity, Signer]]
ORGS = ("HospitalAMSP", "HospitalBMSP")


def _copy(net: FabricNet, admin: tuple[Identity, Signer], msp: str) -> list[Any]:
    cert, key = net.admin_tls(admin[0].msp_id)
    return fetch_blocks(
        address=net.peer_address(msp),
        tls_ca_pem=net.tls_ca(msp).read_bytes(),
        server_name=net.server_name(msp),
        channel=net.spec.channel,
        identity=admin[0],
        signer=admin[1],
        client_tls=(cert.read_bytes(), key.read_bytes()),
    )


def _clone(blocks: list[Any]) -> list[Any]:
    return [common.Block.FromString(b.SerializeToString()) for b in blocks]


def _rehash_from(blocks: list[Any], n: int) -> None:
    blocks[n].header.data_hash = data_hash(blocks[n])
    for k in range(n + 1, len(blocks)):
        blocks[k].header.previous_hash = block_hash(blocks[k - 1])


def test_two_organisations_deliver_one_signed_chain_and_edits_are_named(
    fabric_net: FabricNet, admin_of: Admins
) -> None:
    fabric_net.wait_synced()
    admin = admin_of("HospitalAMSP")
    copies = {msp: _copy(fabric_net, admin, msp) for msp in ORGS}
    height = min(len(c) for c in copies.values())
    assert height >= 3  # genesis, chaincode definitions, the fixture's transactions
    for blocks in copies.values():
        for n in range(1, len(blocks)):
            assert bytes(blocks[n].header.previous_hash) == block_hash(blocks[n - 1])
    report = verify_copies(copies)
    assert report["height"] == height and report["orderer_organisations"] == [ORDERER_MSP]

    target = height - 1
    # An envelope of a block edited in one copy.
    edited = _clone(copies["HospitalBMSP"])
    edited[target].data.data[0] = edited[target].data.data[0] + b"\x00"
    with pytest.raises(LedgerIntegrityError) as info:
        verify_copies({**copies, "HospitalBMSP": edited})
    assert info.value.block == target
    assert info.value.message == f"HospitalBMSP: block {target} data does not match its hash"

    # The same edit with the header's data hash recomputed: the orderer's signature breaks.
    _rehash_from(edited, target)
    with pytest.raises(LedgerIntegrityError) as info:
        verify_copies({**copies, "HospitalBMSP": edited})
    assert info.value.block == target
    assert info.value.message == (
        f"HospitalBMSP: block {target}: its orderer signature does not verify"
    )

    # Re-signed by a hospital admin instead of an orderer.
    resigned = _clone(edited)
    metadata = common.Metadata.FromString(resigned[target].metadata.metadata[0])
    header = common.SignatureHeader(creator=serialize_identity(admin[0]), nonce=b"\x01" * 24)
    sig = metadata.signatures[0]
    sig.signature_header = header.SerializeToString()
    sig.signature = admin[1].sign(
        signed_bytes(resigned[target], bytes(metadata.value), bytes(sig.signature_header))
    )
    resigned[target].metadata.metadata[0] = metadata.SerializeToString()
    with pytest.raises(LedgerIntegrityError) as info:
        verify_copies({**copies, "HospitalBMSP": resigned})
    assert info.value.message == (
        f"HospitalBMSP: block {target}: its signer's organisation HospitalAMSP is not an orderer's"
    )

    # A transaction's validation code (block metadata the peer writes, signed by nobody) changed
    # in one copy: two copies disagree, and neither can be named the odd one.
    flagged = _clone(copies["HospitalBMSP"])
    codes = bytes(flagged[target].metadata.metadata[2])
    flagged[target].metadata.metadata[2] = bytes([codes[0] ^ 11]) + codes[1:]
    assert verify_copies({"HospitalBMSP": flagged})["height"] == len(flagged)  # alone: unseen
    with pytest.raises(LedgerIntegrityError) as info:
        verify_copies({**copies, "HospitalBMSP": flagged})
    assert info.value.block == target
    assert info.value.message == (
        f"block {target}: its transactions' validation codes differ between HospitalAMSP and "
        "HospitalBMSP"
    )

    # A valid but shorter copy agrees on what it has (truncation shows as a lower height).
    short = verify_copies({**copies, "HospitalBMSP": copies["HospitalBMSP"][:-1]})
    assert short["peers"]["HospitalBMSP"] == len(copies["HospitalBMSP"]) - 1
    assert short["height"] == height - 1

    # A head witnessed by HospitalA's admin: held by the agreed chain; when every peer lost the
    # last block, caught — the copies alone agree on a shorter chain.
    witnessed = sign_head(
        channel=fabric_net.spec.channel,
        height=report["height"],
        head=bytes.fromhex(report["head"]),
        orderer=report["orderer"],
        identity=admin[0],
        signer=admin[1],
        signed_at=0,
    )
    held = verify_copies(copies, against=[witnessed])["witnesses"]
    assert [w["witness"] for w in held] == [admin[0].ibe_id]
    cut = {msp: blocks[: height - 1] for msp, blocks in copies.items()}
    assert verify_copies(cut)["height"] == height - 1
    with pytest.raises(LedgerIntegrityError) as info:
        verify_copies(cut, against=[witnessed])
    assert info.value.block == height - 1
    assert info.value.message.endswith(f"blocks {height - 1}..{height - 1} were removed")

    # One organisation's copy alone is checked on its own; an edit there is still named.
    assert verify_copies({"HospitalAMSP": copies["HospitalAMSP"]})["peers"] == {
        "HospitalAMSP": len(copies["HospitalAMSP"])
    }
    with pytest.raises(LedgerIntegrityError, match="its signer's organisation HospitalAMSP"):
        verify_copies({"HospitalBMSP": resigned})
