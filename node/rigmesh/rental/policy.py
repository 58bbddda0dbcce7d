"""What each side agrees to: the provider's acceptance policy and the renter's wants.

`decide` is the provider's whole negotiation logic: a proposal, the offer it names and how many
rentals are running in, out comes accept, a counter (the changed fields), or a reject with its
reason code. Pure, so a provider's policy can be tested and simulated without a network.
"""

from __future__ import annotations

import dataclasses
import posixpath
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from rigmesh.market.offer import Offer
from rigmesh.rental.codes import RejectReason
from rigmesh.rental.messages import MAX_ROUND, Funding, Proposal
from rigmesh.rental.money import Budget
from rigmesh.rental.timers import DEFAULT_TIMERS, Timers
from rigmesh.rental.workload import Workload
from rigmesh.wire import fields


@dataclass(frozen=True)
class ProviderPolicy:
    min_price: int | None = None
    """Lowest price per second it accepts (None: the offer's price, no haggling)."""
    allowed_kinds: frozenset[str] = frozenset({"command"})
    allowed_programs: frozenset[str] | None = None
    """Basenames of argv[0] it runs (None: any program)."""
    max_seconds: int | None = None
    """Longest rental it accepts, beyond the offer's own bound."""
    max_rentals_per_renter: int = 1
    allow_network: bool = False
    max_input_bytes: int = 64 * 1024 * 1024
    min_challenge_window: int = 300
    max_challenge_window: int = 86_400
    min_grace: int = 5
    max_grace: int = 60
    deposit_intervals: int = 4
    """The deposit must cover at least this many heartbeat intervals (plus grace)."""
    sponsor_open: bool = True
    """Submit openFor (paying its gas) for renters without native gas."""
    timers: Timers = field(default_factory=lambda: DEFAULT_TIMERS)


class Accept(NamedTuple):
    pass


class Counter(NamedTuple):
    changes: dict[str, int]
    why: RejectReason  # what the counter fixes (the reject reason if no rounds were left)
    detail: str


class Refuse(NamedTuple):
    reason: RejectReason
    detail: str


Decision = Accept | Counter | Refuse


def decide(
    policy: ProviderPolicy,
    offer: Offer | None,
    p: Proposal,
    *,
    listing_rentals: int,
    renter_rentals: int,
    capacity: int | None = None,
) -> Decision:
    """The provider's answer to proposal `p` for `offer` (None: no such live offer).
    `capacity`: how many rentals the listing takes in all (default: the offer's own figure;
    a provider's newest offer states what is free, so its desk passes the total)."""
    if offer is None or offer.capacity == 0:
        return Refuse(RejectReason.UNKNOWN_OFFER, "no such live offer")
    capacity = offer.capacity if capacity is None else capacity
    if (p.chain_id, p.escrow, p.token, p.payee) != (
        offer.chain_id, offer.escrow, offer.token, offer.payee
    ):
        return Refuse(RejectReason.TERMS, "chain, escrow, token or payee differ from the offer")
    if listing_rentals >= capacity:
        return Refuse(RejectReason.NO_CAPACITY, f"{listing_rentals} of {capacity} taken")
    if renter_rentals >= policy.max_rentals_per_renter:
        return Refuse(
            RejectReason.TOO_MANY_RENTALS, f"at most {policy.max_rentals_per_renter} per renter"
        )
    w = p.workload
    refused = _workload_refusal(policy, offer, w)
    if refused is not None:
        return Refuse(RejectReason.WORKLOAD_NOT_ALLOWED, refused)
    if p.funding == Funding.PROVIDER and not policy.sponsor_open:
        return Refuse(RejectReason.TERMS, "this provider does not submit openFor")

    changes: dict[str, int] = {}
    why: list[tuple[RejectReason, str]] = []
    floor = offer.price_per_second if policy.min_price is None else policy.min_price
    if p.price < floor:
        changes["price"] = floor
        why.append((RejectReason.PRICE_TOO_LOW, f"price {p.price} < {floor}"))
    longest = offer.max_seconds if policy.max_seconds is None else min(
        offer.max_seconds, policy.max_seconds
    )
    if not offer.min_seconds <= p.seconds <= longest:
        changes["seconds"] = min(max(p.seconds, offer.min_seconds), longest)
        why.append((RejectReason.DURATION, f"{p.seconds} s outside {offer.min_seconds}..{longest}"))
    if p.heartbeat_seconds != offer.heartbeat_seconds:
        changes["heartbeat_seconds"] = offer.heartbeat_seconds
        why.append((RejectReason.TERMS, f"heartbeat every {offer.heartbeat_seconds} s"))
    if not policy.min_grace <= p.grace_seconds <= policy.max_grace:
        changes["grace_seconds"] = min(max(p.grace_seconds, policy.min_grace), policy.max_grace)
        why.append((RejectReason.TERMS, f"grace {policy.min_grace}..{policy.max_grace} s"))
    if not policy.min_challenge_window <= p.challenge_window <= policy.max_challenge_window:
        changes["challenge_window"] = min(
            max(p.challenge_window, policy.min_challenge_window), policy.max_challenge_window
        )
        why.append((RejectReason.TERMS, "challenge window out of bounds"))
    price = changes.get("price", p.price)
    interval = changes.get("heartbeat_seconds", p.heartbeat_seconds)
    grace = changes.get("grace_seconds", p.grace_seconds)
    seconds = changes.get("seconds", p.seconds)
    least = price * min(policy.deposit_intervals * interval + grace, seconds)
    if p.deposit < least:
        changes["deposit"] = least
        why.append((RejectReason.DEPOSIT_TOO_SMALL, f"deposit {p.deposit} < {least}"))
    if not changes:
        return Accept()
    reason, detail = why[0]
    if p.round + 1 > MAX_ROUND:
        return Refuse(reason, f"{detail} (no rounds left)")
    return Counter(changes, reason, "; ".join(d for _, d in why))


