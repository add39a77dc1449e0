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


def _peer_saying(tmp_path: Path, version: str) -> Path:
    """Stand-in binaries whose ``peer version`` says ``version`` (nothing else runs)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "peer").write_text(f"#!/bin/sh\necho 'peer:'\necho ' Version: {version}'\n")
    for name in ("orderer", "configtxgen"):
        (bin_dir / name).write_text("#!/bin/sh\nexit 1\n")
    for name in ("peer", "orderer", "configtxgen"):
        (bin_dir / name).chmod(0o755)
    return bin_dir


def test_smartbft_on_fabric_2_is_refused_before_anything_is_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EHRSHARE_FABRIC_BIN", str(_peer_saying(tmp_path, "2.5.16")))
    options = FabricOptions(orderers=4, orderer_type="BFT")
    with pytest.raises(ConsortiumError, match=r"SmartBFT orderers need Fabric 3\.x; .* 2\.5\.16"):
        Consortium.init(tmp_path / "c", ledger="fabric", fabric=options)
    assert not (tmp_path / "c").exists()


def test_smartbft_with_three_orderers_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConsortiumError, match="orderers is 3; SmartBFT runs with 4"):
        Consortium.init(
            tmp_path / "c", ledger="fabric", fabric=FabricOptions(orderers=3, orderer_type="BFT")
        )
    assert not (tmp_path / "c").exists()


def test_the_cli_refuses_bft_on_fabric_2_with_its_exit_code_and_no_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from ehrshare.cli import app

    monkeypatch.setenv("EHRSHARE_FABRIC_BIN", str(_peer_saying(tmp_path, "2.3.2")))
    args = ["consortium", "init", str(tmp_path / "c"), "--ledger", "fabric"]
    result = CliRunner().invoke(app, [*args, "--orderer-type", "bft"])
    assert result.exit_code == ConsortiumError.exit_code, result.output
    assert "SmartBFT orderers need Fabric 3.x" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "c").exists()
    wrong = CliRunner().invoke(app, [*args, "--orderer-type", "pbft"])
    assert wrong.exit_code == 2 and "is not raft or bft" in wrong.output
