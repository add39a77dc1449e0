"""Bad input never ends in a traceback: each case a user found gets a clear message, the exit
code of the table (ehrshare.errors) and, when refused, no change to what is stored."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_world import invoke, make_world, state_digest


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    yield make_world(tmp_path_factory.mktemp("cli-errors"))


@pytest.fixture
def copy(world: dict[str, str], tmp_path: Path) -> str:
    """A copy of the world's consortium, for tests that damage it."""
    target = tmp_path / "c"
    shutil.copytree(world["profile"], target)
    return str(target)


def refused(code: int, *args: str, profile: str, says: str) -> str:
    before = state_digest(profile)
    result = invoke(*args)
    assert result.exit_code == code, result.output
    assert says in result.output, result.output
    assert state_digest(profile) == before, f"{args} changed the stored state"
    return result.output


# --- numbers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("days", ["nan", "inf", "-inf", "1e12", "0", "-3", "36526"])
def test_grant_days_out_of_range_is_a_usage_error(world: dict[str, str], days: str) -> None:
    p = world["profile"]
    grant = ("grant", "HospitalBMSP/baker", "lab", "--days", days, "-p", p, "-w", "alice")
    refused(2, *grant, profile=p, says="is out of range")


@pytest.mark.parametrize("days", ["nan", "inf", "1e12"])
def test_forward_days_out_of_range_is_a_usage_error(world: dict[str, str], days: str) -> None:
    p = world["profile"]
    fwd = ("forward", world["record"], "HospitalAMSP/alice", "--days", days)
    refused(2, *fwd, "-p", p, "-w", "baker", profile=p, says="is out of range")


def test_until_together_with_days_is_refused(world: dict[str, str]) -> None:
    p = world["profile"]
    grant = ("grant", "HospitalBMSP/baker", "lab", "--days", "2", "--until", "2031-01-01")
    refused(2, *grant, "-p", p, "-w", "alice", profile=p, says="either --days or --until")


@pytest.mark.parametrize(
    ("until", "says"),
    [
        ("9999-12-31T23:59:59-14:00", "more than 36525 days"),
        ("2030-13-45", "is not an ISO date"),
        ("tomorrow", "is not an ISO date"),
    ],
)
def test_until_beyond_a_century_or_malformed_is_a_usage_error(
    world: dict[str, str], until: str, says: str
) -> None:
    p = world["profile"]
    grant = ("grant", "HospitalBMSP/baker", "lab", "--until", until)
    refused(2, *grant, "-p", p, "-w", "alice", profile=p, says=says)


def test_negative_max_hops_is_a_usage_error(world: dict[str, str]) -> None:
    p = world["profile"]
    grant = ("grant", "HospitalBMSP/baker", "lab", "--days", "1", "--max-hops", "-1")
    refused(2, *grant, "-p", p, "-w", "alice", profile=p, says="--max-hops")


# --- documents --------------------------------------------------------------------------------


def test_a_deeply_nested_json_record_is_invalid_input(
    world: dict[str, str], tmp_path: Path
) -> None:
    depth = 100_000  # 200 KB: deeper than Python's recursion limit
    deep = tmp_path / "deep.json"
    deep.write_text(
        '{"resourceType": "Observation", "status": "final", "code": {"text": "x"}, '
        f'"extension": {"[" * depth}{"]" * depth}}}',
        encoding="utf-8",
    )
    p = world["profile"]
    put = ("record", "put", str(deep), "-p", p, "-w", "alice")
    refused(6, *put, profile=p, says="nested more than 100 levels")


def test_a_deep_exported_trail_is_invalid_input(world: dict[str, str], tmp_path: Path) -> None:
    deep = tmp_path / "trail.json"
    deep.write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    p = world["profile"]
    verify = ("audit", "verify", "--trail", str(deep), "-p", p, "-w", "alice")
    refused(6, *verify, profile=p, says="is not an exported audit trail")


# --- names ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a/b", "", "x" * 300, "../evil", ".hidden", "_under", "a b"])
def test_add_member_refuses_names_that_are_not_ids(world: dict[str, str], name: str) -> None:
    p = world["profile"]
    wallets = sorted(x.name for x in (Path(p) / "wallets").iterdir())
    add = ("consortium", "add-member", name, "--hospital", "HospitalA", "--role", "patient")
    refused(2, *add, "-p", p, profile=p, says="is invalid: use 1-64 letters")
    assert sorted(x.name for x in (Path(p) / "wallets").iterdir()) == wallets
    assert not (Path(p).parent / "evil").exists()


