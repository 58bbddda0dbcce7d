"""Peer identity: Ed25519 keys, libp2p PeerIds and the message signatures they make.

A PeerId for an Ed25519 key is the identity multihash of the key's libp2p protobuf encoding
(``08 01 12 20 || key``), so the public key can be read back from the PeerId itself: an offer
carries only its provider's PeerId, and that is enough to verify it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import base58
import nacl.bindings
import nacl.exceptions
import nacl.signing

from rigmesh.wire.errors import BadSignature, Malformed

#: identity multihash (0x00, length 36) of the protobuf PublicKey{Type: Ed25519, Data: 32 bytes}.
PEER_ID_PREFIX = bytes([0x00, 0x24, 0x08, 0x01, 0x12, 0x20])
PEER_ID_SIZE = len(PEER_ID_PREFIX) + 32


def peer_id_from_public_key(public_key: bytes) -> bytes:
    if len(public_key) != 32:
        raise Malformed("an Ed25519 public key has 32 bytes")
    return PEER_ID_PREFIX + public_key


def public_key_from_peer_id(peer_id: bytes) -> bytes:
    if len(peer_id) != PEER_ID_SIZE or not peer_id.startswith(PEER_ID_PREFIX):
        raise Malformed("not the PeerId of an Ed25519 key")
    return peer_id[len(PEER_ID_PREFIX) :]


def peer_id_to_text(peer_id: bytes) -> str:
    """The usual base58btc form (``12D3KooW…``)."""
    return base58.b58encode(peer_id).decode()


def peer_id_from_text(text: str) -> bytes:
    try:
        peer_id = base58.b58decode(text)
    except ValueError:
        raise Malformed(f"not a base58 PeerId: {text!r}") from None
    public_key_from_peer_id(peer_id)
    return peer_id


def verify(public_key: bytes, message: bytes, signature: bytes) -> None:
    """Raise BadSignature unless `signature` is `public_key`'s Ed25519 signature of `message`."""
    if len(signature) != 64:
        raise BadSignature("an Ed25519 signature has 64 bytes")
    try:
        nacl.bindings.crypto_sign_open(signature + message, public_key)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError):
        raise BadSignature("Ed25519 signature does not verify") from None


@dataclass(frozen=True)
class PeerKey:
    """An Ed25519 signing key with its PeerId. `seed` is the 32-byte private seed."""

    seed: bytes = field(repr=False)
    _signing: nacl.signing.SigningKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.seed) != 32:
            raise ValueError("an Ed25519 seed has 32 bytes")
        object.__setattr__(self, "_signing", nacl.signing.SigningKey(self.seed))

    @classmethod
    def generate(cls) -> PeerKey:
        return cls(bytes(nacl.signing.SigningKey.generate()))

    @property
    def public_key(self) -> bytes:
        return bytes(self._signing.verify_key)

    @property
    def peer_id(self) -> bytes:
        return peer_id_from_public_key(self.public_key)

    def sign(self, message: bytes) -> bytes:
        return self._signing.sign(message).signature
