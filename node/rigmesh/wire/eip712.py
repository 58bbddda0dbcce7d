"""EIP-712 typed data for everything the escrow contract checks.

The type strings below are part of the protocol: contracts/src/RentalEscrow.sol declares the same
ones, and tests/escrow checks that both produce the same hashes. Type hashes and domain separators
are computed once; recovery goes straight to coincurve (eth-account's generic path re-parses the
types on every call and is about five times slower).

Signatures are 65 bytes ``r || s || v`` with v in {27, 28} and s in the lower half of the curve
order (EIP-2), as OpenZeppelin's ECDSA requires.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import coincurve
from multiformats.multihash import keccak_256

from rigmesh.wire.errors import BadSignature

__all__ = ["keccak"]


def keccak(data: bytes) -> bytes:
    """Keccak-256, by py-multiformats' Rust hash: about 0.7 us a call where eth_hash's
    pycryptodome backend takes 7 us, and a signed rental round hashes a dozen times."""
    return keccak_256(bytes(data)).digest


SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_HALF_N = SECP256K1_N // 2

DOMAIN_TYPE = b"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
#: The binding of an Ethereum payee to a PeerId is chain-independent, so its domain has no chain.
BINDING_DOMAIN_TYPE = b"EIP712Domain(string name,string version)"

ESCROW_NAME = b"Rigmesh Escrow"
BINDING_NAME = b"Rigmesh"
VERSION = b"1"

RECEIPT_TYPE = (
    b"Receipt(bytes32 rentalId,uint64 seq,uint64 uptimeSeconds,uint256 amount,bytes32 evidence)"
)
TERMS_TYPE = (
    b"Terms(address renter,address provider,address token,uint256 deposit,uint256 pricePerSecond,"
    b"uint64 maxSeconds,uint64 challengeWindow,address receiptSigner,bytes32 agreementId)"
)
OPEN_REQUEST_TYPE = b"OpenRequest(Terms terms,uint256 nonce,uint256 deadline)" + TERMS_TYPE
PEER_BINDING_TYPE = b"PeerBinding(bytes peerId,address payee)"

DOMAIN_TYPEHASH = keccak(DOMAIN_TYPE)
BINDING_DOMAIN_TYPEHASH = keccak(BINDING_DOMAIN_TYPE)
RECEIPT_TYPEHASH = keccak(RECEIPT_TYPE)
TERMS_TYPEHASH = keccak(TERMS_TYPE)
OPEN_REQUEST_TYPEHASH = keccak(OPEN_REQUEST_TYPE)
PEER_BINDING_TYPEHASH = keccak(PEER_BINDING_TYPE)


def _word(value: int) -> bytes:
    return value.to_bytes(32, "big")


def _address(addr: bytes) -> bytes:
    if len(addr) != 20:
        raise ValueError("an address has 20 bytes")
    return bytes(12) + addr


def _bytes32(value: bytes) -> bytes:
    if len(value) != 32:
        raise ValueError("a bytes32 has 32 bytes")
    return value


@lru_cache(maxsize=64)
def escrow_domain_separator(chain_id: int, escrow: bytes) -> bytes:
    return keccak(
        DOMAIN_TYPEHASH + keccak(ESCROW_NAME) + keccak(VERSION) + _word(chain_id) + _address(escrow)
    )


BINDING_DOMAIN_SEPARATOR = keccak(BINDING_DOMAIN_TYPEHASH + keccak(BINDING_NAME) + keccak(VERSION))


def typed_data_digest(domain_separator: bytes, struct_hash: bytes) -> bytes:
    return keccak(b"\x19\x01" + domain_separator + struct_hash)


@dataclass(frozen=True, slots=True)
class Receipt:
    """The renter's signed statement: for this rental, `amount` is owed in total so far."""

    rental_id: bytes
    seq: int
    uptime_seconds: int
    amount: int
    evidence: bytes

    def struct_hash(self) -> bytes:
        return keccak(
            RECEIPT_TYPEHASH
            + _bytes32(self.rental_id)
            + _word(self.seq)
            + _word(self.uptime_seconds)
            + _word(self.amount)
            + _bytes32(self.evidence)
        )


