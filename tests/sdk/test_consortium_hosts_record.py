"""``hosts.json`` (ehrshare.network.consortium_hosts): read back exactly, and hand edits refused
with a clear configuration error (exit 3) before anything is made or removed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ehrshare.errors import EXIT_CONFIG
from ehrshare.network.consortium_hosts import (
    HOSTS_FILE,
    ConsortiumHosts,
    HostsRecordError,
    hosts_netns,
    load_hosts,
    remove_hosts,
)


def _record(tag: str = "ab12") -> ConsortiumHosts:
    hosts = {
        label: {
            "label": label,
            "netns": f"ehr{tag}-{label.lower()}",
            "address": f"10.231.4.{10 + i}",
            "outside": f"ehr{tag}h{i}",
            "inside": f"ehr{tag}n{i}",
        }
        for i, label in enumerate(["HospitalAMSP", "OrdererMSP"])
    }
    return ConsortiumHosts("netns", tag, "10.231.4.0/24", Path("/nowhere/ab12.json"), hosts)


def _write(directory: Path, data: object) -> None:
    (directory / HOSTS_FILE).write_text(json.dumps(data), encoding="utf-8")


def test_a_record_reads_back_as_written_and_none_means_local(tmp_path: Path) -> None:
    assert load_hosts(tmp_path) is None and hosts_netns(tmp_path) is None
    assert remove_hosts(tmp_path) == []
    _write(tmp_path, _record().as_dict())
    assert load_hosts(tmp_path) == _record()
    assert hosts_netns(tmp_path) == {
        "10.231.4.10": "ehrab12-hospitalamsp",
        "10.231.4.11": "ehrab12-orderermsp",
    }
    assert remove_hosts(tmp_path) == []  # its state file is gone: nothing of it exists


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: "{not json", "is not readable JSON"),
        (lambda d: {**d, "version": 9}, "is not a hosts record"),
        (lambda d: {**d, "hosts": {"X": {"label": "X"}}}, "is not a hosts record"),
        (
            lambda d: {**d, "hosts": {"A": {**d["hosts"]["HospitalAMSP"], "netns": "prod-db"}}},
            "names namespaces that are not layout ab12's",
        ),
        (lambda d: {**d, "hosts": {}}, "names namespaces that are not layout ab12's"),
    ],
    ids=["not-json", "version", "fields", "foreign-netns", "empty"],
)
def test_hand_edited_records_are_configuration_errors(
    tmp_path: Path, edit: object, message: str
) -> None:
    data = edit(_record().as_dict())  # type: ignore[operator]
    (tmp_path / HOSTS_FILE).write_text(
        data if isinstance(data, str) else json.dumps(data), encoding="utf-8"
    )
    with pytest.raises(HostsRecordError, match=message) as info:
        load_hosts(tmp_path)
    assert info.value.exit_code == EXIT_CONFIG and info.value.hint
    with pytest.raises(HostsRecordError):
        remove_hosts(tmp_path)


def test_network_down_on_a_hand_edited_record_exits_3_without_a_traceback(tmp_path: Path) -> None:
    profile = tmp_path / "c"
    done = subprocess.run(
        [sys.executable, "-m", "ehrshare", "consortium", "init", str(profile), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    _write(profile, {**_record().as_dict(), "hosts": {}})
    done = subprocess.run(
        [sys.executable, "-m", "ehrshare", "network", "down", "-p", str(profile)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode == 3, done.stderr
    assert "hosts.json" in done.stderr and "Traceback" not in done.stderr
