"""Usage receipts on the wire: the renter's EIP-712 signed cumulative statement of what it owes.

The signed content is exactly the escrow contract's `Receipt` (wire/eip712.py); the CBOR message
adds the chain id and escrow address so a receiver can tell at once which domain the signature is
for. A receipt is never signed by the libp2p key: the contract can only check secp256k1, so the
renter's designated receipt signer signs it, and whoever holds it can settle with it on chain.

Receipts are cumulative: a later receipt supersedes every earlier one of the same rental, so only
the newest need be kept. `check_supersedes` is the rule both sides apply before accepting one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rigmesh.wire import cbor, eip712, fields
from rigmesh.wire.errors import InvalidField, Replayed, WrongChain
from rigmesh.wire.message import PROTOCOL_VERSION, open_typed

KIND = "receipt"
MAX_RECEIPT_SIZE = 512

_KEYS = frozenset(
    {"v", "kind", "chain_id", "escrow", "rental_id", "seq", "uptime_seconds", "amount",
     "evidence", "sig"}
)


class _EncodedSlot:
    """Where a receipt keeps its encoding once made (`SignedReceipt.encode`). Not a dataclass
    field: equality, hashing and repr see the receipt only."""

    __slots__ = ("_encoded",)


@dataclass(frozen=True, slots=True)
class SignedReceipt(_EncodedSlot):
    chain_id: int
    escrow: bytes
    receipt: eip712.Receipt
    sig: bytes

    def digest(self) -> bytes:
        return eip712.typed_data_digest(
            eip712.escrow_domain_separator(self.chain_id, self.escrow), self.receipt.struct_hash()
        )

    def signing_input(self) -> bytes:
        """The 66 bytes whose keccak256 the signer signed (EIP-712: 0x1901 || domain || struct)."""
        return (
            b"\x19\x01"
            + eip712.escrow_domain_separator(self.chain_id, self.escrow)
            + self.receipt.struct_hash()
        )

    def to_wire(self) -> dict[str, Any]:
        r = self.receipt
        return {
            "v": PROTOCOL_VERSION,
            "kind": KIND,
            "chain_id": self.chain_id,
            "escrow": self.escrow,
            "rental_id": r.rental_id,
            "seq": r.seq,
            "uptime_seconds": r.uptime_seconds,
            "amount": fields.amount_to_wire(r.amount),
            "evidence": r.evidence,
            "sig": self.sig,
        }

    def encode(self) -> bytes:
        """The canonical encoding, made once: the renter sends it and both sides' snapshots
        hold it at every step until the next receipt."""
        try:
            return self._encoded  # type: ignore[no-any-return]
        except AttributeError:
            pass
        encoded = cbor.encode(self.to_wire())
        object.__setattr__(self, "_encoded", encoded)
        return encoded


def sign_receipt(
    receipt: eip712.Receipt, *, chain_id: int, escrow: bytes, signer: eip712.EthKey
) -> SignedReceipt:
    unsigned = SignedReceipt(chain_id, escrow, receipt, b"")
    return SignedReceipt(chain_id, escrow, receipt, signer.sign_digest(unsigned.digest()))


def _parse(m: dict[str, Any]) -> SignedReceipt:
    fields.exact_keys(m, _KEYS, "receipt")
    return SignedReceipt(
        chain_id=fields.uint(m, "chain_id", low=1),
        escrow=fields.fixed_bytes(m, "escrow", 20),
        receipt=eip712.Receipt(
            rental_id=fields.fixed_bytes(m, "rental_id", 32),
            seq=fields.uint(m, "seq"),
            uptime_seconds=fields.uint(m, "uptime_seconds"),
            amount=fields.amount(m, "amount"),
            evidence=fields.fixed_bytes(m, "evidence", 32),
        ),
        sig=fields.fixed_bytes(m, "sig", 65),
    )


#: Every receipt's layout (`cbor.Shape`): a matching one is decoded by cbrrr and read by
#: `_parse`, which checks the type of every value; anything else takes the strict decoder,
#: which names the fault. One receipt answers every heartbeat, on both sides of a rental.
SHAPE = cbor.Shape(cbor.shape_map({
    "v": cbor.shape_literal(PROTOCOL_VERSION), "kind": cbor.shape_literal(KIND),
    "chain_id": cbor.SHAPE_UINT, "escrow": cbor.shape_bytes(20), "rental_id": cbor.shape_bytes(32),
    "seq": cbor.SHAPE_UINT, "uptime_seconds": cbor.SHAPE_UINT, "amount": cbor.shape_bytes(0, 32),
    "evidence": cbor.shape_bytes(32), "sig": cbor.shape_bytes(65),
}))  # fmt: skip


def decode_receipt(
    data: bytes, *, chain_id: int, escrow: bytes, signer: bytes, verify: bool = True
) -> SignedReceipt:
    """Decode a receipt for the rental whose escrow domain is (chain_id, escrow) and whose
    receipt signer is `signer`. Raises WrongChain for another domain, BadSignature for any other
    signer (or a high-s or malformed signature), and the usual decoding errors. `verify=False`
    skips the signature (rental/crypto.py's UNSIGNED, for simulations only)."""
    _, sr = open_typed(data, max_size=MAX_RECEIPT_SIZE, kind=KIND, shape=SHAPE, parse=_parse)
    if sr.chain_id != chain_id or sr.escrow != escrow:
        raise WrongChain(f"receipt for chain {sr.chain_id} escrow 0x{sr.escrow.hex()}")
    if verify:
        eip712.verify_signer(sr.digest(), sr.sig, signer)
    return sr


def check_supersedes(new: eip712.Receipt, held: eip712.Receipt | None) -> None:
    """A new receipt must be for the same rental and move every counter strictly or weakly
    forward: seq strictly, uptime and amount never backwards. The contract itself only looks at
    the amount; this is the stricter rule the peers hold each other to."""
    if held is None:
        return
    if new.rental_id != held.rental_id:
        raise InvalidField("receipt for another rental")
    if new.seq <= held.seq:
        raise Replayed(f"seq {new.seq} <= held {held.seq}")
    if new.amount < held.amount or new.uptime_seconds < held.uptime_seconds:
        raise InvalidField("a later receipt may not lower the amount or the uptime")
