"""Install Kubo (the IPFS daemon) from the Go module proxy and run it as a plain local process.

- :func:`install_kubo` runs ``go install github.com/ipfs/kubo/cmd/ipfs@v0.39.0`` with
  ``CGO_ENABLED=0`` into ``network/build/bin`` and does nothing when that binary already reports
  0.39.0. Kubo 0.39 must be compiled with Go 1.25: one of its dependencies
  (``github.com/cockroachdb/swiss``) reaches into runtime internals and is build-tagged off for
  Go ≥ 1.26, so the build pins ``GOTOOLCHAIN=go1.25.4`` — the go command fetches that toolchain
  from the module proxy itself. (Kubo ≥ 0.40 cannot be ``go install``-ed at all: its go.mod has
  ``exclude`` directives.)
- :class:`KuboDaemon` initialises a repository with ``--profile=test`` (loopback only, no
  bootstrap peers, no mDNS), binds API and gateway to 127.0.0.1 (port 0 = let Kubo choose and
  read the choice from ``$IPFS_PATH/api``), runs ``ipfs daemon --offline``, waits for the RPC to
  answer ``/api/v0/id`` within a deadline, and stops the process it started by pid (SIGTERM, then
  SIGKILL), all through :mod:`ehrshare.network.supervisor`. Errors name the daemon, its log file
  and the log's last lines. Where the binary is: :mod:`ehrshare.network.binaries`.

Run ``python -m ehrshare.network.kubo install`` (what ``make tools`` does): progress goes to
stderr, the binary's path to stdout. This module must not touch any process it did not start.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import httpx

from ehrshare.network.binaries import kubo_bin_dir
from ehrshare.network.supervisor import Child, log_tail, start_child, stop_process, wait_ready
from ehrshare.storage.ipfs import api_url_from_multiaddr

__all__ = [
    "GO_TOOLCHAIN",
    "KUBO_MODULE",
    "KUBO_VERSION",
    "KuboDaemon",
    "KuboDaemonError",
    "KuboInstallError",
    "install_kubo",
    "installed_version",
    "kubo_binary",
    "main",
]

KUBO_VERSION = "0.39.0"
KUBO_MODULE = "github.com/ipfs/kubo/cmd/ipfs"
GO_TOOLCHAIN = "go1.25.4"
"""The Go toolchain Kubo 0.39 is built with (see the module docstring for why not newer)."""

_log = logging.getLogger(__name__)
_LOG_TAIL_LINES = 20


class KuboInstallError(RuntimeError):
    """Kubo could not be installed (no Go, proxy refused the module, build failed)."""


class KuboDaemonError(RuntimeError):
    """A Kubo daemon could not be initialised, started or stopped."""


def kubo_binary(bin_dir: Path | None = None) -> Path:
    """The path of the ``ipfs`` binary :func:`install_kubo` manages in ``bin_dir`` (default
    :func:`~ehrshare.network.binaries.kubo_bin_dir`); it may not exist yet."""
    return (bin_dir or kubo_bin_dir()) / "ipfs"


def installed_version(binary: Path) -> str | None:
    """The version ``binary`` reports (``0.39.0``), or None if it is absent or does not run."""
    if not binary.is_file():
        return None
    try:
        done = subprocess.run(  # noqa: S603 - fixed argv, our own binary
            [str(binary), "version", "--number"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def install_kubo(
    bin_dir: Path | None = None,
    *,
    version: str = KUBO_VERSION,
    go: str = "go",
    toolchain: str = GO_TOOLCHAIN,
) -> Path:
    """Make sure ``ipfs`` ``version`` is in ``bin_dir``; build it with ``go install`` if not.

    Idempotent and cheap when already installed (one ``ipfs version`` call). A first build
    takes a few minutes; the go command's own output goes to this process's stderr. Raises
    :class:`KuboInstallError` saying what to do if Go is missing or the build fails.
    """
    bin_dir = bin_dir or kubo_bin_dir()
    binary = kubo_binary(bin_dir)
    if installed_version(binary) == version:
        _log.debug("kubo %s already installed at %s", version, binary)
        return binary
    go_path = shutil.which(go)
    if go_path is None:
        raise KuboInstallError(
            f"cannot build Kubo {version}: the Go command {go!r} is not on PATH. Install Go "
            f"(≥ 1.21; it fetches the pinned {toolchain} toolchain itself) from https://go.dev/dl"
        )
    bin_dir.mkdir(parents=True, exist_ok=True)
    with (bin_dir / ".kubo-install.lock").open("w") as lock:
        # Serialise concurrent installs (make tools and a test session, say).
        fcntl.flock(lock, fcntl.LOCK_EX)
        if installed_version(binary) == version:
            return binary
        env = dict(os.environ)
        env.update(
            CGO_ENABLED="0",
            GOBIN=str(bin_dir.resolve()),
            GOTOOLCHAIN=toolchain,
            GOFLAGS=(env.get("GOFLAGS", "") + " -buildvcs=false").strip(),
        )
        target = f"{KUBO_MODULE}@v{version}"
        _log.warning(
            "building Kubo %s with %s (first time only, a few minutes): go install %s",
            version,
            toolchain,
            target,
        )
        started = time.monotonic()
        done = subprocess.run(  # noqa: S603 - fixed argv
            [go_path, "install", target],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=2,  # go reports progress on stderr; keep our stdout for the binary's path
            stderr=None,
            check=False,
        )
        if done.returncode != 0:
            raise KuboInstallError(
                f"`go install {target}` failed with exit code {done.returncode} (its output is "
                f"above). If the module proxy refused it, check GOPROXY "
                f"({env.get('GOPROXY') or 'default'}); see network/README.md."
            )
        got = installed_version(binary)
        if got != version:
            raise KuboInstallError(f"built {binary} but it reports version {got!r}, not {version}")
        _log.warning("built Kubo %s in %.0f s: %s", version, time.monotonic() - started, binary)
        return binary


class KuboDaemon:
    """One Kubo daemon on 127.0.0.1 with its own repository directory.

    Use it as a context manager (``with KuboDaemon(path) as daemon: daemon.api_url``) or call
    :meth:`start` / :meth:`stop`. Ports default to 0: Kubo picks free ones and reports the API
    address in ``<repo>/api``, which avoids the race of choosing a port here and binding it there.
    ``die_with_parent=True`` asks Linux to SIGTERM the daemon if the starting thread dies (for
    test sessions that may be killed); leave it off in servers that start daemons from threads.
    """

    def __init__(
        self,
        repo: str | os.PathLike[str],
        *,
        binary: Path | None = None,
        name: str = "kubo",
        api_port: int = 0,
        gateway_port: int = 0,
        offline: bool = True,
        start_timeout: float = 60.0,
        stop_timeout: float = 15.0,
        command_timeout: float = 60.0,
        die_with_parent: bool = False,
    ) -> None:
        for label, port in (("api_port", api_port), ("gateway_port", gateway_port)):
            if not 0 <= port <= 65535:
                raise ValueError(f"{label} must be 0..65535, got {port}")
        self.repo = Path(repo).resolve()
        self.binary = binary or kubo_binary()
        self.name = name
        self.api_port = api_port
        self.gateway_port = gateway_port
        self.offline = offline
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.command_timeout = command_timeout
        self.die_with_parent = die_with_parent
        self.log_path = self.repo / "daemon.log"
        self._process: Child | None = None
        self._api_url: str | None = None

    def __repr__(self) -> str:
        return f"KuboDaemon(name={self.name!r}, repo={str(self.repo)!r}, pid={self.pid})"

    @property
    def pid(self) -> int | None:
        """The daemon's process id while it runs (None before start and after stop)."""
        return self._process.pid if self._process is not None else None

    @property
    def api_url(self) -> str:
        """The RPC base URL (``http://127.0.0.1:PORT``); only valid while running."""
        if self._api_url is None:
            raise KuboDaemonError(f"kubo daemon {self.name!r} is not running")
        return self._api_url

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["IPFS_PATH"] = str(self.repo)
        # No telemetry reports (there is no internet here, and a hospital should not send any).
        env["IPFS_TELEMETRY"] = "off"
        return env

    def _tail(self) -> str:
        return log_tail(self.log_path, lines=_LOG_TAIL_LINES, sep="\n")

    def _error(self, what: str) -> KuboDaemonError:
        return KuboDaemonError(
            f"kubo daemon {self.name!r} (repo {self.repo}) {what}; log: {self.log_path}\n"
            f"--- last lines of the log ---\n{self._tail()}"
        )

    def _ipfs(self, *args: str) -> None:
        with self.log_path.open("ab") as log:
            try:
                done = subprocess.run(  # noqa: S603 - fixed argv, our own binary
                    [str(self.binary), *args],
                    env=self._env(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    timeout=self.command_timeout,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                # run() has killed the command; say which one hung and where its output is
                raise self._error(
                    f"`ipfs {' '.join(args[:2])}` did not finish within "
                    f"{self.command_timeout:.0f} s (is another process holding the repo lock?)"
                ) from None
        if done.returncode != 0:
            raise self._error(f"`ipfs {' '.join(args[:2])}` exited with {done.returncode}")

    def init(self) -> None:
        """Create and configure the repository (idempotent; an existing one is reconfigured)."""
        if not self.binary.is_file():
            raise KuboDaemonError(
                f"kubo binary {self.binary} does not exist: run `make tools` or "
                f"`python -m ehrshare.network.kubo install`"
            )
        self.repo.mkdir(parents=True, exist_ok=True)
        if not (self.repo / "config").is_file():
            self._ipfs("init", "--profile=test", "--empty-repo")
        self._ipfs("config", "--json", "Addresses.API", f'"/ip4/127.0.0.1/tcp/{self.api_port}"')
        self._ipfs(
            "config", "--json", "Addresses.Gateway", f'"/ip4/127.0.0.1/tcp/{self.gateway_port}"'
        )
        self._ipfs("config", "--json", "Addresses.Swarm", '["/ip4/127.0.0.1/tcp/0"]')
        self._ipfs("config", "--json", "Bootstrap", "[]")

    def _probe(self, url: str) -> bool:
        try:
            response = httpx.post(url + "/api/v0/id", timeout=2.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    def start(self) -> KuboDaemon:
        """Initialise if needed, start the daemon and wait until its RPC answers."""
        if self._process is not None:
            raise KuboDaemonError(f"kubo daemon {self.name!r} is already running (pid {self.pid})")
        self.init()
        api_file = self.repo / "api"
        if api_file.exists():
            stale = api_file.read_text().strip()
            with contextlib.suppress(ValueError):
                if self._probe(api_url_from_multiaddr(stale)):
                    raise self._error(f"cannot start: another daemon already serves {stale}")
            api_file.unlink(missing_ok=True)
        args = [str(self.binary), "daemon"]
        if self.offline:
            args.append("--offline")
        try:
            self._process = start_child(
                f"kubo daemon {self.name!r}",
                args,
                self.log_path,
                env=self._env(),
                new_session=True,  # a Ctrl-C in the terminal must not hit it directly
                die_with_parent=self.die_with_parent,
            )
        except OSError as exc:
            raise self._error(f"could not be started: {exc}") from exc
        _log.info("started kubo daemon %r pid %d (log %s)", self.name, self.pid, self.log_path)
        try:
            self._wait_ready(api_file)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, api_file: Path) -> None:
        process = self._process
        assert process is not None

        def answers() -> bool:
            if not api_file.exists():
                return False
            try:
                url = api_url_from_multiaddr(api_file.read_text())
            except ValueError:
                return False  # written but not complete yet
            if not self._probe(url):
                return False
            self._api_url = url
            return True

        deadline = time.monotonic() + self.start_timeout
        outcome = wait_ready(answers, process.alive, deadline, interval=0.25, backoff_from=0.02)
        if outcome == "died":
            raise self._error(f"exited with code {process.returncode} while starting")
        if outcome == "late":
            raise self._error(f"did not answer /api/v0/id within {self.start_timeout:.0f} s")
        _log.info("kubo daemon %r ready at %s", self.name, self._api_url)

    def stop(self) -> None:
        """Stop the daemon started here: SIGTERM, then SIGKILL after ``stop_timeout``."""
        process = self._process
        if process is None:
            return
        try:
            stop_process(process, grace=self.stop_timeout)
        finally:
            self._process = None
            self._api_url = None
        _log.info("stopped kubo daemon %r (pid %d)", self.name, process.pid)

    def __enter__(self) -> KuboDaemon:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ehrshare.network.kubo install``: build Kubo if needed, print its path."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args != ["install"]:
        sys.stderr.write("usage: python -m ehrshare.network.kubo install\n")
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        binary = install_kubo()
    except KuboInstallError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    sys.stderr.write(f"kubo {KUBO_VERSION} ready: {binary}\n")
    sys.stdout.write(f"{binary}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
