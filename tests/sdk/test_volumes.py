"""A consortium's ledger and store volumes: missing, empty or foreign ones are refused with exit
code 3 naming the path, and nothing is created in their place."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ehrshare.cli import app
from ehrshare.demo import lab_observation
from ehrshare.network.services import service_commands
from ehrshare.network.supervisor import free_loopback_ports
from ehrshare.profile import Profile
from ehrshare.provisioning import Consortium
from ehrshare.runtime import connect
from ehrshare.volumes import VolumeError
from ehrshare.wallet import Wallet

runner = CliRunner()


def invoke(*args: str, code: int = 0) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == code, f"{args}: exit {result.exit_code}\n{result.output}"
    return result.output


def tree(root: Path) -> list[str]:
    """Every path under ``root`` (relative), to show that nothing was created."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A consortium with an enrolled patient who stored one record; tests work on copies."""
    root = tmp_path_factory.mktemp("vol") / "c"
    with Consortium.init(root) as c:
        c.add_member("alice", "HospitalA", "patient")
        with c.session("alice") as alice:
            alice.enroll()
            alice.publish_type_keys(["lab"])
            alice.put_record(lab_observation())
    (root.parent / "obs.json").write_text(json.dumps(lab_observation()), encoding="utf-8")
    return root


@pytest.fixture
def world(template: Path, tmp_path: Path) -> Path:
    root = tmp_path / "c"
    shutil.copytree(template, root)
    shutil.copy(template.parent / "obs.json", tmp_path / "obs.json")
    return root


