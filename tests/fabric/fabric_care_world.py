"""One Fabric 2.3 consortium for the care-relationship tests (emergency access, guardians):
patients of hospital A (alice, kid, pat), clinicians of A and B (adams, baker), a guardian
(gwen), and admins of hospitals B and C besides A's own, every non-admin enrolled with a
published lab type key and every admin registered. Built once per test module
(``from fabric_care_world import consortium``); tests use patients of their own so that
they do not see each other's records, grants or policies."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ehrshare.provisioning import ADMIN_WALLET, Consortium

__all__ = ["MEMBERS", "consortium"]

MEMBERS = (
    ("alice", "HospitalA", "patient"),
    ("kid", "HospitalA", "patient"),
    ("pat", "HospitalA", "patient"),
    ("adams", "HospitalA", "clinician"),
    ("baker", "HospitalB", "clinician"),
    ("gwen", "HospitalA", "guardian"),
    ("admin-b", "HospitalB", "admin"),
    ("admin-c", "HospitalC", "admin"),
)


@pytest.fixture(scope="module")
def consortium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Consortium]:
    """The consortium on its running Fabric network, stopped after the module."""
    root: Path = tmp_path_factory.mktemp("fabric-care") / "c"
    with Consortium.init(root, ledger="fabric") as c:
        assert c.network is not None and c.network.running()
        for name, hospital, role in MEMBERS:
            c.add_member(name, hospital, role)
            with c.session(name) as s:
                if role == "admin":
                    s.register()
                else:
                    s.enroll()
                    s.publish_type_keys(["lab"])
        with c.session(ADMIN_WALLET) as admin_a:
            admin_a.register()
        yield c
