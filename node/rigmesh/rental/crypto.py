"""How a rental's signatures are made and checked, in one place the machines are given.

`SIGNED` is what every node uses: Ed25519 for what peers sign (proposals, counters, agreements,
heartbeats), EIP-712 secp256k1 for what the escrow checks (receipts, open requests). `UNSIGNED`
makes and checks no signatures at all, and exists for two callers only: the simulator, which
runs thousands of rentals through the same machines and whose peers are all honest about who
they are, and the benchmark that measures the machines' own work apart from the signatures'.
Everything else (encoding, hash chains, every rule) is the same in both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rigmesh.rental.receipt import SignedReceipt, decode_receipt, sign_receipt
from rigmesh.wire import cbor, eip712, identity
from rigmesh.wire.message import signing_input


@dataclass(frozen=True)
class Crypto:
    signed: bool

    def sign_peer(self, key: identity.PeerKey, message: bytes) -> bytes:
        return key.sign(message) if self.signed else bytes(64)

    def sign_message(
        self, key: identity.PeerKey, unsigned: dict[str, Any]
    ) -> tuple[bytes, bytes]:
        """(signature, signed encoding) of an Ed25519-signed message given without ``sig``."""
        sig = self.sign_peer(key, signing_input(unsigned))
        return sig, cbor.encode({**unsigned, "sig": sig})

    def verify_peer(self, peer_id: bytes, message: bytes, sig: bytes) -> None:
        """BadSignature unless `peer_id`'s key signed `message`."""
        if self.signed:
            identity.verify(identity.public_key_from_peer_id(peer_id), message, sig)

    def sign_receipt(
        self, key: eip712.EthKey, receipt: eip712.Receipt, *, chain_id: int, escrow: bytes
    ) -> SignedReceipt:
        if self.signed:
            return sign_receipt(receipt, chain_id=chain_id, escrow=escrow, signer=key)
        return SignedReceipt(chain_id, escrow, receipt, bytes(65))

    def read_receipt(
        self, data: bytes, *, chain_id: int, escrow: bytes, signer: bytes
    ) -> SignedReceipt:
        return decode_receipt(
            data, chain_id=chain_id, escrow=escrow, signer=signer, verify=self.signed
        )

    def sign_digest(self, key: eip712.EthKey, digest: bytes) -> bytes:
        return key.sign_digest(digest) if self.signed else bytes(65)

    def verify_digest(self, digest: bytes, sig: bytes, signer: bytes) -> None:
        if self.signed:
            eip712.verify_signer(digest, sig, signer)


SIGNED = Crypto(signed=True)
UNSIGNED = Crypto(signed=False)
