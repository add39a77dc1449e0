"""What a test's consortium on hosts left behind, told apart from other runs' layouts."""

from __future__ import annotations

from ehrshare.network.iproute import NAME_PREFIX, our_namespaces


def consortium_leftovers(before: set[str], tag: str | None) -> list[str]:
    """Namespaces a consortium made with ``--hosts netns`` left behind: those of its layout
    (``tag``, read from its ``hosts.json`` while it existed), or with no tag known every
    namespace of ours that was not there ``before``. Another run's layouts on the same machine,
    made or removed meanwhile, do not count."""
    now = set(our_namespaces())
    if tag is None:
        return sorted(now - before)
    return sorted(n for n in now if n.startswith(NAME_PREFIX + tag))
