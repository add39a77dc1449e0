"""Where the network's binaries are found: Fabric's ``peer``, ``orderer``, ``configtxgen`` and
``osnadmin``, and Kubo's ``ipfs``. The one lookup, with one precedence per tool:

==========  ==========================  ==========================================================
tool        variable (first)            then
==========  ==========================  ==========================================================
Fabric      ``EHRSHARE_FABRIC_BIN``     ``<checkout>/network/build/fabric23/bin`` (``make tools``)
Kubo        ``EHRSHARE_BIN_DIR``        ``<checkout>/network/build/bin``, else, with no source
                                        checkout (an installed wheel), ``~/.cache/ehrshare/bin``
                                        (where ``python -m ehrshare.network.kubo install`` builds)
==========  ==========================  ==========================================================

A *source checkout* is the repository this package was imported from (``pyproject.toml`` and
``network/`` next to ``sdk/``). Without one and without ``EHRSHARE_FABRIC_BIN`` there is no
Fabric directory to guess: :func:`fabric_bin_dir` raises :class:`BinaryDirUnknown` naming the
variable. This module only computes paths; it runs nothing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from ehrshare.errors import ConfigurationError

__all__ = [
    "FABRIC_BINARIES",
    "BinaryDirUnknown",
    "fabric_bin_dir",
    "find_binary",
    "kubo_bin_dir",
    "source_checkout",
]

FABRIC_BINARIES: Final = ("peer", "orderer", "configtxgen", "osnadmin")
_KUBO_BINARIES: Final = ("ipfs",)


class BinaryDirUnknown(ConfigurationError, LookupError):
    """No directory is known for a tool's binaries (no variable set, no source checkout)."""

    hint = "set the variable the message names, or run from a source checkout after `make tools`"


def source_checkout() -> Path | None:
    """The repository this package runs from, or None when it is installed without one."""
    repo = Path(__file__).resolve().parents[3]
    if (repo / "pyproject.toml").is_file() and (repo / "network").is_dir():
        return repo
    return None


def fabric_bin_dir() -> Path:
    """``$EHRSHARE_FABRIC_BIN``, else ``<checkout>/network/build/fabric23/bin``."""
    env = os.environ.get("EHRSHARE_FABRIC_BIN")
    if env:
        return Path(env)
    repo = source_checkout()
    if repo is None:
        raise BinaryDirUnknown(
            "where are the Fabric binaries (peer, orderer, configtxgen)? Set EHRSHARE_FABRIC_BIN "
            "to their directory: this installed ehrshare has no source checkout to build them in"
        )
    return repo / "network" / "build" / "fabric23" / "bin"


def kubo_bin_dir() -> Path:
    """``$EHRSHARE_BIN_DIR``, else ``<checkout>/network/build/bin``, else
    ``~/.cache/ehrshare/bin``."""
    env = os.environ.get("EHRSHARE_BIN_DIR")
    if env:
        return Path(env)
    repo = source_checkout()
    if repo is not None:
        return repo / "network" / "build" / "bin"
    return Path.home() / ".cache" / "ehrshare" / "bin"


def find_binary(name: str) -> Path:
    """The path of a network binary by name (``peer``, ``ipfs`` …), in its tool's directory.
    It may not exist yet (callers say ``make tools``); an unknown name is a ValueError."""
    if name in FABRIC_BINARIES:
        return fabric_bin_dir() / name
    if name in _KUBO_BINARIES:
        return kubo_bin_dir() / name
    raise ValueError(f"{name!r} is not a network binary: one of {FABRIC_BINARIES + _KUBO_BINARIES}")