def _workload_refusal(policy: ProviderPolicy, offer: Offer, w: Workload) -> str | None:
    if w.kind not in policy.allowed_kinds:
        return f"workload kind {w.kind!r} not offered"
    if policy.allowed_programs is not None:
        program = posixpath.basename(w.argv[0])
        if program not in policy.allowed_programs:
            return f"program {program!r} not allowed"
    if w.network and not policy.allow_network:
        return "no network access for jobs"
    if w.gpus > offer.gpu_count:
        return f"{w.gpus} GPUs asked, the listing has {offer.gpu_count}"
    if w.input_bytes > policy.max_input_bytes:
        return f"{w.input_bytes} input bytes > {policy.max_input_bytes}"
    return None


@dataclass(frozen=True)
class RenterWants:
    """What a renter asks for, and how far it goes when countered."""

    workload: Workload
    seconds: int
    max_price: int
    """The most per second it pays (a counter above it is rejected, BUDGET)."""
    budget: Budget
    """Its cap on the deposit plus top-ups, and when to warn and top up."""
    deposit: int | None = None
    """The deposit it proposes (None: the whole rental at the price, within the budget cap)."""
    funding: int = Funding.RENTER
    timers: Timers = field(default_factory=lambda: DEFAULT_TIMERS)

    def to_record(self) -> dict[str, Any]:
        """Plain CBOR values (amounts as uint256 bytes), for the ledger."""
        amount = fields.amount_to_wire
        return {
            "workload": self.workload.to_wire(), "seconds": self.seconds,
            "max_price": amount(self.max_price),
            "deposit": None if self.deposit is None else amount(self.deposit),
            "funding": self.funding,
            "budget": [amount(self.budget.cap), self.budget.warn_seconds,
                       self.budget.top_up_below, self.budget.top_up_seconds],
            "timers": dataclasses.asdict(self.timers),
        }

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> RenterWants:
        def amount(b: bytes) -> int:
            return int.from_bytes(b, "big")

        cap, warn, below, chunk = rec["budget"]
        return cls(
            workload=Workload.from_wire(rec["workload"]), seconds=rec["seconds"],
            max_price=amount(rec["max_price"]),
            budget=Budget(amount(cap), warn, below, chunk),
            deposit=None if rec["deposit"] is None else amount(rec["deposit"]),
            funding=rec["funding"], timers=Timers(**rec["timers"]),
        )

    def deposit_for(self, price: int) -> int:
        want = price * self.seconds if self.deposit is None else self.deposit
        return min(want, self.budget.cap)

    def accepts(self, counter: Proposal) -> RejectReason | None:
        """None if the renter takes the counter's terms, else why not."""
        if counter.price > self.max_price:
            return RejectReason.BUDGET
        if counter.deposit > self.budget.cap:
            return RejectReason.BUDGET
        if counter.seconds > self.seconds:
            return RejectReason.DURATION
        return None
