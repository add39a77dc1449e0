"""``ehrshare ledger verify|head``: check the whole ledger, and save a signed chain head.

``verify`` runs :meth:`ehrshare.ledger.store.EmbeddedLedger.verify` (signatures, a replay of
every transaction, key history, world state; ``--against`` witnesses' head files) and names the
first bad block. ``head`` signs (height, head hash, ordering certificate) with a wallet's
identity into a file kept elsewhere: the copy that later shows a deleted tail or a re-signed
chain. This module only parses, renders and maps errors to exit codes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from ehrshare.commands.common import (
    HELP_EPILOG,
    JsonOpt,
    ProfileOpt,
    WalletOpt,
    emit,
    fail,
    load_profile,
    mapped_errors,
    need_wallet,
    unlocked_wallet,
)
from ehrshare.console import err_console
from ehrshare.errors import EXIT_CONFIG, EXIT_INPUT, EXIT_INTEGRITY

__all__ = ["register"]

_err = err_console()

AgainstOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--against",
        help="A head file saved earlier ('ehrshare ledger head --out'); repeat for several.",
    ),
]


def _embedded_ledger(profile: str, what: str) -> Any:
    from ehrshare.ledger.store import EmbeddedLedger

    prof = load_profile(profile)
    if prof.ledger_backend != "embedded":
        fail(
            EXIT_CONFIG,
            f"{what} is for the embedded ledger; this profile's ledger is a Fabric channel",
            "on Fabric, 'ehrshare ledger verify --wallet <name>' compares the peers' blocks",
        )
    if not prof.ledger_path.is_dir():
        fail(EXIT_CONFIG, f"ledger directory {prof.ledger_path} does not exist")
    return prof, EmbeddedLedger.open(prof.ledger_path, channel=prof.channel)


def _verify_embedded(profile: str, heads: list[Any]) -> dict[str, Any]:
    _, ledger = _embedded_ledger(profile, "'ehrshare ledger verify'")
    try:
        report: dict[str, Any] = ledger.verify(against=heads)
        return report
    finally:
        ledger.close()


def _verify_fabric(prof: Any, wallet: str, heads: list[Any]) -> dict[str, Any]:
    from ehrshare.ledgers import FabricBackend

    w = unlocked_wallet(prof, need_wallet(wallet))
    identity, signer = w.load_identity()
    tls_cert, tls_signer = w.load_tls()
    backend = FabricBackend.from_profile(prof)
    try:
        return backend.verify_as(
            identity,
            signer,
            channel=prof.channel,
            client_tls=(tls_cert.credentials, tls_signer.to_secret_bytes()),
            against=heads,
            chaincode=prof.chaincode,
        )
    finally:
        backend.close()


def read_heads(files: list[str] | None) -> list[Any]:
    """Parse ``--against`` files; exit 6 on a missing or malformed one."""
    from ehrshare.ledger.witness import HeadFileError, read_head

    heads = []
    for name in files or []:
        try:
            heads.append(read_head(name))
        except HeadFileError as exc:
            fail(EXIT_INPUT, str(exc))
    return heads


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add ``ledger verify`` and ``ledger head`` to ``app``."""
    del bench_app
    ledger_app = typer.Typer(
        help="Verify the embedded ledger and save signed chain heads.", no_args_is_help=True
    )
    app.add_typer(ledger_app, name="ledger")

    @ledger_app.command("verify", epilog=HELP_EPILOG)
    def ledger_verify(
        against: AgainstOpt = None,
        profile: ProfileOpt = "",
        wallet: WalletOpt = "",
        as_json: JsonOpt = False,
    ) -> None:
        """Embedded ledger: check every block's link, hash and orderer signature and every
        transaction's client signature, replay every transaction through the chaincode from
        genesis and compare write sets, key history and world state; with --against, also
        that the chain still holds each witnessed head. Fabric (needs --wallet to read
        blocks): fetch every block from one peer of each organisation and check hash chains,
        orderer signatures and that the copies agree, and every config block after the first
        as the orderer checks it (its update signed as the channel's policies require, the new
        configuration exactly that update applied). Names the first bad block. Exit code 5
        if anything does not verify."""
        from ehrshare.ledger.errors import LedgerIntegrityError

        heads = read_heads(against)
        with mapped_errors():
            prof = load_profile(profile)
            started = time.perf_counter()
            try:
                if prof.ledger_backend == "fabric":
                    report: dict[str, Any] = {
                        "valid": True,
                        **_verify_fabric(prof, wallet, heads),
                    }
                else:
                    report = {"valid": True, **_verify_embedded(profile, heads)}
            except LedgerIntegrityError as exc:
                report = {
                    "valid": False,
                    "first_bad_block": exc.block,
                    "first_bad_transaction": exc.txn,
                    "reason": exc.message,
                }
                if prof.ledger_backend == "embedded":
                    _, ledger = _embedded_ledger(profile, "'ehrshare ledger verify'")
                    report["height"] = ledger.height()
                    ledger.close()
            report["backend"] = prof.ledger_backend
            report["seconds"] = round(time.perf_counter() - started, 3)
        if as_json:
            emit(report)
        elif report["valid"]:
            if report["backend"] == "fabric":
                peers = ", ".join(f"{k} ({v} blocks)" for k, v in sorted(report["peers"].items()))
                summary = (
                    f"channel: the peers of {peers} agree on {report['height']} blocks, every "
                    f"one signed by {', '.join(report['orderer_organisations'])}"
                )
            else:
                summary = (
                    f"ledger: {report['blocks']} blocks, {report['transactions']} transactions "
                    f"replayed, {report['keys']} keys"
                )
            _err.print(
                f"[green]✓[/green] {summary}; head {report['head'][:16]}… at height "
                f"{report['height']}",
                highlight=False,
                soft_wrap=True,
            )
            for change in report.get("config_updates", []):
                what = [f"{m} admitted" for m in change["added"]]
                what += [f"{m} removed" for m in change["removed"]]
                _err.print(
                    f"[green]✓[/green] config block {change['block']}: "
                    f"{', '.join(what) or 'channel settings changed'}, signed by the admins of "
                    f"{', '.join(change['signed_by'])}",
                    highlight=False,
                    soft_wrap=True,
                )
            for w in report["witnesses"]:
                _err.print(
                    f"[green]✓[/green] holds the head {w['witness']} witnessed at height "
                    f"{w['height']} ({w['file']})",
                    highlight=False,
                    soft_wrap=True,
                )
        else:
            where = (
                ""
                if report["first_bad_block"] is None
                else f" at block {report['first_bad_block']}"
            )
            _err.print(
                f"[red]✗ ledger does NOT verify{where}[/red]: {report['reason']}",
                highlight=False,
                soft_wrap=True,
            )
        if not report["valid"]:
            raise typer.Exit(EXIT_INTEGRITY)

    @ledger_app.command("head", epilog=HELP_EPILOG)
    def ledger_head(
        out: Annotated[str, typer.Option("--out", help="File to write the signed head to.")],
        profile: ProfileOpt = "",
        wallet: WalletOpt = "",
        as_json: JsonOpt = False,
    ) -> None:
        """Sign the ledger's current height and head hash with your identity into a file: keep
        it where the ledger's host cannot change it, and later run 'ehrshare ledger verify
        --against FILE'. Only a head of a ledger that verifies is signed (on Fabric: of the
        blocks the peers agree on)."""
        from ehrshare.faults import fault_point
        from ehrshare.ledger.witness import sign_head
        from ehrshare.services.vault import atomic_write

        with mapped_errors():
            prof = load_profile(profile)
            identity, signer = unlocked_wallet(prof, need_wallet(wallet)).load_identity()
            if prof.ledger_backend == "fabric":
                report = _verify_fabric(prof, wallet, [])
            else:
                report = _verify_embedded(profile, [])
            head = sign_head(
                channel=prof.channel,
                height=report["height"],
                head=bytes.fromhex(report["head"]),
                orderer=report["orderer"],
                identity=identity,
                signer=signer,
                signed_at=int(time.time()),
            )
            fault_point("ledger.head.before_write")
            atomic_write(Path(out), head.to_json(), mode=0o644)
        if as_json:
            emit(
                {"file": out, "height": head.height, "head": head.head, "witness": identity.ibe_id}
            )
            return
        _err.print(
            f"[green]✓[/green] head at height {head.height} signed by {identity.ibe_id} into {out}",
            highlight=False,
            soft_wrap=True,
        )