def test_add_member_refuses_a_hospital_path(world: dict[str, str]) -> None:
    p = world["profile"]
    add = ("consortium", "add-member", "zoe", "--hospital", "../ca/HospitalA", "--role", "patient")
    refused(3, *add, "-p", p, profile=p, says="is not in this consortium")


def test_a_wallet_name_too_long_for_the_file_system(world: dict[str, str]) -> None:
    p = world["profile"]
    refused(3, "record", "list", "-p", p, "-w", "w" * 300, profile=p, says="holds no identity")


# --- wallets ----------------------------------------------------------------------------------


def _wallet_copy(profile: str, name: str) -> Path:
    target = Path(profile) / "wallets" / name
    shutil.copytree(Path(profile) / "wallets" / "baker", target)
    return target


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (lambda pem: b"", "is not a readable X.509 certificate"),
        (lambda pem: pem[: len(pem) // 2], "is not a readable X.509 certificate"),
        (lambda pem: b"garbage\n", "is not a readable X.509 certificate"),
    ],
    ids=["empty", "truncated", "garbage"],
)
def test_a_damaged_wallet_certificate_is_a_configuration_error(
    copy: str, damage: object, says: str
) -> None:
    wallet = _wallet_copy(copy, "damaged")
    cert = wallet / "cert.pem"
    cert.write_bytes(damage(cert.read_bytes()))  # type: ignore[operator]
    refused(3, "record", "list", "-p", copy, "-w", "damaged", profile=copy, says=says)


def test_a_certificate_of_another_key_is_a_configuration_error(copy: str) -> None:
    wallet = _wallet_copy(copy, "swapped")
    shutil.copy(Path(copy) / "wallets" / "alice" / "cert.pem", wallet / "cert.pem")
    refused(
        3, "record", "list", "-p", copy, "-w", "swapped", profile=copy, says="not the certificate"
    )


def test_a_wallet_of_another_consortium_is_a_configuration_error(
    world: dict[str, str], tmp_path: Path
) -> None:
    other = tmp_path / "other"
    assert invoke("consortium", "init", str(other)).exit_code == 0
    add = ("consortium", "add-member", "zed", "--hospital", "HospitalA", "--role", "patient")
    assert invoke(*add, "-p", str(other)).exit_code == 0
    p = world["profile"]
    out = refused(
        3,
        *("record", "list", "-p", p, "-w", str(other / "wallets" / "zed")),
        profile=p,
        says="does not accept the certificate of HospitalAMSP/zed",
    )
    assert "another consortium" in out


# --- the ledger database ----------------------------------------------------------------------


def _truncate(data: bytes) -> bytes:
    return data[:5000]


def _overwrite_header(data: bytes) -> bytes:
    return b"garbagegarbage!!" + data[16:]


def _flip_pages(data: bytes) -> bytes:
    out = bytearray(data)
    for i in range(4096, len(out), 997):
        out[i] ^= 0x5A
    return bytes(out)


@pytest.mark.parametrize("damage", [_truncate, _overwrite_header, _flip_pages])
def test_a_damaged_ledger_database_is_a_clean_exit_3(copy: str, damage: object) -> None:
    db = Path(copy) / "ledger" / "ledger.sqlite"
    db.write_bytes(damage(db.read_bytes()))  # type: ignore[operator]
    for args in (("record", "list", "-w", "alice"), ("audit", "show", "-w", "alice")):
        refused(3, *args, "-p", copy, profile=copy, says="is damaged")


# --- the content store ------------------------------------------------------------------------


def _blob(profile: str) -> Path:
    (blob,) = [p for p in (Path(profile) / "store" / "blobs").rglob("*") if p.is_file()]
    return blob


def test_a_tampered_ciphertext_is_an_integrity_failure(world: dict[str, str], copy: str) -> None:
    blob = _blob(copy)
    data = bytearray(blob.read_bytes())
    data[100] ^= 0x01
    blob.write_bytes(bytes(data))
    result = invoke("record", "get", world["record"], "-p", copy, "-w", "alice")
    assert result.exit_code == 5, result.output
    assert "integrity check failed" in result.output


