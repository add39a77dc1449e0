"""The ``peer`` CLI as each hospital's admin, and the first start's deployment: every orderer
joined through the channel participation API, every peer joined, the chaincode installed,
approved by every hospital and committed (each step recorded in ``network.json`` and skipped
when found done, so an interrupted start resumes). Starts no process (:mod:`.launcher` does).
"""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import http.client
import json
import logging
import os
import re
import secrets
import ssl
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ehrshare.faults import fault_point
from ehrshare.network.fabric.layout import FabricLayout
from ehrshare.network.fabric.spec import (
    _CC_SEQUENCE,
    _CC_VERSION,
    ORDERER_MSP,
    FabricNetError,
    Progress,
)

__all__ = ["ChannelAdmin"]

_log = logging.getLogger(__name__)

# Refusals that mean a step of an interrupted first start had already happened: the deployment
# resumes past them (the orderer or the peer has the channel). Approvals and the definition are
# queried instead. Peers: "LedgerID already exists" up to 2.4, "ledger [ch] already exists with
# state [ACTIVE]" from 2.5; orderers: 405 "cannot join: channel already exists".
_JOINED = r"LedgerID already exists|already exists with state \[ACTIVE\]"
_ORDERER_JOINED = "channel already exists"
# Broadcast refusals that go away by themselves while Raft elects a leader or a peer catches up.
_TRANSIENT = re.compile(
    r"SERVICE_UNAVAILABLE|no Raft leader|connection refused|context deadline exceeded"
    r"|failed to create new connection|timed out waiting",
    re.IGNORECASE,
)


