"""`ehrshare bench crypto` prints JSON with machine metadata, every operation and every target."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from ehrshare.bench.crypto import OPERATIONS, TARGETS, parse_openssl_speed
from ehrshare.cli import app

# Captured from `openssl speed -seconds 1 -evp aes-256-gcm` (OpenSSL 3.0) on the dev machine.
OPENSSL_OUTPUT = """\
version: 3.0.19
built on: Tue Jan 27 2026 UTC
The 'numbers' are in 1000s of bytes per second processed.
type             16 bytes     64 bytes    256 bytes   1024 bytes   8192 bytes  16384 bytes
AES-256-GCM      50487.27k   197660.80k   727786.75k  2051990.53k  4624662.53k  5053136.90k
"""


def test_openssl_speed_parser_reads_the_16384_byte_column() -> None:
    assert parse_openssl_speed(OPENSSL_OUTPUT) == pytest.approx(5053.13690)
    assert parse_openssl_speed("no table here") is None
    assert parse_openssl_speed("AES-256-GCM 1k 2k") is None


@pytest.mark.slow
def test_bench_crypto_json_has_every_operation_and_target() -> None:
    result = CliRunner().invoke(
        app,
        [
            "bench",
            "crypto",
            "--json",
            "--repeat",
            "2",
            "--warmup",
            "0",
            "--aes-mib",
            "1",
            "--openssl-seconds",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["benchmark"] == "crypto"
    assert {"cpu", "python", "timestamp"} <= set(data["machine"])
    assert set(data["operations"]) == set(OPERATIONS)
    for name in ("pairing", "encrypt", "rekey", "reencrypt", "decrypt_first", "decrypt_hops_4"):
        row = data["operations"][name]
        assert {"median_ms", "p95_ms"} <= set(row)
        assert row["median_ms"] > 0
    assert set(data["targets"]) == set(TARGETS)
    for target in data["targets"].values():
        assert set(target) == {"value", "target", "met"}
        assert target["met"] in (True, False, None)
        if target["value"] is not None:
            assert math.isfinite(target["value"])
    assert {"ours_encrypt_mb_s", "openssl_16384_mb_s", "ratio", "ours_over_pyca_one_shot"} <= set(
        data["aes_gcm"]
    )
    assert data["aes_gcm"]["ours_encrypt_mb_s"] > 0
    if data["umbral"] is not None:
        assert {"encrypt", "reencrypt", "decrypt_reencrypted"} <= set(data["umbral"])
        assert set(data["umbral"]["ratios_ours_over_umbral"]) == {
            "encrypt",
            "reencrypt",
            "decrypt",
        }
    assert isinstance(data["notes"], list)
