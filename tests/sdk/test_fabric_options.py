"""`Consortium.init(ledger="fabric")` refuses bad Fabric options before it creates anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from ehrshare.profile import BackendUnavailable
from ehrshare.provisioning import Consortium, FabricOptions
from ehrshare.runtime import ConsortiumError


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (FabricOptions(orderers=2), "orderers is 2; Raft runs with 1 or 3"),
        (FabricOptions(batch_timeout="1h"), "batch_timeout '1h' must look like 100ms"),
        (FabricOptions(max_message_count=0), "max_message_count 0 is not in 1..10000"),
        (FabricOptions(endorsement="ALL"), "endorsement 'ALL' is not MAJORITY or ANY"),
    ],
)
def test_bad_fabric_options_are_refused_naming_the_option(
    tmp_path: Path, options: FabricOptions, message: str
) -> None:
    with pytest.raises(ConsortiumError, match=message):
        Consortium.init(tmp_path / "c", ledger="fabric", fabric=options)
    assert not (tmp_path / "c").exists()


def test_fabric_options_need_the_fabric_ledger(tmp_path: Path) -> None:
    with pytest.raises(ConsortiumError, match="only used with ledger='fabric'"):
        Consortium.init(tmp_path / "c", fabric=FabricOptions())
    assert not (tmp_path / "c").exists()


def test_missing_binaries_say_make_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EHRSHARE_FABRIC_BIN", str(tmp_path / "nothing-here"))
    with pytest.raises(BackendUnavailable, match="run 'make tools'"):
        Consortium.init(tmp_path / "c", ledger="fabric")
    assert not (tmp_path / "c").exists()
