"""The command line is reachable both as `ehrshare` and as `python -m ehrshare`."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from ehrshare.cli import app


def test_help_lists_bench_group() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "bench" in result.output


def test_python_dash_m_runs_the_same_cli() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "ehrshare", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert "Usage" in out.stdout
    assert "bench" in out.stdout


def test_unknown_command_exits_with_usage_error() -> None:
    result = CliRunner().invoke(app, ["no-such-command"])
    assert result.exit_code == 2


def _options(group: str, command: str) -> dict[str, tuple[tuple[str, ...], bool, object]]:
    from typer.main import get_command

    cmd = get_command(app).commands[group].commands[command]
    return {p.name: (tuple(p.opts + p.secondary_opts), p.required, p.default) for p in cmd.params}


def test_serve_commands_keep_their_flags_defaults_and_required_options() -> None:
    shared = {
        "state_dir": (("--state-dir",), True, None),
        "listen": (("--listen",), False, "127.0.0.1:7060"),
        "msp_id": (("--msp-id",), True, None),
        "cert": (("--cert",), True, None),
        "key": (("--key",), True, None),
        "ledger": (("--ledger",), False, None),
        "profile": (("--profile",), False, None),
        "consortium_id": (("--consortium-id",), False, ""),
        "channel": (("--channel",), False, "ehrshare"),
        "chaincode": (("--chaincode",), False, "ehrshare"),
        "ledger_tls_cert": (("--ledger-tls-cert",), False, None),
        "ledger_tls_key": (("--ledger-tls-key",), False, None),
        "ledger_endorsers": (("--ledger-endorsers",), False, None),
        "tls_cert": (("--tls-cert",), True, None),
        "tls_key": (("--tls-key",), True, None),
        "client_ca": (("--client-ca",), False, []),
        "client_ca_dir": (("--client-ca-dir",), False, None),
        "log_file": (("--log-file",), False, None),
        "port_file": (("--port-file",), False, None),
    }
    assert _options("kgc", "serve") == shared | {
        "index": (("--index",), True, None),
        "node_key_file": (("--node-key-file",), True, None),
        "rate_limit": (("--rate-limit",), False, 60),
        "max_clock_skew": (("--max-clock-skew",), False, 300),
        "follow_dkg": (("--follow-dkg", "--no-follow-dkg"), False, True),
    }
    assert _options("proxy", "serve") == shared | {
        "key_file": (("--key-file",), True, None),
        "name": (("--name",), False, "proxy"),
        "follow": (("--follow-revocations", "--no-follow-revocations"), False, True),
    }


def test_serve_needs_exactly_one_ledger_source() -> None:
    base = ["--state-dir", "s", "--msp-id", "M", "--cert", "c", "--key", "k"]
    base += ["--tls-cert", "t", "--tls-key", "tk", "--key-file", "pk"]
    for extra in ([], ["--ledger", "l", "--profile", "p.yaml"]):
        result = CliRunner().invoke(app, ["proxy", "serve", *base, *extra])
        assert result.exit_code == 2, result.output
        assert "either --ledger <embedded dir> or --profile <file>" in result.output
