"""After the whole story, no plaintext, secret key, re-key or record key (DEK) is anywhere at rest.

The scan covers the ledger directory (SQLite file, WAL), the content store, the KGC nodes' and
the proxy's state directories and a DEBUG log of the whole run. Secrets are captured while the
story runs (by wrapping the functions that create them) and searched for raw, in hex and in
base64.
"""

from __future__ import annotations

import base64
import logging
from pathlib import Path
from typing import Any

import pytest

from ehrshare import key_extraction as kgc_service
from ehrshare.demo import SECRET_MARKER, run_demo
from ehrshare.hazmat import hybrid, tipre


def encodings(secret: bytes) -> list[bytes]:
    return [
        secret,
        secret.hex().encode(),
        base64.b64encode(secret),
        base64.urlsafe_b64encode(secret),
    ]


def test_nothing_secret_at_rest_or_in_logs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secrets: dict[str, list[bytes]] = {"identity key": [], "re-key": [], "record key": []}

    real_combine = kgc_service.combine_partial_keys

    def combine(*args: Any, **kwargs: Any) -> tipre.IdentitySecretKey:
        key = real_combine(*args, **kwargs)
        secrets["identity key"].append(key.point.to_bytes())
        return key

    real_rekey = tipre.generate_rekey

    def rekey(*args: Any, **kwargs: Any) -> tipre.VerifiedReKey:
        rk = real_rekey(*args, **kwargs)
        secrets["re-key"].append(rk.to_secret_bytes())
        secrets["re-key"].append(rk._k.to_bytes())
        return rk

    real_dek = hybrid.derive_record_key

    def dek(*args: Any, **kwargs: Any) -> bytes:
        key = real_dek(*args, **kwargs)
        secrets["record key"].append(key)
        return key

    monkeypatch.setattr(kgc_service, "combine_partial_keys", combine)
    monkeypatch.setattr(tipre, "generate_rekey", rekey)
    monkeypatch.setattr(hybrid, "derive_record_key", dek)

    log_file = tmp_path / "run.log"
    handler = logging.FileHandler(log_file)
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    old_level = root.level
    root.setLevel(logging.DEBUG)
    root.addHandler(handler)
    try:
        result = run_demo(tmp_path / "consortium", keep=True)
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()
    assert result.ok, result.to_dict()
    assert len(secrets["identity key"]) >= 4
    assert len(secrets["re-key"]) >= 4  # two grants, raw and K
    assert len(secrets["record key"]) == 3 + 2  # three records stored, two reads

    root_dir = tmp_path / "consortium"
    scanned = [
        p
        for sub in ("ledger", "store", "kgc", "proxy")
        for p in (root_dir / sub).rglob("*")
        if p.is_file()
    ]
    scanned.append(log_file)
    assert any(p.name.startswith("ledger.sqlite") for p in scanned)
    assert log_file.stat().st_size > 0  # the run did log
    plaintexts = [
        SECRET_MARKER.encode(),
        b"Ferrous sulfate",
        b"CT chest without contrast",
    ]
    for path in scanned:
        data = path.read_bytes()
        for text in plaintexts:
            assert text not in data, f"plaintext {text!r} found in {path}"
        for kind, values in secrets.items():
            for value in values:
                for form in encodings(value):
                    assert form not in data, f"{kind} found in {path}"
