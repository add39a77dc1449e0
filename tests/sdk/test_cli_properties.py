"""Property: whatever arguments and files the CLI is given, it never shows a traceback, it
ends with an exit code from the table (ehrshare.errors.EXIT_CODES), and when it refuses it
leaves the ledger database, the content store and the wallets byte for byte as they were.

Commands run in-process through typer's CliRunner against one consortium made for the module;
a few run as real ``python -m ehrshare`` processes, where a traceback would reach stderr.
Bounded: 60 generated examples in all, well under a minute on a busy machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_world import invoke, make_world, state_digest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from ehrshare.demo import imaging_study, lab_observation, medication_request
from ehrshare.errors import EXIT_CODES

SETTINGS = settings(
    deadline=None,
    derandomize=True,  # the same examples on every machine and every run
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    database=None,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    yield make_world(tmp_path_factory.mktemp("cli-props"))


def check(world: dict[str, str], *args: str) -> int:
    """Run one command; assert the property; return its exit code."""
    before = state_digest(world["profile"])
    result = invoke(*args)  # asserts: no exception escaped, no traceback, no "unexpected error"
    event(f"exit {result.exit_code}")  # --hypothesis-show-statistics: which codes were reached
    assert result.exit_code in EXIT_CODES, f"{args}: exit {result.exit_code}\n{result.output}"
    if result.exit_code != 0:
        assert state_digest(world["profile"]) == before, f"refused {args} changed the state"
    return result.exit_code


# --- generators -------------------------------------------------------------------------------

# Text a shell can pass: any Unicode but surrogates; NUL is impossible in argv but not in a
# Python call, so it is left out too.
TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=40)
NUMBERS = st.one_of(
    st.sampled_from(["nan", "inf", "-inf", "1e12", "1e308", "0", "-0", "-1", "0.0001", "36525"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=-(10**20), max_value=10**20).map(str),
    TEXT,
)
IBE_IDS = st.one_of(
    st.sampled_from(
        ["HospitalBMSP/baker", "HospitalAMSP/alice", "HospitalBMSP/nobody", "NoMSP/x", "/", ""]
    ),
    TEXT,
    st.builds(lambda a, b: f"{a}/{b}", TEXT, TEXT),
)
TYPES = st.one_of(st.sampled_from(["lab", "imaging", "general", "dental", "LAB", ""]), TEXT)
WALLETS = st.sampled_from(["alice", "baker"])
GRANTEES = st.one_of(st.sampled_from(["HospitalBMSP/baker", "HospitalAMSP/alice"]), IBE_IDS)


def _deep(depth: int) -> str:
    return '{"resourceType": "Observation", "status": "final", "code": {"text": "x"}, ' + (
        f'"extension": {"[" * depth}{"]" * depth}}}'
    )


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=20,
)
FHIR_ISH = st.fixed_dictionaries(
    {"resourceType": st.sampled_from(["Observation", "Patient", "Binary", "Nope", ""])},
    optional={
        "status": st.sampled_from(["final", "bogus"]),
        "code": JSON_VALUES,
        "category": JSON_VALUES,
        "meta": JSON_VALUES,
        "valueQuantity": JSON_VALUES,
    },
)
VALID = st.sampled_from([lab_observation(), imaging_study(), medication_request()])
DOCUMENTS = st.one_of(
    VALID.map(lambda d: json.dumps(d).encode()),
    st.builds(
        lambda d, k: {x: v for x, v in d.items() if x != k}, VALID, TEXT | VALID.map(str)
    ).map(lambda d: json.dumps(d).encode()),
    FHIR_ISH.map(lambda d: json.dumps(d).encode()),
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),
    st.sampled_from([50, 101, 1_000, 100_000]).map(lambda n: _deep(n).encode()),
    st.binary(max_size=200),
)


# --- properties -------------------------------------------------------------------------------


# A grant that works, with up to two of its parts replaced by generated ones: every check
# along the way (arguments, the ledger, the proxies) gets reached, not only the first.
GOOD_GRANT: dict[str, str | None] = {
    "grantee": "HospitalBMSP/baker",
    "type": "lab",
    "--days": "1",
    "--until": None,
    "--max-hops": "0",
    "--proxy": None,
    "wallet": "alice",
}
CHANGES = st.lists(
    st.one_of(
        st.tuples(st.just("grantee"), IBE_IDS),
        st.tuples(st.just("type"), TYPES),
        st.tuples(st.just("--days"), st.none() | NUMBERS),
        st.tuples(
            st.just("--until"),
            TEXT | st.sampled_from(["2031-01-01", "9999-12-31", "0001-01-01T00:00Z"]),
        ),
        st.tuples(st.just("--max-hops"), NUMBERS),
        st.tuples(st.just("--proxy"), IBE_IDS | st.just("HospitalBMSP/proxy")),
        st.tuples(st.just("wallet"), WALLETS),
    ),
    max_size=2,
)


@settings(SETTINGS, max_examples=16)
@given(changes=CHANGES)
@example([("--days", "nan")]).via("a user's report")
@example([("--days", "1e12"), ("--proxy", "HospitalXMSP/proxy")]).via("a user's report")
def test_generated_grants(world: dict[str, str], changes: list[tuple[str, str | None]]) -> None:
    g = {**GOOD_GRANT, **dict(changes)}
    grantee, record_type, wallet = g["grantee"], g["type"], g["wallet"]
    assert grantee is not None and record_type is not None and wallet is not None
    args = ["grant", grantee, record_type, "-p", world["profile"], "-w", wallet]
    for flag in ("--days", "--until", "--max-hops", "--proxy"):
        value = g[flag]
        if value is not None:
            args += [flag, value]
    check(world, *args)


@settings(SETTINGS, max_examples=12)
@given(document=DOCUMENTS, record_type=st.none() | TYPES, patient=st.none() | GRANTEES)
def test_generated_records(
    world: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
    document: bytes,
    record_type: str | None,
    patient: str | None,
) -> None:
    path = tmp_path_factory.mktemp("doc") / "record.json"
    path.write_bytes(document)
    args = ["record", "put", str(path), "-p", world["profile"], "-w", "alice"]
    if record_type is not None:
        args += ["--type", record_type]
    if patient is not None:
        args += ["--patient", patient]
    check(world, *args)


@settings(SETTINGS, max_examples=10)
@given(
    name=st.one_of(TEXT, st.text(min_size=60, max_size=300)),
    hospital=st.one_of(st.sampled_from(["HospitalA", "HospitalAMSP", "HospitalZ"]), TEXT),
    role=st.one_of(st.sampled_from(["patient", "clinician", "kgc", "root"]), TEXT),
)
def test_generated_member_names(world: dict[str, str], name: str, hospital: str, role: str) -> None:
    add = ["consortium", "add-member", name, "--hospital", hospital, "--role", role]
    check(world, *add, "-p", world["profile"])


WALLET_FILES = ["cert.pem", "key.pem", "ibe.key", "msp-id", "tls-cert.pem", "tls-key.pem"]


@st.composite
def damage(draw: st.DrawFn) -> tuple[str, Any]:
    name = draw(st.sampled_from(WALLET_FILES))
    how = draw(st.sampled_from(["empty", "truncate", "flip", "replace", "delete"]))
    at = draw(st.integers(min_value=0, max_value=10_000))
    junk = draw(st.binary(max_size=64))
    return name, (how, at, junk)


def _damage(path: Path, how: str, at: int, junk: bytes) -> None:
    data = path.read_bytes()
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncate":
        path.write_bytes(data[: at % max(len(data), 1)])
    elif how == "flip" and data:
        out = bytearray(data)
        out[at % len(out)] ^= 0x01
        path.write_bytes(bytes(out))
    elif how == "replace":
        path.write_bytes(junk)
    elif how == "delete":
        path.unlink()


@settings(SETTINGS, max_examples=12)
@given(
    hurt=st.lists(damage(), min_size=1, max_size=3),
    command=st.sampled_from(
        [("record", "list"), ("audit", "show"), ("enroll",), ("audit", "verify")]
    ),
    n=st.integers(min_value=0, max_value=10**9),
)
def test_generated_wallet_damage(
    world: dict[str, str], hurt: list[tuple[str, Any]], command: tuple[str, ...], n: int
) -> None:
    wallets = Path(world["profile"]) / "wallets"
    name = f"hurt-{n}"
    target = wallets / name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(wallets / "baker", target)
    try:
        for file_name, (how, at, junk) in hurt:
            if (target / file_name).exists():
                _damage(target / file_name, how, at, junk)
        check(world, *command, "-p", world["profile"], "-w", name)
    finally:
        shutil.rmtree(target, ignore_errors=True)


@settings(SETTINGS, max_examples=6)
@given(
    command=st.sampled_from(
        [
            ("record", "get"),
            ("revoke",),
            ("record", "list", "--patient"),
            ("audit", "show", "--record"),
            ("audit", "show", "--patient"),
            ("forward",),
        ]
    ),
    value=st.one_of(IBE_IDS, st.sampled_from(["r-" + "0" * 32, "g-" + "f" * 32, "a" * 5000])),
    wallet=WALLETS,
)
def test_generated_lookups(
    world: dict[str, str], command: tuple[str, ...], value: str, wallet: str
) -> None:
    extra = ["HospitalCMSP/chen"] if command == ("forward",) else []
    check(world, *command, value, *extra, "-p", world["profile"], "-w", wallet)


# --- the same, as real processes --------------------------------------------------------------


@pytest.mark.parametrize(
    "case",
    ["days-nan", "deep-json", "empty-cert"],
)
def test_real_processes_exit_cleanly(world: dict[str, str], tmp_path: Path, case: str) -> None:
    p = world["profile"]
    if case == "days-nan":
        args = ["grant", "HospitalBMSP/baker", "lab", "--days", "nan", "-p", p, "-w", "alice"]
        code = 2
    elif case == "deep-json":
        deep = tmp_path / "deep.json"
        deep.write_text(_deep(100_000), encoding="utf-8")
        args = ["record", "put", str(deep), "-p", p, "-w", "alice"]
        code = 6
    else:
        wallet = tmp_path / "w"
        shutil.copytree(Path(p) / "wallets" / "baker", wallet)
        (wallet / "cert.pem").write_bytes(b"")
        args = ["record", "list", "-p", p, "-w", str(wallet)]
        code = 3
    before = state_digest(p)
    env = {**os.environ, "COLUMNS": "80"}
    done = subprocess.run(
        [sys.executable, "-m", "ehrshare", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )
    assert done.returncode == code, done.stderr
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout
    assert done.stderr.startswith("error: "), done.stderr
    assert state_digest(p) == before


@settings(SETTINGS, max_examples=4)
@given(
    hospitals=st.one_of(
        st.just(["HospitalA", "HospitalB", "HospitalC"]),
        st.lists(
            st.one_of(st.sampled_from(["HospitalA", "B", "a/b", "Ä", "x" * 70]), TEXT),
            max_size=4,
        ),
    ),
    threshold=st.one_of(st.sampled_from(["2", "3", "4"]), NUMBERS),
)
def test_generated_consortium_init(
    tmp_path_factory: pytest.TempPathFactory, hospitals: list[str], threshold: str
) -> None:
    target = tmp_path_factory.mktemp("init") / "c"
    args = ["consortium", "init", str(target), "--hospitals", ",".join(hospitals)]
    result = invoke(*args, "--threshold", threshold)
    event(f"exit {result.exit_code}")
    assert result.exit_code in EXIT_CODES, result.output
    if result.exit_code != 0:
        assert not target.exists(), f"a refused init left {target} behind"
