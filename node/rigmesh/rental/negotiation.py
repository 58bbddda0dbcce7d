"""The negotiation machine: from a renter's proposal to a funded rental (or a defined end).

One table for both roles (`TABLE`). The renter proposes; the provider counters (bounded rounds),
accepts by signing the agreement, or rejects; the renter countersigns; the rental is funded when
the open with exactly the agreed terms is seen on chain at the node's confirmation depth. In the
openFor branch the renter sends a ``fund`` message (its OpenRequest signature) and the provider
submits the open. Every state before FUNDED has a deadline whose passing ends it (EXPIRED):
a proposal or counter nobody answers, an acceptance never countersigned, an agreement never
funded (a provider that never sees the funding forgets the agreement).

`Negotiation` checks every move with the same rules whichever side makes it (see table.py):
`send` for our own messages (a broken rule is `LocalProtocolError`), `receive` for the peer's and
the chain's (a `WireError` the shell answers with an error frame). It makes no decisions: what to
propose, accept or counter is policy (policy.py), driven by the role engines (renter.py,
provider.py).
"""

from __future__ import annotations

import enum
from typing import Any

from rigmesh.rental.codes import CHAIN, CLOCK, PROVIDER, RENTER, Party
from rigmesh.rental.crypto import Crypto
from rigmesh.rental.messages import (
    COUNTER,
    FUND,
    MAX_ROUND,
    PROPOSAL,
    Fund,
    Funding,
    Proposal,
    Reject,
    SignedAgreement,
    SignedProposal,
    read_agreement,
    read_any,
    read_proposal,
)
from rigmesh.rental.table import LocalProtocolError, Machine, local
from rigmesh.wire import cbor, eip712
from rigmesh.wire.errors import (
    Expired,
    InvalidField,
    UnexpectedMessage,
    WireError,
    WrongChain,
)
from rigmesh.wire.message import SIGNATURE_DOMAIN, signing_input

#: A proposal or counter may ask for an answer at most this far ahead.
MAX_PROPOSAL_TTL = 600
#: An agreement may give the renter at most this long to fund it.
MAX_FUND_SECONDS = 3600
#: What a counter may change; everything else is the renter's and stays as proposed.
NEGOTIABLE = frozenset(
    {"price", "deposit", "seconds", "challenge_window", "heartbeat_seconds", "grace_seconds"}
)
_FIXED = tuple(
    f for f in Proposal._fields if f not in NEGOTIABLE | {"kind", "round", "prev", "expires"}
)


class NegState(enum.Enum):
    IDLE = "idle"
    PROPOSED = "proposed"
    COUNTERED = "countered"
    ACCEPTED = "accepted"
    AGREED = "agreed"
    FUNDED = "funded"
    REJECTED = "rejected"
    EXPIRED = "expired"


class NegEvent(enum.Enum):
    PROPOSE = "proposal"
    COUNTER = "counter"
    ACCEPT = "accept"
    COUNTERSIGN = "countersign"
    REJECT = "reject"
    FUND = "fund"
    OPENED = "opened"
    DEADLINE = "deadline"


S, E = NegState, NegEvent
TABLE: dict[NegState, dict[tuple[Party, NegEvent], NegState]] = {
    S.IDLE: {(RENTER, E.PROPOSE): S.PROPOSED},
    S.PROPOSED: {
        (PROVIDER, E.COUNTER): S.COUNTERED,
        (PROVIDER, E.ACCEPT): S.ACCEPTED,
        (PROVIDER, E.REJECT): S.REJECTED,
        (RENTER, E.REJECT): S.REJECTED,
        (CLOCK, E.DEADLINE): S.EXPIRED,
    },
    S.COUNTERED: {
        (RENTER, E.PROPOSE): S.PROPOSED,
        (RENTER, E.REJECT): S.REJECTED,
        (PROVIDER, E.REJECT): S.REJECTED,
        (CLOCK, E.DEADLINE): S.EXPIRED,
    },
    S.ACCEPTED: {
        (RENTER, E.COUNTERSIGN): S.AGREED,
        (RENTER, E.REJECT): S.REJECTED,
        (CLOCK, E.DEADLINE): S.EXPIRED,
    },
    S.AGREED: {
        (RENTER, E.FUND): S.AGREED,
        (CHAIN, E.OPENED): S.FUNDED,
        (CLOCK, E.DEADLINE): S.EXPIRED,
    },
}
TERMINAL = frozenset({S.FUNDED, S.REJECTED, S.EXPIRED})


def agreement_signing_input(sa: SignedAgreement) -> bytes:
    """What both parties sign: the agreement without its two signatures."""
    return SIGNATURE_DOMAIN + cbor.encode(sa.agreement.unsigned_wire())


