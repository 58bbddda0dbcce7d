"""The envelope every Rigmesh message shares, and how it is signed.

A message is a canonical CBOR map with ``v`` (protocol version), ``kind`` (text) and the kind's
fields. Ed25519-signed kinds carry ``sig``: the signature over

    signing_input = b"rigmesh/sig/v1\\x00" || canonical_cbor(message without "sig")

The prefix keeps a Rigmesh signature from ever being valid for another protocol that the same
libp2p key signs for. A message's id is the CID of its whole signed encoding (wire/cid.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from rigmesh.wire import cbor
from rigmesh.wire.errors import Malformed, UnknownKind, UnknownVersion, WireError

T = TypeVar("T")

PROTOCOL_VERSION = 1
SIGNATURE_DOMAIN = b"rigmesh/sig/v1\x00"


def signing_input(unsigned: dict[str, Any], *, ordered: bool = False) -> bytes:
    """``ordered=True``: `unsigned` came from `cbor.decode` (see `cbor.encode`)."""
    return SIGNATURE_DOMAIN + cbor.encode(unsigned, ordered=ordered)


def received_signing_input(data: bytes, decoded: dict[str, Any]) -> bytes:
    """`signing_input` of a received message: `data` (its canonical encoding, as `cbor.decode`
    accepted it) with the ``sig`` entry cut out, rather than the map encoded again.

    Removing one entry from a canonical map leaves the others in canonical order, so the cut
    bytes are the canonical encoding of the message without ``sig``. The entry is found by its
    exact bytes, which include the 64-byte signature; if they occur anywhere but once, the map
    is encoded again instead.
    """
    sig = decoded["sig"]
    entry = b"\x63sig\x58\x40" + sig  # text(3) "sig", bytes(64)
    at = data.find(entry)
    n = len(decoded)
    if len(sig) != 64 or at < 0 or data.find(entry, at + 1) >= 0 or n > 255:
        unsigned = dict(decoded)
        del unsigned["sig"]
        return signing_input(unsigned, ordered=True)
    head = len(_MAP_HEADS[n])
    return b"".join((SIGNATURE_DOMAIN, _MAP_HEADS[n - 1], data[head:at], data[at + len(entry) :]))


#: The canonical head of a map of n < 256 entries, by n.
_MAP_HEADS = tuple(bytes((0xA0 + n,)) if n < 24 else bytes((0xB8, n)) for n in range(256))


def open_typed(
    data: bytes,
    *,
    max_size: int,
    kind: str,
    shape: cbor.Shape,
    parse: Callable[[dict[str, Any]], T],
) -> tuple[dict[str, Any], T]:
    """`open_envelope` and then `parse`, for a `parse` that checks the exact type of every value
    the kind has (so it accepts nothing outside the data model, however the bytes decode).

    Fast path, which may only accept: input that matches the kind's `shape` is decoded by
    cbrrr straight into `parse`, without `cbor.decode`'s scan and checks. Any refusal on the way
    reads again by `open_envelope` and `parse`, so an error is always the one that path names.
    """
    if type(data) is bytes and len(data) <= max_size:
        m = shape.decode(data)
        if (
            type(m) is dict
            and type(m.get("v")) is int
            and m["v"] == PROTOCOL_VERSION
            and m.get("kind") == kind
        ):
            try:
                return m, parse(m)
            except WireError:
                pass
    m = open_envelope(data, max_size=max_size, kinds=frozenset({kind}))
    return m, parse(m)


def open_envelope(data: bytes, *, max_size: int, kinds: frozenset[str]) -> dict[str, Any]:
    """Decode `data` and check the version and kind; the kind's parser checks the rest."""
    m = cbor.decode(data, max_size=max_size)
    if type(m) is not dict:
        raise Malformed("a message is a CBOR map")
    v = m.get("v")
    # Anything but the integer 1, absent included, is a version this node does not speak
    # (spec/protocol.md section 2.1); the same for a kind that is not one of `kinds`.
    if type(v) is not int or v != PROTOCOL_VERSION:
        raise UnknownVersion(f"version {v!r}" if "v" in m else "no version 'v'")
    kind = m.get("kind")
    if type(kind) is not str or kind not in kinds:
        raise UnknownKind(f"kind {kind!r}" if "kind" in m else "no 'kind'")
    return m
