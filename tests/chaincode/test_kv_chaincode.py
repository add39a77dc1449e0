"""The trivial key-value chaincode (``ehrshare_chaincode.kv``), bench fabric's yardstick: one
write per Put, one read per Get, exact error texts, nothing written on a refusal."""

from __future__ import annotations

import pytest

from ehrshare_chaincode import ChaincodeError
from ehrshare_chaincode.kv import MAX_KEY, MAX_VALUE, invoke


class _Stub:
    """Counts state calls; only what the kv chaincode may use."""

    def __init__(self) -> None:
        self.state: dict[str, bytes] = {}
        self.calls: list[str] = []

    def get_state(self, key: str) -> bytes | None:
        self.calls.append(f"get {key}")
        return self.state.get(key)

    def put_state(self, key: str, value: bytes) -> None:
        self.calls.append(f"put {key}")
        self.state[key] = value


def test_put_is_one_write_and_get_reads_it_back() -> None:
    stub = _Stub()
    assert invoke(stub, "Put", [b"k-1", b"value"]) == b""  # type: ignore[arg-type]
    assert stub.calls == ["put k-1"]
    assert invoke(stub, "Get", [b"k-1"]) == b"value"  # type: ignore[arg-type]
    assert stub.calls == ["put k-1", "get k-1"]


@pytest.mark.parametrize(
    ("function", "args", "error"),
    [
        ("Put", [b"k"], "Put takes 2 arguments (key, value), got 1"),
        ("Put", [b"", b"v"], f"key must be 1 to {MAX_KEY} printable bytes"),
        ("Put", [b"k" * (MAX_KEY + 1), b"v"], f"key must be 1 to {MAX_KEY} printable bytes"),
        ("Put", [b"\x00ehr\x00r-1\x00", b"v"], f"key must be 1 to {MAX_KEY} printable bytes"),
        ("Put", [b"\xff", b"v"], "key is not valid utf-8"),
        (
            "Put",
            [b"k", b"v" * (MAX_VALUE + 1)],
            f"value is {MAX_VALUE + 1} bytes, at most {MAX_VALUE}",
        ),
        ("Get", [], "Get takes 1 argument (key), got 0"),
        ("Get", [b"absent"], "key absent does not exist"),
        ("RegisterRecord", [b"r-1"], "function RegisterRecord does not exist in the kv chaincode"),
    ],
)
def test_refusals_name_what_was_wrong_and_write_nothing(
    function: str, args: list[bytes], error: str
) -> None:
    stub = _Stub()
    with pytest.raises(ChaincodeError) as caught:
        invoke(stub, function, args)  # type: ignore[arg-type]
    assert str(caught.value) == error
    assert stub.state == {}
