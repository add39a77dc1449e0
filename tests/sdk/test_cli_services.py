"""CLI: a consortium whose services are processes (init, service-commands) and wallet encrypt."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ehrshare.cli import app
from ehrshare.network.supervisor import free_loopback_ports
from ehrshare.wallet import PASSPHRASE_ENV, Wallet

runner = CliRunner()


def invoke(*args: str, code: int = 0, env: dict[str, str] | None = None) -> str:
    result = runner.invoke(app, list(args), env=env)
    assert result.exit_code == code, f"{args}: exit {result.exit_code}\n{result.output}"
    return result.output


def test_init_with_processes_then_service_commands(tmp_path: Path) -> None:
    ports = free_loopback_ports(6)
    directory = tmp_path / "c"
    out = invoke(
        "consortium", "init", str(directory), "--services", "processes",
        "--ports", ",".join(map(str, ports)), "--json",
    )  # fmt: skip
    assert json.loads(out)["threshold"] == 2
    listed = json.loads(invoke("consortium", "service-commands", "-p", str(directory), "--json"))
    proxies = ["proxy-hospitala", "proxy-hospitalb", "proxy-hospitalc"]
    assert [c["name"] for c in listed] == ["kgc1", "kgc2", "kgc3", *proxies]
    assert [c["address"] for c in listed] == [f"127.0.0.1:{p}" for p in ports[3:] + ports[:3]]
    text = invoke("consortium", "service-commands", "-p", str(directory))
    lines = text.strip().splitlines()
    for line, name in zip(lines[3:], proxies, strict=True):
        argv = shlex.split(line)
        assert argv[:3] == ["ehrshare", "proxy", "serve"]
        assert argv[argv.index("--name") + 1] == name


def test_service_commands_refuse_an_in_process_profile(tmp_path: Path) -> None:
    invoke("consortium", "init", str(tmp_path / "c"), "--json")
    out = invoke("consortium", "service-commands", "-p", str(tmp_path / "c"), code=3)
    assert "every service in-process" in out


def test_bad_ports_are_usage_errors(tmp_path: Path) -> None:
    out = invoke("consortium", "init", str(tmp_path / "c"), "--services", "processes",
                 "--ports", "70a0", code=2)  # fmt: skip
    assert "--ports '70a0' is not a comma-separated list" in out


def test_wallet_encrypt_then_commands_need_the_passphrase(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    directory = str(tmp_path / "c")
    invoke("consortium", "init", directory, "--json")
    invoke("consortium", "add-member", "bob", "--hospital", "HospitalA", "--role", "patient",
           "-p", directory)  # fmt: skip
    invoke("wallet", "encrypt", "-p", directory, "-w", "bob", env={PASSPHRASE_ENV: "pw-1"})
    assert Wallet(tmp_path / "c" / "wallets" / "bob", use_env=False).encrypted
    out = invoke("wallet", "encrypt", "-p", directory, "-w", "bob", code=3)
    assert "already encrypted" in out
    # No passphrase and no terminal: a clear configuration error, nothing acted on.
    out = invoke("enroll", "-p", directory, "-w", "bob", code=3)
    assert f"is encrypted: set {PASSPHRASE_ENV}" in out
    out = invoke("enroll", "-p", directory, "-w", "bob", code=3, env={PASSPHRASE_ENV: "nope"})
    assert "wrong wallet passphrase" in out
    invoke("enroll", "-p", directory, "-w", "bob", "--json", env={PASSPHRASE_ENV: "pw-1"})
    assert (
        (tmp_path / "c" / "wallets" / "bob" / "ibe.key")
        .read_bytes()
        .startswith(b"ehrshare-wallet-v1")
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--restart-backoff", "0"], "0 < backoff <= backoff_max"),
        (["--restart-backoff", "5", "--restart-backoff-max", "1"], "0 < backoff <= backoff_max"),
        (["--stable-after", "-1"], "stable_after > 0"),
        (["--give-up-after", "0"], "give_up_after must be at least 1, got 0"),
    ],
)
@pytest.mark.parametrize("command", [["network", "up"], ["consortium", "serve"]])
def test_a_nonsense_restart_policy_is_a_usage_error_and_starts_nothing(
    tmp_path: Path, command: list[str], options: list[str], message: str
) -> None:
    directory = tmp_path / "c"
    invoke(
        "consortium", "init", str(directory), "--services", "processes",
        "--ports", ",".join(map(str, free_loopback_ports(6))), "--json",
    )  # fmt: skip
    out = invoke(*command, "-p", str(directory), *options, code=2)
    assert message in " ".join(out.split()) and "Traceback" not in out
    assert not (directory / "run").exists()  # no supervisor, no service, no state file


def test_network_restart_without_a_running_network_says_how_to_start_it(tmp_path: Path) -> None:
    directory = tmp_path / "c"
    invoke(
        "consortium", "init", str(directory), "--services", "processes",
        "--ports", ",".join(map(str, free_loopback_ports(6))), "--json",
    )  # fmt: skip
    out = invoke("network", "restart", "kgc1", "-p", str(directory), code=4)
    assert "no live supervisor" in out and "ehrshare network up" in " ".join(out.split())
    assert not (directory / "run" / "kgc1.restart").exists()