def proposal_signing_input(sp: SignedProposal) -> bytes:
    return signing_input(sp.proposal.unsigned_wire())


class Negotiation(Machine[NegState, NegEvent]):
    """One negotiation as one party holds it. Built fresh for each proposal nonce."""

    TABLE = TABLE
    TERMINAL = TERMINAL

    def __init__(self, role: Party, crypto: Crypto, *, chain_id: int, escrow: bytes) -> None:
        super().__init__(role, S.IDLE)
        self.crypto = crypto
        self.chain_id = chain_id
        self.escrow = escrow
        self.proposal: SignedProposal | None = None  # the renter's latest
        self.counter: SignedProposal | None = None  # the provider's latest
        self.agreement: SignedAgreement | None = None
        self.fund: Fund | None = None
        self.opened_at: int | None = None
        self._terms: tuple[SignedAgreement, eip712.Terms, bytes] | None = None  # `_agreed`

    # -- what the machine knows -----------------------------------------------------------

    @property
    def terms(self) -> eip712.Terms:
        return self._agreed()[1]

    @property
    def rental_id(self) -> bytes:
        return self._agreed()[2]

    def _agreed(self) -> tuple[SignedAgreement, eip712.Terms, bytes]:
        """The agreement's terms and rental id, derived once per agreement: they cost a SHA-256
        and an EIP-712 hash, and the driver reads the rental id at every step it persists."""
        sa = self.agreement
        if sa is None:
            raise LocalProtocolError("no agreement yet")
        memo = self._terms
        if memo is None or memo[0] is not sa:
            terms = sa.agreement.terms
            memo = self._terms = (sa, terms, terms.rental_id)
        return memo

    @property
    def deadline(self) -> int | None:
        """The first second at which the current state is over (None: it does not end by
        itself). A proposal is valid while now < expires; an agreement is funded by fund_by."""
        if self.state is S.PROPOSED or self.state is S.ACCEPTED:
            assert self.proposal is not None
            return self.proposal.proposal.expires
        if self.state is S.COUNTERED:
            assert self.counter is not None
            return self.counter.proposal.expires
        if self.state is S.AGREED:
            assert self.agreement is not None
            return self.agreement.agreement.fund_by
        return None

    # -- moves ------------------------------------------------------------------------------

    def send(self, message: SignedProposal | SignedAgreement | Reject | Fund, now: int) -> None:
        """Our own message, before it goes out. Breaking a rule is our bug."""
        try:
            self._apply(self.role, message, now)
        except WireError as exc:
            raise local(exc) from None

    def receive(self, message: SignedProposal | SignedAgreement | Reject | Fund, now: int) -> None:
        """The peer's message: raises the `WireError` that refuses it (state unchanged)."""
        self._apply(self.peer, message, now)

    def opened(self, rental_id: bytes, opened_at: int) -> None:
        """The chain (at our confirmation depth) shows the open of exactly these terms."""
        self._move(CHAIN, E.OPENED)
        if rental_id != self.rental_id:
            raise InvalidField("open of another rental")
        self.state = S.FUNDED
        self.opened_at = opened_at

    def expire(self, now: int) -> bool:
        """The clock: end the current state if its deadline has come (True if it did)."""
        deadline = self.deadline
        if deadline is None or now < deadline:
            return False
        self.state = self._move(CLOCK, E.DEADLINE)
        return True

    # -- persistence ------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Everything this negotiation knows, as plain CBOR values (the messages as signed)."""
        return {
            "state": self.state.value,
            "proposal": None if self.proposal is None else self.proposal.encoded,
            "counter": None if self.counter is None else self.counter.encoded,
            "agreement": None if self.agreement is None else self.agreement.encoded,
            "fund": None if self.fund is None else self.fund.encode(),
            "opened_at": self.opened_at,
        }

    @classmethod
    def restore(
        cls, snap: dict[str, Any], role: Party, crypto: Crypto, *, chain_id: int, escrow: bytes
    ) -> Negotiation:
        """From our own ledger: the messages were checked when they first arrived, so they are
        read for their form only."""
        n = cls(role, crypto, chain_id=chain_id, escrow=escrow)
        n.state = NegState(snap["state"])
        if snap["proposal"] is not None:
            n.proposal = read_proposal(snap["proposal"])
        if snap["counter"] is not None:
            n.counter = read_proposal(snap["counter"])
        if snap["agreement"] is not None:
            n.agreement = read_agreement(snap["agreement"])
        if snap["fund"] is not None:
            n.fund = read_any(snap["fund"], frozenset({FUND}))  # type: ignore[assignment]
        n.opened_at = snap["opened_at"]
        return n

    # -- rules ------------------------------------------------------------------------------

    def _apply(self, party: Party, message: object, now: int) -> None:
        if isinstance(message, SignedProposal):
            event = E.PROPOSE if message.proposal.kind == PROPOSAL else E.COUNTER
            nxt = self._move(party, event)
            self._check_proposal(party, message, now)
            if event is E.PROPOSE:
                self.proposal = message
            else:
                self.counter = message
        elif isinstance(message, SignedAgreement):
            event = E.ACCEPT if message.renter_sig is None else E.COUNTERSIGN
            nxt = self._move(party, event)
            self._check_agreement(party, message, now)
            self.agreement = message
        elif isinstance(message, Reject):
            nxt = self._move(party, E.REJECT)
            if message.ref not in self._refs():
                raise InvalidField("reject of a message not in this negotiation")
        elif isinstance(message, Fund):
            nxt = self._move(party, E.FUND)
            self._check_fund(party, message, now)
            self.fund = message
        else:
            raise TypeError(f"not a negotiation message: {type(message).__name__}")
        self.state = nxt

    def _refs(self) -> set[bytes]:
        return {m.cid for m in (self.proposal, self.counter) if m is not None}

    def _check_proposal(self, party: Party, sp: SignedProposal, now: int) -> None:
        p = sp.proposal
        if p.chain_id != self.chain_id or p.escrow != self.escrow:
            raise WrongChain(f"proposal for chain {p.chain_id} escrow 0x{p.escrow.hex()}")
        if p.expires <= now:
            raise Expired(f"{p.kind} expired at {p.expires}")
        if p.expires > now + MAX_PROPOSAL_TTL:
            raise InvalidField(f"{p.kind} asks for an answer more than {MAX_PROPOSAL_TTL} s ahead")
        before = self.counter if p.kind == PROPOSAL else self.proposal
        if before is None:
            if p.round != 0:
                raise InvalidField("a negotiation starts in round 0")
        else:
            q = before.proposal
            if p.round != q.round + 1 or p.prev != before.cid:
                raise InvalidField(f"{p.kind} does not follow round {q.round}")
            if p.kind == COUNTER and p.round > MAX_ROUND:
                raise InvalidField(f"no counter after round {MAX_ROUND}")
            changed = [f for f in _FIXED if getattr(p, f) != getattr(q, f)]
            if changed:
                raise InvalidField(f"{p.kind} changes fields it may not: {changed}")
        if party is not self.role:
            self.crypto.verify_peer(p.signer, proposal_signing_input(sp), sp.sig)

    def _check_agreement(self, party: Party, sa: SignedAgreement, now: int) -> None:
        a = sa.agreement
        assert self.proposal is not None  # the table only allows agreements after a proposal
        if a.proposal.encoded != self.proposal.encoded:
            raise InvalidField("agreement on another proposal than the one on the table")
        if sa.renter_sig is None:
            if not now < a.fund_by <= now + MAX_FUND_SECONDS:
                raise InvalidField(f"fund_by must be within {MAX_FUND_SECONDS} s from now")
            if party is not self.role:
                self.crypto.verify_peer(
                    a.proposal.proposal.provider, agreement_signing_input(sa), sa.provider_sig
                )
            return
        accepted = self.agreement
        assert accepted is not None
        if a != accepted.agreement or sa.provider_sig != accepted.provider_sig:
            raise InvalidField("countersigned agreement differs from the accepted one")
        if party is not self.role:
            self.crypto.verify_peer(
                a.proposal.proposal.renter, agreement_signing_input(sa), sa.renter_sig
            )

    def _check_fund(self, party: Party, fund: Fund, now: int) -> None:
        assert self.agreement is not None
        if self.agreement.agreement.proposal.proposal.funding != Funding.PROVIDER:
            raise UnexpectedMessage("fund in an agreement the renter funds itself")
        if fund.rental_id != self.rental_id:
            raise InvalidField("fund for another rental")
        if fund.deadline <= now:
            raise Expired(f"open request expired at {fund.deadline}")
        if party is not self.role:
            digest = open_request_digest(self.terms, fund, self.chain_id, self.escrow)
            self.crypto.verify_digest(digest, fund.sig, self.terms.renter)


def open_request_digest(terms: eip712.Terms, fund: Fund, chain_id: int, escrow: bytes) -> bytes:
    """The EIP-712 digest of the OpenRequest a `fund` message carries the signature of."""
    return eip712.typed_data_digest(
        eip712.escrow_domain_separator(chain_id, escrow),
        eip712.OpenRequest(terms, fund.nonce, fund.deadline).struct_hash(),
    )