def test_a_missing_ciphertext_is_an_integrity_failure(world: dict[str, str], copy: str) -> None:
    _blob(copy).unlink()
    result = invoke("record", "get", world["record"], "-p", copy, "-w", "alice")
    assert result.exit_code == 5, result.output
    assert "not found" in result.output


# --- refusals that used to say the wrong thing ------------------------------------------------


def test_an_unknown_proxy_is_a_usage_error(world: dict[str, str]) -> None:
    p = world["profile"]
    grant = ("grant", "HospitalBMSP/baker", "lab", "--days", "1", "--proxy", "NoMSP/proxy")
    out = refused(2, *grant, "-p", p, "-w", "alice", profile=p, says="is not in this profile")
    assert "HospitalBMSP/proxy" in out


def test_a_grant_to_no_such_member_says_so(world: dict[str, str]) -> None:
    p = world["profile"]
    grant = ("grant", "HospitalBMSP/nobody", "lab", "--days", "1", "-p", p, "-w", "alice")
    out = refused(1, *grant, profile=p, says="no such member: HospitalBMSP/nobody")
    assert "GetTypeKey" not in out and "publish_type_keys" not in out


def test_a_member_without_type_keys_still_gets_the_enrol_advice(world: dict[str, str]) -> None:
    p = world["profile"]
    add = ("consortium", "add-member", "late", "--hospital", "HospitalB", "--role", "clinician")
    assert invoke(*add, "-p", p).exit_code == 0
    # Registered on chain but never enrolled: registering is what 'enroll' does first.
    from ehrshare.provisioning import Consortium

    c = Consortium.open(p)
    try:
        with c.session("late") as late:
            late.register()
    finally:
        c.close()
    grant = ("grant", "HospitalBMSP/late", "lab", "--days", "1", "-p", p, "-w", "alice")
    refused(1, *grant, profile=p, says="has not published a key for type 'lab'")


# --- the last line of defence -----------------------------------------------------------------


def test_a_bug_is_one_line_with_exit_1_and_no_traceback(
    world: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from ehrshare.cli import app
    from ehrshare.session import Session

    def broken(self: Session, patient: str | None = None) -> list[object]:
        raise KeyError("bookmark")

    monkeypatch.setattr(Session, "list_records", broken)
    result = CliRunner().invoke(app, ["record", "list", "-p", world["profile"], "-w", "alice"])
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    assert "unexpected error: KeyError: 'bookmark'" in result.output
    assert "run again with -v" in result.output


def test_a_wallet_refused_while_connecting_closes_what_was_opened(
    copy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ehrshare.runtime import Runtime, connect
    from ehrshare.wallet import WalletError

    wallet = _wallet_copy(copy, "nokey")
    (wallet / "ibe.key").write_bytes(b"")  # read when the session is made, after the ledger
    closed: list[Runtime] = []
    close = Runtime.close

    def spy(self: Runtime) -> None:
        closed.append(self)
        close(self)

    monkeypatch.setattr(Runtime, "close", spy)
    with pytest.raises(WalletError, match="does not hold an identity secret key"):
        connect(copy, "nokey")
    assert len(closed) == 1


@pytest.mark.parametrize("hospitals", ["a/b,c", "Ä,B", "H" * 300 + ",B", "A,.hidden"])
def test_init_refuses_hospital_names_that_are_not_msp_ids(tmp_path: Path, hospitals: str) -> None:
    target = tmp_path / "new"
    result = invoke("consortium", "init", str(target), "--hospitals", hospitals)
    assert result.exit_code == 2, result.output
    assert "hospital name" in result.output and "is invalid" in result.output
    assert not target.exists()


@pytest.mark.parametrize("out", ["missing-dir/x.json", "."])
def test_record_get_to_a_path_that_cannot_be_written_is_a_usage_error(
    world: dict[str, str], tmp_path: Path, out: str
) -> None:
    p = world["profile"]
    target = str(tmp_path / out)
    get = ("record", "get", world["record"], "-o", target, "-p", p, "-w", "alice")
    refused(2, *get, profile=p, says=f"cannot write {target}")


def test_wallet_encrypt_without_a_terminal_or_passphrase_is_a_usage_error(
    copy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EHRSHARE_WALLET_PASSPHRASE", raising=False)
    _wallet_copy(copy, "plain")
    refused(2, "wallet", "encrypt", "-p", copy, "-w", "plain", profile=copy, says="no terminal")
    refused(3, "wallet", "encrypt", "-p", copy, "-w", "nobody", profile=copy, says="no identity")
