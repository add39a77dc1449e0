"""The cryptography benchmark behind ``ehrshare bench crypto``.

Times every MH-TIPRE operation against one bare pairing measured in the same run, the chunked
AES-256-GCM record encryption against ``openssl speed``, threshold extraction (τ=5 of n=9,
verification included) and the umbral-pre peer anchor, and states each target ratio with
whether it was met. Ratios are only meaningful within one run on one machine.

This module measures; it must not change what it measures (no caching that the production
paths do not also have), and it never prints — the command module does the output.
"""

from __future__ import annotations

import io
import itertools
import re
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable
from importlib import metadata
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ehrshare.benchutil import machine_metadata, summarize, time_calls
from ehrshare.hazmat import hybrid, tipre
from ehrshare.hazmat.pairing import G1, G2, GT, Scalar, hash_to_g2, pair

__all__ = ["OPERATIONS", "TARGETS", "parse_openssl_speed", "run_crypto_bench"]

OPERATIONS = (
    "pairing",
    "hash_to_g2",
    "encrypt",
    "encrypt_new_recipient",
    "rekey",
    "reencrypt",
    "decrypt_first",
    "decrypt_first_with_type_key_derivation",
    "decrypt_hops_1",
    "decrypt_hops_2",
    "decrypt_hops_3",
    "decrypt_hops_4",
    "extract",
    "extract_user_side",
)
"""Operation rows of the result, each {median_ms, p95_ms, p99_ms, n} or null."""

TARGETS = {
    "reencrypt/pairing": ("<=", 1.3),
    "encrypt/pairing": ("<=", 1.6),
    "decrypt_first/pairing": ("<=", 1.6),
    "extra_hop_1/pairing": ("<=", 1.3),
    "extra_hop_2/pairing": ("<=", 1.3),
    "extra_hop_3/pairing": ("<=", 1.3),
    "extra_hop_4/pairing": ("<=", 1.3),
    "aes_gcm/openssl": (">=", 0.7),
}

_IDS = ("bench:owner", "bench:hop-1", "bench:hop-2", "bench:hop-3", "bench:hop-4")
_TYPE = "bench-type"
_EXTRACT_N = 9
_EXTRACT_T = 5


class _Sink:
    """A writer that discards, so the AES figure measures encryption, not memory growth."""

    def write(self, b: bytes, /) -> int:
        return len(b)


def _row(samples: list[float]) -> dict[str, float]:
    return summarize(samples)


def _tipre_rows(
    repeat: int, warmup: int, progress: Callable[[str], None]
) -> dict[str, dict[str, float]]:
    rows: dict[str, dict[str, float]] = {}
    master = tipre.MasterSecret.generate()
    mpk = master.public_key()
    sks = {i: master.extract(i) for i in _IDS}
    tsks = {i: sks[i].type_secret(_TYPE) for i in _IDS}
    tpks = {i: tsks[i].public_key(mpk) for i in _IDS}
    owner = _IDS[0]

    progress("pairing")
    p = Scalar.random() * G1.generator()
    q = Scalar.random() * G2.generator()
    rows["pairing"] = _row(time_calls(lambda: pair(p, q), repeat, warmup))

    progress("hash_to_g2")
    # H1 of a new identity (RFC 9380, pure Python): distinct messages, so no cache helps
    fresh = itertools.count()
    rows["hash_to_g2"] = _row(
        time_calls(
            lambda: hash_to_g2(b"bench:identity-%d" % next(fresh), b"EHRSHARE-BENCH-H1"),
            repeat,
            warmup,
        )
    )

    m = GT.random()
    progress("encrypt")
    rows["encrypt"] = _row(time_calls(lambda: tipre.encrypt(m, tpks[owner]), repeat, warmup))
    raw_tpk = tpks[owner].to_bytes()

    def encrypt_new_recipient() -> None:
        # a type key just read from the chain: parse, verify (tags and the proof of knowledge),
        # first encryption pays e(T, Q)
        key = tipre.TypePublicKey.from_bytes(raw_tpk).verify(owner=owner, type_label=_TYPE, mpk=mpk)
        tipre.encrypt(m, key)

    rows["encrypt_new_recipient"] = _row(time_calls(encrypt_new_recipient, repeat, warmup))

    progress("rekey / reencrypt")
    rows["rekey"] = _row(
        time_calls(lambda: tipre.generate_rekey(tsks[owner], tpks[_IDS[1]]), repeat, warmup)
    )
    capsule = tipre.encrypt(m, tpks[owner])
    rekey = tipre.generate_rekey(tsks[owner], tpks[_IDS[1]])
    rows["reencrypt"] = _row(time_calls(lambda: tipre.reencrypt(capsule, rekey), repeat, warmup))

    progress("decrypt")
    rows["decrypt_first"] = _row(
        time_calls(lambda: tipre.decrypt(capsule, tsks[owner]), repeat, warmup)
    )
    rows["decrypt_first_with_type_key_derivation"] = _row(
        time_calls(lambda: tipre.decrypt(capsule, sks[owner].type_secret(_TYPE)), repeat, warmup)
    )
    current = capsule
    for hops in range(1, 5):
        rk = tipre.generate_rekey(tsks[_IDS[hops - 1]], tpks[_IDS[hops]])
        current = tipre.reencrypt(current, rk)
        holder = tsks[_IDS[hops]]
        c = current
        if tipre.decrypt(c, holder) != m:
            raise RuntimeError(f"benchmark capsule after {hops} hops did not decrypt")
        rows[f"decrypt_hops_{hops}"] = _row(
            time_calls(lambda c=c, holder=holder: tipre.decrypt(c, holder), repeat, warmup)  # type: ignore[misc]
        )
    return rows


