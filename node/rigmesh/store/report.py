"""What the ledger says about each rental, in plain numbers: for `rigmesh status`, `rigmesh rent`'s
final lines and budget checks.

Read-only over `Ledger.rentals()`: the engines' snapshots are decoded for their numbers (price,
deposit, uptime of the newest heartbeat, amount of the newest receipt, the settlement), without
rebuilding the engines, so a second process can read a running node's ledger (sqlite WAL).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rigmesh.rental.codes import CloseReason
from rigmesh.rental.messages import read_agreement, read_heartbeat
from rigmesh.rental.receipt import decode_receipt
from rigmesh.store.ledger import Ledger, RentalRow


@dataclass(frozen=True)
class RentalSummary:
    key: bytes
    role: str
    peer: bytes
    rental_id: bytes | None
    state: str
    ended_by: str | None
    created: int
    updated: int
    price_per_second: int | None
    deposit: int | None
    """Locked on chain (after top-ups); None before the rental is open."""
    uptime: int
    """Seconds the newest heartbeat claims."""
    signed: int
    """The newest receipt's cumulative amount."""
    paid: int | None
    """To the provider at settlement (None until settled)."""
    refunded: int | None

    @property
    def closed(self) -> bool:
        return self.state in ("usage:closed", "negotiation:rejected", "negotiation:expired")

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key.hex(), "role": self.role, "peer": self.peer.hex(),
            "rental_id": None if self.rental_id is None else "0x" + self.rental_id.hex(),
            "state": self.state, "ended_by": self.ended_by, "created": self.created,
            "updated": self.updated, "price_per_second": self.price_per_second,
            "deposit": self.deposit, "uptime": self.uptime, "signed": self.signed,
            "paid": self.paid, "refunded": self.refunded,
        }


def summarize(row: RentalRow) -> RentalSummary:
    snap = row.snapshot
    neg, use = snap["neg"], snap["use"]
    price = deposit = paid = refunded = None
    uptime = signed = 0
    if neg["agreement"] is not None:
        agreement = read_agreement(neg["agreement"]).agreement
        p = agreement.proposal.proposal
        price = p.price
        if use is not None:
            deposit = use["deposit"]
            if use["last"] is not None:
                uptime = read_heartbeat(use["last"])[0].heartbeat.uptime
            if use["receipt"] is not None:
                signed = decode_receipt(
                    use["receipt"], chain_id=p.chain_id, escrow=p.escrow,
                    signer=agreement.terms.receipt_signer, verify=False,
                ).receipt.amount
            if use["settled"] is not None:
                paid, refunded = use["settled"]
    ended = None if row.ended_by is None else CloseReason(row.ended_by).name
    return RentalSummary(row.key, row.role, row.peer, row.rental_id, row.state, ended,
                         row.created, row.updated, price, deposit, uptime, signed, paid, refunded)


def summaries(ledger: Ledger, role: str | None = None) -> list[RentalSummary]:
    return [summarize(r) for r in ledger.rentals(role=role)]


def locked_since(ledger: Ledger, since: int) -> int:
    """What the renter's rentals created at or after `since` locked on chain (deposits with
    top-ups): what a monthly budget counts."""
    return sum(s.deposit or 0 for s in summaries(ledger, "renter") if s.created >= since)
