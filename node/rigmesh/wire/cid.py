"""Message ids: CIDv1, dag-cbor codec, sha2-256 multihash, multibase base32 (``bafyrei…``)."""

from __future__ import annotations

from multiformats import multihash
from multiformats.cid import CID


def message_cid(encoded: bytes) -> str:
    """The id of a message: the CID of its whole signed canonical encoding."""
    return str(CID(1, "dag-cbor", multihash.sha2_256(encoded)))


def message_cid_bytes(encoded: bytes) -> bytes:
    """The binary CID (used as the gossip message id, where text would only cost bytes)."""
    return CID(1, "dag-cbor", multihash.sha2_256(encoded)).to_bytes()