def _extract_rows(
    repeat: int, warmup: int, progress: Callable[[str], None], notes: list[str]
) -> dict[str, dict[str, float] | None]:
    try:
        from ehrshare.hazmat.board import InMemoryBoard, run_dkg
        from ehrshare.hazmat.dkg import DKGConfig, DKGNode, new_session_nonce
        from ehrshare.hazmat.extract import (
            ExtractionRequest,
            extract_partial_key,
            open_partial_key,
            recover_identity_key,
        )
        from ehrshare.hazmat.kgc_keys import KGCNodeKey
    except ImportError as exc:
        notes.append(f"extract: threshold extraction not available ({exc})")
        return {"extract": None, "extract_user_side": None}

    progress(f"DKG set-up for extraction (n={_EXTRACT_N}, untimed)")
    keys = [KGCNodeKey.generate() for _ in range(_EXTRACT_N)]
    config = DKGConfig(tuple(k.public_key for k in keys), new_session_nonce(), _EXTRACT_T)
    run = run_dkg([DKGNode(config, k) for k in keys], InMemoryBoard())
    if run.failures or not run.mpk_agreed:
        raise RuntimeError(f"benchmark DKG did not complete: {run.failures}")
    public = run.results[1].public
    counter = iter(range(10**9))
    user_ms: list[float] = []

    def one_extraction() -> None:
        request, reply = ExtractionRequest.create(f"bench:user-{next(counter)}")
        answers = [
            extract_partial_key(run.results[j].share, keys[j - 1], request).to_bytes()
            for j in range(1, _EXTRACT_T + 1)
        ]
        t0 = time.perf_counter()
        partials = [
            open_partial_key(a, request=request, reply_key=reply, node_key=keys[i].public_key)
            for i, a in enumerate(answers)
        ]
        recovered = recover_identity_key(partials, public)
        user_ms.append((time.perf_counter() - t0) * 1000.0)
        if recovered.invalid:
            raise RuntimeError(f"benchmark extraction rejected nodes {recovered.invalid}")

    progress("extract")
    total = time_calls(one_extraction, repeat, warmup)
    notes.append(
        f"extract: τ={_EXTRACT_T} of n={_EXTRACT_N}, one process: {_EXTRACT_T} nodes compute, "
        "seal and sign d_j = s_j·Q_id, the user opens, batch-verifies, Lagrange-combines and "
        "checks e(P1, sk_id) == e(mpk, Q_id); extract_user_side is the user's part only"
    )
    return {"extract": _row(total), "extract_user_side": _row(user_ms[warmup:])}


