"""Regenerate kubo_cids.json from a live Kubo daemon (independently of ehrshare's DAG builder).

Usage: python tests/storage/vectors/generate_kubo_cids.py http://127.0.0.1:PORT > kubo_cids.json
The content of each case is ``random.Random(size).randbytes(size)``; the CIDs come straight from
``/api/v0/add`` through plain httpx, so the vectors are Kubo's answers, not ours.
"""

from __future__ import annotations

import json
import random
import sys

import httpx

CASES = [
    # (size, chunk size, max links): Kubo's defaults up to a two-level tree
    *((n, 262144, 174) for n in (0, 1, 262144, 262145, 10_000_000, 45_613_056, 45_613_057)),
    # small chunks and fan-out give trees up to five levels deep for a few kilobytes
    *((n, 16, 3) for n in (15, 16, 17, 48, 49, 144, 145, 432, 433, 1296, 1297, 3000)),
    *((n, 1000, 2) for n in (1999, 2000, 2001, 8000, 8001, 12345)),
]


def main() -> None:
    api = sys.argv[1].rstrip("/") + "/api/v0/add"
    vectors = []
    for size, chunk, links in CASES:
        data = random.Random(size).randbytes(size)
        params = {
            "cid-version": "1",
            "raw-leaves": "true",
            "hash": "sha2-256",
            "chunker": f"size-{chunk}",
            "max-file-links": str(links),
            "pin": "false",
        }
        reply = httpx.post(api, params=params, files={"file": ("blob", data)}, timeout=300)
        reply.raise_for_status()
        cid = json.loads(reply.text.splitlines()[-1])["Hash"]
        vectors.append({"size": size, "chunk_size": chunk, "max_links": links, "cid": cid})
    json.dump(
        {
            "source": "Kubo 0.39.0 /api/v0/add (cid-version=1, raw-leaves, sha2-256, balanced)",
            "content": "random.Random(size).randbytes(size)",
            "vectors": vectors,
        },
        sys.stdout,
        indent=1,
    )
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