@dataclass(frozen=True, slots=True)
class Terms:
    """What the renter locks in the escrow. The rental id is this struct's EIP-712 hash."""

    renter: bytes
    provider: bytes
    token: bytes
    deposit: int
    price_per_second: int
    max_seconds: int
    challenge_window: int
    receipt_signer: bytes
    agreement_id: bytes

    def struct_hash(self) -> bytes:
        return keccak(
            TERMS_TYPEHASH
            + _address(self.renter)
            + _address(self.provider)
            + _address(self.token)
            + _word(self.deposit)
            + _word(self.price_per_second)
            + _word(self.max_seconds)
            + _word(self.challenge_window)
            + _address(self.receipt_signer)
            + _bytes32(self.agreement_id)
        )

    @property
    def rental_id(self) -> bytes:
        return self.struct_hash()

    def as_abi_tuple(self) -> tuple[object, ...]:
        """The tuple web3 passes for the contract's `Terms` calldata struct."""
        return (
            self.renter, self.provider, self.token, self.deposit, self.price_per_second,
            self.max_seconds, self.challenge_window, self.receipt_signer, self.agreement_id,
        )


@dataclass(frozen=True, slots=True)
class OpenRequest:
    """Terms the renter signed so that anyone (normally the provider) can open for it."""

    terms: Terms
    nonce: int
    deadline: int

    def struct_hash(self) -> bytes:
        return keccak(
            OPEN_REQUEST_TYPEHASH
            + self.terms.struct_hash()
            + _word(self.nonce)
            + _word(self.deadline)
        )


@dataclass(frozen=True, slots=True)
class PeerBinding:
    """The payee's Ethereum key vouching for a libp2p PeerId (signed once, carried in offers)."""

    peer_id: bytes
    payee: bytes

    def struct_hash(self) -> bytes:
        return keccak(PEER_BINDING_TYPEHASH + keccak(self.peer_id) + _address(self.payee))

    def digest(self) -> bytes:
        return typed_data_digest(BINDING_DOMAIN_SEPARATOR, self.struct_hash())


@dataclass(frozen=True)
class EthKey:
    """A secp256k1 account key (settlement identity)."""

    secret: bytes

    def __post_init__(self) -> None:
        object.__setattr__(self, "_key", coincurve.PrivateKey(self.secret))

    @property
    def address(self) -> bytes:
        return address_of(self._key.public_key.format(compressed=False))  # type: ignore[attr-defined]

    def sign_digest(self, digest: bytes) -> bytes:
        """65-byte r||s||v (v = 27 or 28); libsecp256k1 always produces low-s signatures."""
        sig = self._key.sign_recoverable(digest, hasher=None)  # type: ignore[attr-defined]
        return sig[:64] + bytes([sig[64] + 27])


def address_of(uncompressed_public_key: bytes) -> bytes:
    return keccak(uncompressed_public_key[1:])[12:]


def recover(digest: bytes, signature: bytes) -> bytes:
    """The address that signed `digest`. Refuses malformed, high-s and bad-v signatures."""
    if len(signature) != 65:
        raise BadSignature("an ECDSA signature has 65 bytes")
    v = signature[64]
    if v not in (27, 28):
        raise BadSignature("v must be 27 or 28")
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:64], "big")
    if not (0 < r < SECP256K1_N and 0 < s <= _HALF_N):
        raise BadSignature("r or s out of range (high-s signatures are malleable)")
    try:
        public = coincurve.PublicKey.from_signature_and_message(
            signature[:64] + bytes([v - 27]), digest, hasher=None
        )
    except Exception:  # coincurve raises ValueError or its own errors for unrecoverable inputs
        raise BadSignature("signature does not recover") from None
    return address_of(public.format(compressed=False))


def verify_signer(digest: bytes, signature: bytes, expected: bytes) -> None:
    if recover(digest, signature) != expected:
        raise BadSignature("signed by another key")