def _aes_throughput(
    mib: int, chunk_size: int, repeat: int, progress: Callable[[str], None]
) -> dict[str, float]:
    progress(f"AES-256-GCM chunked, {mib} MiB")
    data = bytes(mib << 20)
    context = hybrid.RecordContext("bench-record", "bench:owner", _TYPE)
    key = bytes(range(32))
    sealed = io.BytesIO()
    hybrid.encrypt_stream(data, sealed, key=key, context=context, chunk_size=chunk_size)
    sealed_bytes = sealed.getvalue()
    del sealed

    def enc() -> None:
        hybrid.encrypt_stream(
            io.BytesIO(data), _Sink(), key=key, context=context, chunk_size=chunk_size
        )

    def dec() -> None:
        hybrid.decrypt_stream(io.BytesIO(sealed_bytes), _Sink(), key=key, context=context)

    # The same primitive without our framing, as a same-library reference for our overhead.
    aead = AESGCM(key)
    nonce = bytes(12)
    block = bytes(chunk_size)

    def raw() -> None:
        for _ in range(mib * (1 << 20) // chunk_size):
            aead.encrypt(nonce, block, b"")

    runs = max(3, min(repeat, 7))
    enc_ms = statistics.median(time_calls(enc, runs, warmup=1))
    dec_ms = statistics.median(time_calls(dec, runs, warmup=1))
    raw_ms = statistics.median(time_calls(raw, runs, warmup=1))
    return {
        "encrypt_mb_s": len(data) / (enc_ms / 1000.0) / 1e6,
        "decrypt_mb_s": len(data) / (dec_ms / 1000.0) / 1e6,
        "raw_mb_s": (mib * (1 << 20) // chunk_size) * chunk_size / (raw_ms / 1000.0) / 1e6,
    }


_OPENSSL_ROW = re.compile(r"^aes-256-gcm\s+(.*)$", re.IGNORECASE | re.MULTILINE)


def parse_openssl_speed(output: str) -> float | None:
    """MB/s (10^6 bytes/s) of the 16384-byte column of ``openssl speed -evp aes-256-gcm``."""
    match = _OPENSSL_ROW.search(output)
    if match is None:
        return None
    columns = match.group(1).split()
    if len(columns) < 6 or not columns[5].endswith("k"):
        return None
    try:
        return float(columns[5][:-1]) / 1000.0  # openssl reports 1000s of bytes per second
    except ValueError:
        return None


def _openssl_speed(seconds: int, progress: Callable[[str], None]) -> tuple[float | None, str]:
    exe = shutil.which("openssl")
    if exe is None:
        return None, "openssl executable not found on PATH"
    progress(f"openssl speed -seconds {seconds} -evp aes-256-gcm")
    try:
        out = subprocess.run(  # noqa: S603 - fixed arguments, executable resolved from PATH
            [exe, "speed", "-seconds", str(seconds), "-evp", "aes-256-gcm"],
            capture_output=True,
            text=True,
            timeout=60 + 10 * seconds,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"openssl speed failed to run: {exc}"
    value = parse_openssl_speed(out.stdout)
    if value is None:
        return None, f"could not parse openssl speed output (exit {out.returncode})"
    version = subprocess.run(  # noqa: S603
        [exe, "version"], capture_output=True, text=True, timeout=10, check=False
    ).stdout.strip()
    return value, version


def _cryptography_openssl() -> str:
    """The OpenSSL that pyca/cryptography links (its wheels bundle their own)."""
    from cryptography.hazmat.backends.openssl.backend import backend

    return str(backend.openssl_version_text())


def _umbral_rows(
    repeat: int, warmup: int, progress: Callable[[str], None], notes: list[str]
) -> dict[str, dict[str, float]] | None:
    try:
        import umbral_pre as umbral
    except ImportError as exc:
        notes.append(f"umbral: umbral-pre not installed ({exc})")
        return None
    progress("umbral-pre")
    delegating = umbral.SecretKey.random()
    receiving = umbral.SecretKey.random()
    signer = umbral.Signer(umbral.SecretKey.random())
    plaintext = bytes(32)
    capsule, ciphertext = umbral.encrypt(delegating.public_key(), plaintext)
    kfrags = umbral.generate_kfrags(
        delegating_sk=delegating,
        receiving_pk=receiving.public_key(),
        signer=signer,
        threshold=1,
        shares=1,
        sign_delegating_key=False,
        sign_receiving_key=False,
    )
    cfrag = umbral.reencrypt(capsule=capsule, kfrag=kfrags[0])
    rows = {
        "encrypt": _row(
            time_calls(lambda: umbral.encrypt(delegating.public_key(), plaintext), repeat, warmup)
        ),
        "reencrypt": _row(
            time_calls(lambda: umbral.reencrypt(capsule=capsule, kfrag=kfrags[0]), repeat, warmup)
        ),
        "decrypt_reencrypted": _row(
            time_calls(
                lambda: umbral.decrypt_reencrypted(
                    receiving_sk=receiving,
                    delegating_pk=delegating.public_key(),
                    capsule=capsule,
                    verified_cfrags=[cfrag],
                    ciphertext=ciphertext,
                ),
                repeat,
                warmup,
            )
        ),
    }
    notes.append(
        "umbral: umbral-pre (secp256k1, single-hop, threshold 1 of 1, 32-byte plaintext "
        "including its DEM); ratios compare our encrypt / reencrypt / decrypt_hops_1"
    )
    return rows


def _target(name: str, value: float | None) -> dict[str, Any]:
    op, bound = TARGETS[name]
    met = None if value is None else (value <= bound if op == "<=" else value >= bound)
    return {"value": value, "target": f"{op} {bound}", "met": met}


def run_crypto_bench(
    *,
    repeat: int = 50,
    warmup: int = 5,
    aes_mib: int = 64,
    chunk_size: int = hybrid.DEFAULT_CHUNK_SIZE,
    openssl_seconds: int = 2,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the whole benchmark and return the JSON-ready result."""
    if repeat < 1 or warmup < 0 or aes_mib < 1 or openssl_seconds < 1:
        raise ValueError("repeat, aes_mib and openssl_seconds must be ≥ 1, warmup ≥ 0")
    say = progress or (lambda _msg: None)
    notes: list[str] = [
        "encrypt uses a recipient type key already in memory (e(T, Q) cached on the key "
        "object); encrypt_new_recipient parses and verifies the key and pays that pairing",
        "decrypt_first uses a type secret already derived (h·sk cached); "
        "decrypt_first_with_type_key_derivation derives it from sk_id first",
    ]
    operations: dict[str, dict[str, float] | None] = {}
    operations.update(_tipre_rows(repeat, warmup, say))
    operations.update(_extract_rows(max(3, repeat // 5), min(warmup, 2), say, notes))

    aes = _aes_throughput(aes_mib, chunk_size, repeat, say)
    openssl_mb_s, openssl_note = _openssl_speed(openssl_seconds, say)
    aes_ratio = None if openssl_mb_s is None else aes["encrypt_mb_s"] / openssl_mb_s
    if openssl_mb_s is None:
        notes.append(f"aes_gcm: no openssl reference: {openssl_note}")
    else:
        notes.append(
            "aes_gcm: ours is pyca/cryptography (its bundled OpenSSL, see cryptography_openssl) "
            "in 1 MiB STREAM chunks incl. per-chunk nonce/AAD; reference is the system "
            "`openssl speed` 16384-byte column, so the ratio also reflects the OpenSSL versions; "
            "ours_over_pyca_one_shot compares with AESGCM.encrypt on whole chunks, same library"
        )

    umbral_rows = _umbral_rows(repeat, warmup, say, notes)

    def med(name: str) -> float:
        row = operations[name]
        assert row is not None
        return row["median_ms"]

    pairing_ms = med("pairing")
    ratios: dict[str, float | None] = {
        "reencrypt/pairing": med("reencrypt") / pairing_ms,
        "encrypt/pairing": med("encrypt") / pairing_ms,
        "decrypt_first/pairing": med("decrypt_first") / pairing_ms,
        "aes_gcm/openssl": aes_ratio,
    }
    previous = med("decrypt_first")
    for hops in range(1, 5):
        current = med(f"decrypt_hops_{hops}")
        ratios[f"extra_hop_{hops}/pairing"] = (current - previous) / pairing_ms
        previous = current

    umbral_out: dict[str, Any] | None = None
    if umbral_rows is not None:
        umbral_out = {
            **umbral_rows,
            "ratios_ours_over_umbral": {
                "encrypt": med("encrypt") / umbral_rows["encrypt"]["median_ms"],
                "reencrypt": med("reencrypt") / umbral_rows["reencrypt"]["median_ms"],
                "decrypt": med("decrypt_hops_1") / umbral_rows["decrypt_reencrypted"]["median_ms"],
            },
        }

    try:
        pymcl_version = metadata.version("pymcl")
    except metadata.PackageNotFoundError:  # pragma: no cover - pymcl is a dependency
        pymcl_version = "unknown"
    return {
        "benchmark": "crypto",
        "machine": machine_metadata(),
        "params": {
            "repeat": repeat,
            "warmup": warmup,
            "curve": "BLS12-381",
            "pairing_library": f"pymcl {pymcl_version}",
            "aes_mib": aes_mib,
            "chunk_size": chunk_size,
            "openssl_seconds": openssl_seconds,
            "extract": {"n": _EXTRACT_N, "threshold": _EXTRACT_T},
        },
        "operations": operations,
        "aes_gcm": {
            "ours_encrypt_mb_s": aes["encrypt_mb_s"],
            "ours_decrypt_mb_s": aes["decrypt_mb_s"],
            "pyca_aesgcm_one_shot_mb_s": aes["raw_mb_s"],
            "ours_over_pyca_one_shot": aes["encrypt_mb_s"] / aes["raw_mb_s"],
            "openssl_16384_mb_s": openssl_mb_s,
            "openssl": openssl_note,
            "cryptography_openssl": _cryptography_openssl(),
            "ratio": aes_ratio,
        },
        "umbral": umbral_out,
        "targets": {name: _target(name, ratios[name]) for name in TARGETS},
        "notes": notes,
    }
