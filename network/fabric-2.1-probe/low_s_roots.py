"""Exit 0 if every self-signed CA certificate under a cryptogen output directory has a low-S
ECDSA signature (S <= n/2), else 1. Used by setup.sh; see README.md for why."""

from __future__ import annotations

import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

# Order of the P-256 group.
N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def main(root: Path) -> int:
    roots = 0
    for path in root.rglob("*.pem"):
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        if cert.issuer != cert.subject:
            continue
        roots += 1
        _, s = decode_dss_signature(cert.signature)
        if s > N // 2:
            return 1
    return 0 if roots else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