class ChannelAdmin(FabricLayout):
    """The ``peer`` CLI and the channel deployment of a Fabric network."""

    def cli_env(self, msp: str, *, peer: str | None = None) -> dict[str, str]:
        """Environment for the ``peer`` CLI acting as ``msp``'s admin against ``peer``'s peer
        (default: its own). Merge it over ``os.environ``."""
        target = peer or msp
        if msp not in self.spec.msp_ids or target not in self.spec.msp_ids:
            raise FabricNetError(f"{msp!r} or {target!r} is not one of {list(self.spec.msp_ids)}")
        return {
            "FABRIC_CFG_PATH": str(self.dir / "config" / "peer"),
            "FABRIC_LOGGING_SPEC": "WARNING",
            "CORE_PEER_LOCALMSPID": msp,
            "CORE_PEER_MSPCONFIGPATH": str(self.admin_msp(msp)),
            "CORE_PEER_ADDRESS": self.peer_address(target),
            "CORE_PEER_TLS_ENABLED": "true",
            "CORE_PEER_TLS_ROOTCERT_FILE": str(self.tls_ca(target)),
            # Peers require a client certificate: the admin's TLS one (also for the peers
            # named with --peerAddresses).
            "CORE_PEER_TLS_CLIENTAUTHREQUIRED": "true",
            "CORE_PEER_TLS_CLIENTCERT_FILE": str(self.admin_tls(msp)[0]),
            "CORE_PEER_TLS_CLIENTKEY_FILE": str(self.admin_tls(msp)[1]),
        }

    def orderer_args(self, msp: str | None = None) -> list[str]:
        """``-o <orderer> --tls --cafile <orderer TLS CA> --clientauth --certfile … --keyfile …``
        for ``peer`` CLI commands: orderers require mutual TLS, so the CLI presents the TLS
        client certificate of ``msp``'s admin (default: the first hospital's; the orderer
        authorises by the signature, the certificate only has to come from a consortium CA)."""
        if msp is not None and msp not in self.spec.msp_ids:
            raise FabricNetError(f"{msp!r} is not one of {list(self.spec.msp_ids)}")
        cert, key = self.admin_tls(msp or self.spec.msp_ids[0])
        return [
            "-o",
            self.orderer_address(0),
            "--tls",
            "--cafile",
            str(self.tls_ca(ORDERER_MSP)),
            "--clientauth",
            "--certfile",
            str(cert),
            "--keyfile",
            str(key),
        ]

    def peer_args(self, msps: Sequence[str]) -> list[str]:
        """``--peerAddresses … --tlsRootCertFiles …`` for the given hospitals' peers (the
        client certificate presented to them comes from :meth:`cli_env`)."""
        out: list[str] = []
        for msp in msps:
            out += ["--peerAddresses", self.peer_address(msp)]
            out += ["--tlsRootCertFiles", str(self.tls_ca(msp))]
        return out

    def peer_cli(
        self,
        msp: str,
        args: Sequence[str],
        *,
        peer: str | None = None,
        timeout: float = 60.0,
    ) -> str:
        """Run ``peer <args>`` as ``msp``'s admin; its standard output. Raises
        :class:`FabricNetError` with the error lines (or the output's tail) when it fails."""
        return self._run(
            [str(self.bin_dir / "peer"), *args],
            env=self.cli_env(msp, peer=peer),
            what=f"peer {' '.join(args[:3])} as {msp}",
            timeout=timeout,
        )

    def invoke(
        self, msp: str, args: Sequence[str], *, endorsers: Sequence[str], wait: bool = True
    ) -> str:
        """``peer chaincode invoke`` of our chaincode as ``msp``'s admin, endorsed by the peers
        of ``endorsers`` (``args``: the function, then its arguments); with ``wait``, returns
        once the endorsing peers committed it (call :meth:`wait_synced` before reading on
        another peer). Raises :class:`FabricNetError` with the peer's refusal."""
        return self.peer_cli(
            msp,
            [
                "chaincode",
                "invoke",
                *self.orderer_args(),
                "-C",
                self.spec.channel,
                "-n",
                self.spec.chaincode,
                *self.peer_args(endorsers),
                *(["--waitForEvent"] if wait else []),
                "-c",
                json.dumps({"Args": list(args)}),
            ],
        )

    def query(self, msp: str, args: Sequence[str], *, peer: str | None = None) -> str:
        """``peer chaincode query`` of our chaincode as ``msp``'s admin on ``peer``'s peer
        (default: its own); the chaincode's answer."""
        return self.peer_cli(
            msp,
            [
                "chaincode",
                "query",
                "-C",
                self.spec.channel,
                "-n",
                self.spec.chaincode,
                "-c",
                json.dumps({"Args": list(args)}),
            ],
            peer=peer,
        )

    def _run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        what: str,
        timeout: float = 60.0,
    ) -> str:
        try:
            done = subprocess.run(  # noqa: S603 - binaries of this network
                list(argv),
                env={**os.environ, **env},
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                cwd=self.dir,
            )
        except subprocess.TimeoutExpired:
            raise FabricNetError(f"{what} did not finish in {timeout:.0f} s") from None
        output = done.stdout + done.stderr
        if done.returncode != 0:
            lines = output.strip().splitlines()
            # The CLI prints its usage after an error; the "Error:" line is what matters.
            errors = [line for line in lines if line.startswith("Error:")]
            tail = " | ".join(errors or lines[-6:])
            raise FabricNetError(f"{what} failed (exit {done.returncode}): {tail}")
        return done.stdout

    def _retry(
        self, action: Callable[[], str], deadline: float, done_already: str | None = None
    ) -> bool:
        """Run ``action`` until it succeeds (True), retrying transient refusals until the
        deadline; False when it fails with ``done_already`` (the step had happened)."""
        while True:
            try:
                action()
                return True
            except FabricNetError as exc:
                if done_already is not None and re.search(done_already, str(exc)):
                    _log.info("already done: %s", exc)
                    return False
                if not _TRANSIENT.search(str(exc)) or time.monotonic() > deadline:
                    raise
                self._check_alive()  # a dead node's refusals are not transient
                _log.info("retrying: %s", exc)
                time.sleep(0.5)

    def _each_org(
        self,
        step: str,
        action: Callable[[str], str],
        deadline: float,
        done_already: str | None = None,
    ) -> None:
        todo = [m for m in self.spec.msp_ids if f"{step}:{m}" not in self._state.done]
        if not todo:
            return
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(todo)) as pool:
            futures = {
                pool.submit(self._retry, functools.partial(action, m), deadline, done_already): m
                for m in todo
            }
            errors = []
            for future in concurrent.futures.as_completed(futures):
                msp = futures[future]
                try:
                    future.result()
                except FabricNetError as exc:
                    errors.append(str(exc))
                else:
                    self._mark(f"{step}:{msp}")
        if errors:
            raise FabricNetError("; ".join(errors))

    def _deploy(self, say: Progress, deadline: float) -> None:
        spec = self.spec
        block = self._checked_genesis()
        say(f"joining every orderer to channel {spec.channel} (channel participation API)")
        for i in range(spec.orderers):
            if f"orderer-join:{i + 1}" in self._state.done:
                continue
            join = functools.partial(self._orderer_join, i, block)
            self._retry(join, deadline, _ORDERER_JOINED)
            fault_point("fabricnet.orderer_join.before_mark")
            self._mark(f"orderer-join:{i + 1}")
        say("waiting for a consensus leader")
        self._wait_leader(spec.channel, deadline)
        say("joining every peer")

        def peer_join(msp: str) -> str:
            out = self.peer_cli(msp, ["channel", "join", "-b", str(self.genesis_block)])
            fault_point("fabricnet.peer_join.before_mark")
            return out

        self._each_org("join", peer_join, deadline, _JOINED)
        label = self.package_id.split(":", 1)[0]
        package = self.dir / "chaincode" / f"{label}.tgz"
        self._deploy_chaincode(spec.chaincode, self.package_id, package, say, deadline, "")

    def deploy_chaincode(
        self,
        name: str,
        package_id: str,
        package: Path,
        progress: Progress | None = None,
        *,
        timeout: float = 120.0,
    ) -> None:
        """Install, approve (every hospital) and commit another chaincode ``name`` on the
        running network's channel, beside the contract (``bench fabric``'s trivial chaincode).
        Each step is recorded like the first start's, so a repeated call resumes."""
        if name == self.spec.chaincode or not re.fullmatch(r"[a-z][a-z0-9.-]{0,48}", name):
            raise FabricNetError(f"chaincode name {name!r} is taken or not [a-z][a-z0-9.-]*")
        say = progress or (lambda _msg: None)
        self._deploy_chaincode(
            name, package_id, package, say, time.monotonic() + timeout, f"{name}/"
        )

    def _deploy_chaincode(
        self,
        name: str,
        package_id: str,
        package: Path,
        say: Progress,
        deadline: float,
        steps: str,
    ) -> None:
        spec = self.spec
        first = spec.msp_ids[0]
        orderer = self.orderer_args()
        say("installing the chaincode package on every peer")

        def install(msp: str) -> str:
            listed = self.peer_cli(msp, ["lifecycle", "chaincode", "queryinstalled"])
            if package_id in listed:
                return listed
            self.peer_cli(msp, ["lifecycle", "chaincode", "install", str(package)])
            listed = self.peer_cli(msp, ["lifecycle", "chaincode", "queryinstalled"])
            if package_id not in listed:
                raise FabricNetError(
                    f"the peer of {msp} does not list package {package_id} after "
                    "installing it: " + " | ".join(listed.strip().splitlines()[-3:])
                )
            return listed

        self._each_org(f"{steps}install", install, deadline)
        definition = [
            "-C",
            spec.channel,
            "-n",
            name,
            "-v",
            _CC_VERSION,
            "--sequence",
            _CC_SEQUENCE,
        ]
        if self._committed(name):
            # An earlier start committed the definition but was interrupted before recording it.
            self._mark(f"{steps}commit")
            return
        approve = ["lifecycle", "chaincode", "approveformyorg", *definition]
        approve += ["--package-id", package_id, "--waitForEvent"]
        readiness = ["lifecycle", "chaincode", "checkcommitreadiness", *definition]
        readiness += ["--output", "json"]

        def approve_once(msp: str) -> str:
            approvals = json.loads(self.peer_cli(msp, readiness)).get("approvals", {})
            if approvals.get(msp) is True:
                return "approved already"
            return self.peer_cli(msp, [*approve, *self.orderer_args(msp)])

        say("approving the chaincode as every hospital's admin")
        self._each_org(f"{steps}approve", approve_once, deadline)
        say("committing the chaincode definition")
        commit = ["lifecycle", "chaincode", "commit", *orderer, *definition]
        commit += [*self.peer_args(spec.msp_ids), "--waitForEvent"]
        self._retry(lambda: self.peer_cli(first, commit), deadline)
        self._mark(f"{steps}commit")

    def _checked_genesis(self) -> bytes:
        """The genesis block's bytes, refused when missing or not the ones create() wrote."""
        path = self.genesis_block
        try:
            block = path.read_bytes()
        except OSError as exc:
            raise FabricNetError(
                f"the channel's genesis block {path} cannot be read ({exc.strerror}): "
                "create the network again"
            ) from None
        digest = hashlib.sha256(block).hexdigest()
        if digest != self._state.genesis_sha256:
            raise FabricNetError(
                f"the channel's genesis block {path} was changed after the network was created "
                f"(sha256 {digest[:16]}…, created {self._state.genesis_sha256[:16]}…): "
                "restore it or create the network again"
            )
        return block

    def _orderer_join(self, index: int, block: bytes) -> str:
        """POST the genesis block to an orderer's channel participation API, as the orderer
        organisation's admin (mutual TLS). Python rather than ``osnadmin``: one HTTPS request
        whose status and JSON error we read directly, the same on 2.3, 2.5 and 3.x."""
        name = f"orderer{index + 1}"
        address = self.orderer_admin_address(index)
        status, body = self._admin_request(index, "POST", "/participation/v1/channels", block)
        if status != 201:
            try:
                reason = str(json.loads(body)["error"])
            except (ValueError, KeyError, TypeError):
                reason = body.decode("utf-8", errors="replace").strip()[:200]
            raise FabricNetError(f"joining {name} ({address}) to the channel: {status} {reason}")
        return body.decode("utf-8", errors="replace")

    def _admin_request(
        self, index: int, method: str, path: str, block: bytes | None = None
    ) -> tuple[int, bytes]:
        cert, key = self.orderer_admin_tls()
        context = ssl.create_default_context(cafile=str(self.tls_ca(ORDERER_MSP)))
        context.load_cert_chain(str(cert), str(key))
        host, port = self.orderer_admin_address(index).rsplit(":", 1)
        headers: dict[str, str] = {}
        data = None
        if block is not None:
            boundary = secrets.token_hex(16)
            data = (
                (
                    f'--{boundary}\r\nContent-Disposition: form-data; name="config-block"; '
                    f'filename="{self.spec.channel}.block"\r\n'
                    "Content-Type: application/octet-stream\r\n\r\n"
                ).encode()
                + block
                + f"\r\n--{boundary}--\r\n".encode()
            )
            headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
        connection = http.client.HTTPSConnection(host, int(port), context=context, timeout=30)
        try:
            connection.request(method, path, body=data, headers=headers)
            response = connection.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise FabricNetError(
                f"orderer{index + 1}'s admin endpoint {host}:{port}: {exc}"
            ) from None
        finally:
            connection.close()

    def orderer_channels(self, index: int = 0) -> list[str]:
        """The channels an orderer is a member of, from its channel participation API."""
        status, body = self._admin_request(index, "GET", "/participation/v1/channels")
        if status != 200:
            raise FabricNetError(f"orderer{index + 1} lists no channels: {status} {body[:200]!r}")
        listed = json.loads(body).get("channels") or []
        return [str(c["name"]) for c in listed]

    def _committed(self, name: str) -> bool:
        query = ["lifecycle", "chaincode", "querycommitted"]
        query += ["-C", self.spec.channel, "-n", name]
        try:
            self.peer_cli(self.spec.msp_ids[0], query)
        except FabricNetError as exc:
            if f"namespace {name} is not defined" in str(exc):
                return False
            raise
        return True

    def heights(self) -> dict[str, int]:
        """Each hospital's peer's block height on the channel (``peer channel getinfo``)."""
        return {msp: self.height(msp) for msp in self.spec.msp_ids}

    def height(self, msp: str) -> int:
        """One hospital's peer's block height on the channel (``peer channel getinfo``)."""
        info = self.peer_cli(msp, ["channel", "getinfo", "-c", self.spec.channel])
        found = re.search(r'"height":(\d+)', info)
        if found is None:
            raise FabricNetError(f"the peer of {msp} gave no block height: {info.strip()!r}")
        return int(found.group(1))

    def wait_synced(self, timeout: float = 30.0) -> int:
        """Wait until every peer has the blocks the most advanced one had when called; the
        height. A transaction's ``--waitForEvent`` covers only the peers that endorsed it,
        and the others commit its block a moment later: read on them after this."""
        target = max(self.heights().values())
        deadline = time.monotonic() + timeout
        while True:
            heights = self.heights()
            if min(heights.values()) >= target:
                return target
            if time.monotonic() > deadline:
                raise FabricNetError(f"peers did not reach block height {target}: {heights}")
            time.sleep(0.05)