@pytest.fixture(scope="module")
def other(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another consortium: its volumes are foreign to ``world``'s."""
    root = tmp_path_factory.mktemp("other") / "c"
    Consortium.init(root).close()
    return root


def _put(world: Path, code: int) -> str:
    return invoke(
        "record", "put", str(world.parent / "obs.json"), "-p", str(world), "-w", "alice", code=code
    )


def _moved_away(world: Path, name: str) -> None:
    (world / name).rename(world.parent / f"{name}-unmounted")


def _emptied(world: Path, name: str) -> None:
    _moved_away(world, name)
    (world / name).mkdir()


def _foreign(other: Path) -> Callable[[Path, str], None]:
    def swap(world: Path, name: str) -> None:
        _moved_away(world, name)
        shutil.copytree(other / name, world / name)

    return swap


@pytest.mark.parametrize("volume", ["store", "ledger"])
@pytest.mark.parametrize(
    ("fault", "says"),
    [("missing", "does not exist"), ("empty", "is empty"), ("foreign", "belongs to consortium")],
)
def test_put_into_a_bad_volume_is_refused_and_creates_nothing(
    world: Path, other: Path, volume: str, fault: str, says: str
) -> None:
    make = {"missing": _moved_away, "empty": _emptied, "foreign": _foreign(other)}[fault]
    make(world, volume)
    before = tree(world)
    out = _put(world, code=3)
    assert f"{volume} {world / volume}" in out and says in out
    assert "Traceback" not in out
    assert tree(world) == before  # no directory, no ledger.sqlite, no blob created
    status = runner.invoke(app, ["network", "status", "-p", str(world), "--json"])
    assert status.exit_code == 3
    report = json.loads(status.stdout)
    key = "ledger" if volume == "ledger" else "storage"
    assert says in report[key]["problem"]
    assert tree(world) == before
    # The real volume comes back: everything is there and the next put succeeds.
    shutil.rmtree(world / volume, ignore_errors=True)
    (world.parent / f"{volume}-unmounted").rename(world / volume)
    _put(world, code=0)
    with connect(world, "alice") as alice:
        refs = alice.list_records()
        assert len(refs) == 2
        for ref in refs:
            assert alice.read_record(ref).status == "final"  # type: ignore[attr-defined]


def test_deleted_ledger_database_is_not_recreated(world: Path) -> None:
    db = world / "ledger" / "ledger.sqlite"
    for extra in ("-wal", "-shm"):
        db.with_name(db.name + extra).unlink(missing_ok=True)
    db.unlink()
    out = invoke("record", "list", "-p", str(world), "-w", "alice", code=3)
    assert f"ledger {world / 'ledger'} is empty (no ledger.sqlite)" in out
    assert "channel" not in out  # not the misleading membership error of before
    assert not db.exists()


def test_a_profile_without_an_id_cannot_open_volumes(world: Path) -> None:
    profile = world / "profile.yaml"
    text = profile.read_text(encoding="utf-8")
    profile.write_text(
        "\n".join(line for line in text.splitlines() if not line.startswith("id:")),
        encoding="utf-8",
    )
    out = invoke("record", "list", "-p", str(world), "-w", "alice", code=3)
    assert "id (the consortium id) is missing" in out


def test_status_of_healthy_volumes_has_no_problem(world: Path) -> None:
    report = json.loads(invoke("network", "status", "-p", str(world), "--json"))
    assert "problem" not in report["ledger"] and "problem" not in report["storage"]
    assert report["ledger"]["height"] > 0


def test_network_up_refuses_a_missing_ledger_and_starts_nothing(world: Path) -> None:
    _moved_away(world, "ledger")
    before = tree(world)
    out = invoke("network", "up", "-p", str(world), code=3)
    assert f"ledger {world / 'ledger'} does not exist" in out
    assert tree(world) == before  # no run/ directory, no ledger


def test_consortium_open_raises_volume_error(world: Path) -> None:
    _moved_away(world, "store")
    with pytest.raises(VolumeError, match=r"store .* does not exist"):
        Consortium.open(world)
    assert not (world / "store").exists()


@pytest.mark.slow
def test_service_process_refuses_a_missing_ledger(tmp_path: Path) -> None:
    """'kgc serve --ledger DIR' (what 'network up' starts) refuses an unmounted ledger instead
    of serving an empty one."""
    root = tmp_path / "c"
    ports = free_loopback_ports(4)
    Consortium.init(
        root, hospitals=("HospitalA", "HospitalB"), services="processes", ports=ports
    ).close()
    cmd = service_commands(Profile.load(root / "profile.yaml"))[0]
    (root / "ledger").rename(tmp_path / "ledger-unmounted")
    env = {**os.environ, "COLUMNS": "200"}
    done = subprocess.run(
        [sys.executable, "-m", "ehrshare", *cmd.args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert done.returncode == 3, done.stderr
    assert f"ledger {root / 'ledger'} does not exist" in done.stderr.replace("\n", "")
    assert not (root / "ledger").exists()


@pytest.mark.slow
def test_service_processes_refuse_another_consortiums_ledger(tmp_path: Path) -> None:
    """The service command lines pass the profile's id: 'kgc serve' and 'proxy serve' with
    another consortium's ledger mounted at --ledger exit 3 before serving, naming both ids."""
    ports = free_loopback_ports(8)
    roots = [tmp_path / "c", tmp_path / "other"]
    for root, chunk in zip(roots, (ports[:4], ports[4:]), strict=True):
        Consortium.init(
            root, hospitals=("HospitalA", "HospitalB"), services="processes", ports=chunk
        ).close()
    profile = Profile.load(roots[0] / "profile.yaml")
    other_id = Profile.load(roots[1] / "profile.yaml").consortium_id
    commands = service_commands(profile)
    assert all("--consortium-id" in cmd.args for cmd in commands)
    (roots[0] / "ledger").rename(tmp_path / "ledger-unmounted")
    shutil.copytree(roots[1] / "ledger", roots[0] / "ledger")
    before = (roots[0] / "ledger" / "ledger.sqlite").read_bytes()
    env = {**os.environ, "COLUMNS": "200"}
    for cmd in (commands[0], commands[-1]):  # a KGC node and a proxy
        done = subprocess.run(
            [sys.executable, "-m", "ehrshare", *cmd.args],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )
        assert done.returncode == 3, done.stderr
        text = done.stderr.replace("\n", "")
        assert f"belongs to consortium {other_id}, not {profile.consortium_id}" in text
        assert "Traceback" not in done.stderr
    assert (roots[0] / "ledger" / "ledger.sqlite").read_bytes() == before


def _doc_block(containing: str) -> list[tuple[dict[str, str], list[str]]]:
    """The ``$`` lines of the docs/operations.md console block holding ``containing``, each as
    (inline environment, ehrshare arguments)."""
    doc = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
    blocks = re.findall(r"```console\n(.*?)```", doc.read_text(encoding="utf-8"), re.DOTALL)
    (block,) = [b for b in blocks if containing in b]
    out = []
    for line in block.splitlines():
        if not line.startswith("$ "):
            continue
        words = shlex.split(line[2:])
        env = dict(w.split("=", 1) for w in words if "=" in w and not w.startswith("-"))
        args = [w for w in words if w not in {f"{k}={v}" for k, v in env.items()}]
        assert args[0] == "ehrshare"
        out.append((env, args[1:]))
    return out


def test_operations_doc_store_and_wallet_examples_run(world: Path) -> None:
    env = {"EHRSHARE_PROFILE": str(world)}
    for extra, args in _doc_block("ehrshare store check"):
        result = runner.invoke(app, args, env={**env, **extra})
        assert result.exit_code == 0, f"{args}\n{result.output}"
    Wallet(world / "wallets" / "alice", use_env=False).encrypt("old")
    for extra, args in _doc_block("ehrshare wallet passphrase"):
        result = runner.invoke(app, args, env={**env, **extra})
        assert result.exit_code == 0, f"{args}\n{result.output}"
    assert Wallet(world / "wallets" / "alice", use_env=False).seal_state == "plain"


@pytest.mark.parametrize(
    ("content", "says"),
    [("{not json", "is unreadable"), ('{"consortium": 7}', "is unreadable")],
)
def test_hand_edited_store_marker_is_refused(world: Path, content: str, says: str) -> None:
    marker = world / "store" / "ehrshare-store.json"
    marker.write_text(content, encoding="utf-8")
    before = tree(world)
    out = _put(world, code=3)
    assert f"store marker {marker} {says}" in out
    assert tree(world) == before


def test_init_with_an_unreachable_kubo_leaves_nothing(tmp_path: Path) -> None:
    """Init marks the Kubo store; a node that does not answer fails init (exit 4), whole."""
    target = tmp_path / "c"
    out = invoke(
        "consortium", "init", str(target), "--storage", "kubo", "--kubo-url",
        "http://127.0.0.1:9", code=4,
    )  # fmt: skip
    assert "not reachable" in out
    assert not target.exists() or not any(target.iterdir())
