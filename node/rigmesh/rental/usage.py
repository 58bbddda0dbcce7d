"""The usage machine: from a funded rental to its settlement on chain.

One table for both roles (`TABLE`). The provider sends a signed heartbeat every interval (the
first when the job starts, the last, `final`, when it ends); the renter answers each with a
cumulative receipt for the seconds it verified, or with a close. Either side may close with a
reason code; the chain's close request, top-ups, claims and settlement are events too. Every
state but CLOSED has a deadline (`deadline`) whose passing moves the rental towards its end:

- STARTING: no first heartbeat within the agreed start time;
- RUNNING: the renter saw no heartbeat within interval + grace, or the provider got no receipt
  within grace of a heartbeat;
- STOPPING: the provider got no receipt for its last heartbeat within grace;
- SETTLING: the rental's deadline on chain passed: anyone finalizes it.

What the machine checks, identically for our own messages (`send`) and the peer's (`receive`):
the heartbeats of a rental form a hash chain with consecutive seqs, each sent only once the one
before it was answered and acknowledging that answer, with chain-anchored times that do not go
backwards and stay within `MAX_SKEW` of the receiver's clock, and uptime that neither goes
backwards nor grows faster than time; a receipt answers the newest heartbeat (its seq, and the
heartbeat's SHA-256 as evidence), never lowers the amount or uptime held, never claims more uptime
than the heartbeat or more than price x uptime, and is signed by the rental's receipt signer.
What the renter pays for and when the provider stops is policy (renter.py, provider.py).
"""

from __future__ import annotations

import enum
from typing import Any

from rigmesh.rental.codes import CHAIN, CLOCK, PROVIDER, RENTER, CloseReason, Party
from rigmesh.rental.crypto import Crypto
from rigmesh.rental.messages import (
    CLOSE,
    NO_HEARTBEAT,
    Close,
    JobState,
    SignedAgreement,
    SignedHeartbeat,
    read_any,
    read_heartbeat,
)
from rigmesh.rental.receipt import SignedReceipt, check_supersedes, decode_receipt
from rigmesh.rental.table import Machine, local
from rigmesh.wire import eip712
from rigmesh.wire.errors import (
    InvalidField,
    NotYetValid,
    Replayed,
    WireError,
)

#: How far a heartbeat's chain-anchored time may be from the receiver's clock, seconds.
MAX_SKEW = 30
#: The contract's largest timestamp (deadlines past it are stored as it).
MAX_TIMESTAMP = 2**40 - 1


class UseState(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    SETTLING = "settling"
    CLOSED = "closed"


class UseEvent(enum.Enum):
    HEARTBEAT = "heartbeat"
    FINAL = "final heartbeat"
    RECEIPT = "receipt"
    CLOSE = "close"
    CLOSE_REQUESTED = "close requested"
    TOPPED_UP = "topped up"
    CLAIMED = "claimed"
    SETTLED = "settled"
    DEADLINE = "deadline"


S, E = UseState, UseEvent
_CHAIN_WHILE_OPEN = {
    (CHAIN, E.TOPPED_UP): None,
    (CHAIN, E.CLAIMED): None,
    (CHAIN, E.SETTLED): S.CLOSED,
}


def _row(state: UseState, moves: dict[tuple[Party, UseEvent], UseState]) -> dict:
    """A state's moves plus the chain events every open rental takes (staying where it is)."""
    row = dict(moves)
    for key, nxt in _CHAIN_WHILE_OPEN.items():
        row[key] = state if nxt is None else nxt
    return row


TABLE: dict[UseState, dict[tuple[Party, UseEvent], UseState]] = {
    S.STARTING: _row(S.STARTING, {
        (PROVIDER, E.HEARTBEAT): S.RUNNING,
        (PROVIDER, E.FINAL): S.STOPPING,
        (RENTER, E.CLOSE): S.SETTLING,
        (PROVIDER, E.CLOSE): S.SETTLING,
        (CHAIN, E.CLOSE_REQUESTED): S.SETTLING,
        (CLOCK, E.DEADLINE): S.SETTLING,
    }),
    S.RUNNING: _row(S.RUNNING, {
        (PROVIDER, E.HEARTBEAT): S.RUNNING,
        (RENTER, E.RECEIPT): S.RUNNING,
        (PROVIDER, E.FINAL): S.STOPPING,
        (RENTER, E.CLOSE): S.SETTLING,
        (PROVIDER, E.CLOSE): S.SETTLING,
        (CHAIN, E.CLOSE_REQUESTED): S.SETTLING,
        (CLOCK, E.DEADLINE): S.SETTLING,
    }),
    S.STOPPING: _row(S.STOPPING, {
        (RENTER, E.RECEIPT): S.SETTLING,
        (RENTER, E.CLOSE): S.SETTLING,
        (PROVIDER, E.CLOSE): S.SETTLING,
        (CHAIN, E.CLOSE_REQUESTED): S.SETTLING,
        (CLOCK, E.DEADLINE): S.SETTLING,
    }),
    S.SETTLING: _row(S.SETTLING, {
        # A late receipt still counts (it is money the provider may settle with); closes and
        # close requests may cross in flight.
        (RENTER, E.RECEIPT): S.SETTLING,
        (RENTER, E.CLOSE): S.SETTLING,
        (PROVIDER, E.CLOSE): S.SETTLING,
        (CHAIN, E.CLOSE_REQUESTED): S.SETTLING,
        (CLOCK, E.DEADLINE): S.SETTLING,
    }),
}
TERMINAL = frozenset({S.CLOSED})


class Usage(Machine[UseState, UseEvent]):
    """One funded rental as one party holds it."""

    TABLE = TABLE
    TERMINAL = TERMINAL

    def __init__(
        self,
        role: Party,
        crypto: Crypto,
        agreement: SignedAgreement,
        *,
        chain_id: int,
        escrow: bytes,
        opened_at: int,
        funded_at: int,
    ) -> None:
        super().__init__(role, S.STARTING)
        self.crypto = crypto
        self.agreement = agreement
        a = agreement.agreement
        p = a.proposal.proposal
        self.terms: eip712.Terms = a.terms
        self.workload = p.workload
        self.rental_id = self.terms.rental_id
        self.chain_id = chain_id
        self.escrow = escrow
        self.provider = p.provider
        self.price = p.price
        self.interval = p.heartbeat_seconds
        self.grace = p.grace_seconds
        self.start_seconds = a.start_seconds
        self.opened_at = opened_at
        self.funded_at = funded_at
        self.deposit = self.terms.deposit
        self.paid = 0
        #: The rental's deadline on chain: receipts count until it, finalize works after it.
        self.chain_deadline = min(
            opened_at + self.terms.max_seconds + self.terms.challenge_window, MAX_TIMESTAMP
        )
        self.close_requested = False
        self.last: SignedHeartbeat | None = None
        #: Our clock when the newest heartbeat was sent (provider) or received (renter).
        self.last_at: int | None = None
        #: The best receipt: the newest the renter signed, or the provider holds.
        self.receipt: SignedReceipt | None = None
        #: Whether the newest heartbeat has its receipt.
        self.answered = True
        self.close: Close | None = None
        self.settled: tuple[int, int] | None = None
        #: The chain deadline passed while settling: finalizing is now up to anyone.
        self.finalize_due = False

    # -- persistence ------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "opened_at": self.opened_at,
            "funded_at": self.funded_at,
            "deposit": self.deposit,
            "paid": self.paid,
            "chain_deadline": self.chain_deadline,
            "close_requested": self.close_requested,
            "last": None if self.last is None else self.last.encoded,
            "last_at": self.last_at,
            "receipt": None if self.receipt is None else self.receipt.encode(),
            "answered": self.answered,
            "close": None if self.close is None else self.close.encode(),
            "settled": None if self.settled is None else list(self.settled),
            "finalize_due": self.finalize_due,
        }

    @classmethod
    def restore(
        cls, snap: dict[str, Any], role: Party, crypto: Crypto, agreement: SignedAgreement, *,
        chain_id: int, escrow: bytes,
    ) -> Usage:
        u = cls(role, crypto, agreement, chain_id=chain_id, escrow=escrow,
                opened_at=snap["opened_at"], funded_at=snap["funded_at"])
        u.state = UseState(snap["state"])
        u.deposit, u.paid = snap["deposit"], snap["paid"]
        u.chain_deadline, u.close_requested = snap["chain_deadline"], snap["close_requested"]
        if snap["last"] is not None:
            u.last = read_heartbeat(snap["last"])[0]
        u.last_at, u.answered = snap["last_at"], snap["answered"]
        if snap["receipt"] is not None:
            u.receipt = decode_receipt(
                snap["receipt"], chain_id=chain_id, escrow=escrow,
                signer=u.terms.receipt_signer, verify=False,
            )
        if snap["close"] is not None:
            u.close = read_any(snap["close"], frozenset({CLOSE}))  # type: ignore[assignment]
        u.settled = None if snap["settled"] is None else tuple(snap["settled"])  # type: ignore[assignment]
        u.finalize_due = snap["finalize_due"]
        return u

    # -- derived ----------------------------------------------------------------------------

    @property
    def amount(self) -> int:
        """The cumulative amount of the best receipt (0 without one)."""
        return 0 if self.receipt is None else self.receipt.receipt.amount

    def owed(self, uptime: int) -> int:
        """What a receipt for `uptime` seconds says: price x uptime, at most the deposit."""
        return min(self.price * uptime, self.deposit)

    @property
    def deadline(self) -> int | None:
        """The first second at which the current state is over by this party's timers (None:
        it does not end by itself)."""
        s = self.state
        if s is S.STARTING:
            return self.funded_at + self.start_seconds
        if s is S.RUNNING:
            assert self.last_at is not None
            if self.role is RENTER:
                return self.last_at + self.interval + self.grace
            return None if self.answered else self.last_at + self.grace
        if s is S.STOPPING:
            assert self.last_at is not None
            return self.last_at + self.grace
        if s is S.SETTLING:
            # The escrow finalizes only strictly after its deadline.
            return None if self.finalize_due else self.chain_deadline + 1
        return None

    # -- moves ------------------------------------------------------------------------------

    def send(self, message: SignedHeartbeat | SignedReceipt | Close, now: int) -> bool:
        """Our own message, before it goes out. Returns False for a resend of the last one."""
        try:
            return self._apply(self.role, message, now, None)
        except WireError as exc:
            raise local(exc) from None

    def receive(
        self, message: SignedHeartbeat | SignedReceipt | Close, now: int,
        signing_input: bytes | None = None,
    ) -> bool:
        """The peer's message (a heartbeat with its signing input). Returns False for a
        duplicate of the last one (answer it as before); raises the `WireError` refusing it."""
        return self._apply(self.peer, message, now, signing_input)

    def _apply(self, party: Party, message: object, now: int, signed: bytes | None) -> bool:
        # A resend of the last message of its kind, by the party that sent it, is answered as
        # before, whatever the state now (the answer may have been lost).
        if isinstance(message, SignedHeartbeat):
            if party is PROVIDER and self.last is not None and message.encoded == self.last.encoded:
                return False
            event = E.FINAL if message.heartbeat.final else E.HEARTBEAT
            nxt = self._move(party, event)
            self._check_heartbeat(party, message, now, signed)
            self.last, self.last_at, self.answered = message, now, False
        elif isinstance(message, SignedReceipt):
            if party is RENTER and message == self.receipt:
                return False
            nxt = self._move(party, E.RECEIPT)
            self._check_receipt(message)
            if self.last is not None and message.receipt.seq == self.last.heartbeat.seq:
                self.answered = True
            self.receipt = message
        elif isinstance(message, Close):
            if message == self.close and party is message.reason.closed_by:
                return False
            nxt = self._move(party, E.CLOSE)
            if message.rental_id != self.rental_id:
                raise InvalidField("close of another rental")
            if message.reason.closed_by is not party:
                raise InvalidField(f"{party.value} closing with reason {message.reason.name}")
            self.close = self.close or message
        else:
            raise TypeError(f"not a usage message: {type(message).__name__}")
        self.state = nxt
        return True

    def _check_heartbeat(
        self, party: Party, shb: SignedHeartbeat, now: int, signed: bytes | None
    ) -> None:
        hb, last = shb.heartbeat, self.last
        if hb.rental_id != self.rental_id:
            raise InvalidField("heartbeat of another rental")
        if last is None:
            prev_seq, prev_digest, prev_time, prev_uptime = 0, NO_HEARTBEAT, self.opened_at, 0
        else:
            h = last.heartbeat
            prev_seq, prev_digest, prev_time, prev_uptime = h.seq, last.digest, h.time, h.uptime
        if hb.seq <= prev_seq:
            raise Replayed(f"heartbeat seq {hb.seq} <= {prev_seq}")
        if not self.answered:
            # One heartbeat at a time: what bounds the provider's loss (money.py).
            raise InvalidField(f"heartbeat {hb.seq} before heartbeat {prev_seq} was answered")
        if hb.seq != prev_seq + 1 or hb.prev != prev_digest:
            raise InvalidField(f"heartbeat {hb.seq} does not extend the chain at {prev_seq}")
        if hb.time < prev_time:
            raise InvalidField("heartbeat time goes backwards")
        if hb.time > now + MAX_SKEW:
            raise NotYetValid(f"heartbeat time {hb.time} ahead of {now}")
        if hb.time < now - MAX_SKEW:
            raise InvalidField(f"heartbeat time {hb.time} behind {now}")
        if hb.uptime < prev_uptime:
            raise InvalidField("uptime goes backwards")
        if hb.uptime - prev_uptime > hb.time - prev_time:
            raise InvalidField("uptime grows faster than time")
        held = 0 if self.receipt is None else self.receipt.receipt.seq
        if hb.receipt_seq != held:
            raise InvalidField(f"acknowledges receipt {hb.receipt_seq}, the newest is {held}")
        if party is not self.role and signed is not None:
            self.crypto.verify_peer(self.provider, signed, shb.sig)

    def _check_receipt(self, sr: SignedReceipt) -> None:
        r, last = sr.receipt, self.last
        if (sr.chain_id, sr.escrow, r.rental_id) != (self.chain_id, self.escrow, self.rental_id):
            raise InvalidField("receipt of another rental")
        if last is None or r.seq != last.heartbeat.seq or r.evidence != last.digest:
            raise InvalidField("a receipt answers the newest heartbeat (its seq and digest)")
        held = None if self.receipt is None else self.receipt.receipt
        check_supersedes(r, held)
        if r.uptime_seconds > last.heartbeat.uptime:
            raise InvalidField("receipt for more uptime than the heartbeat claims")
        if r.amount > self.price * r.uptime_seconds:
            raise InvalidField("receipt above price x uptime (the escrow would refuse it)")

    # -- the chain and the clock ------------------------------------------------------------

    def topped_up(self, deposit: int) -> None:
        self.state = self._move(CHAIN, E.TOPPED_UP)
        self.deposit = deposit

    def claimed(self, paid: int) -> None:
        self.state = self._move(CHAIN, E.CLAIMED)
        self.paid = max(self.paid, paid)

    def close_requested_on_chain(self, deadline: int) -> None:
        self.state = self._move(CHAIN, E.CLOSE_REQUESTED)
        self.close_requested = True
        self.chain_deadline = min(self.chain_deadline, deadline)

    def settled_on_chain(self, to_provider: int, to_renter: int) -> None:
        self.state = self._move(CHAIN, E.SETTLED)
        self.paid = to_provider
        self.settled = (to_provider, to_renter)

    def expire(self, now: int) -> bool:
        """The clock: True if the current state's deadline has come (and the move is made)."""
        deadline = self.deadline
        if deadline is None or now < deadline:
            return False
        was = self.state
        self.state = self._move(CLOCK, E.DEADLINE)
        if was is S.SETTLING:
            self.finalize_due = True
        return True

    def close_reason(self) -> CloseReason | None:
        return None if self.close is None else self.close.reason

    def ended_by(self) -> CloseReason | None:
        """Why the rental ended, as both sides can tell: the first close either sent, else what
        the last heartbeat says of the job, else the chain (None: it has not ended)."""
        if self.close is not None:
            return self.close.reason
        hb = None if self.last is None else self.last.heartbeat
        if hb is not None and hb.final:
            if hb.state == JobState.EXITED:
                return CloseReason.JOB_EXITED
            if hb.state == JobState.LOST:
                return CloseReason.PROVIDER_RESTARTED
            if hb.state == JobState.FAILED:
                # Started (a running heartbeat came first, seq 1) even if it failed within
                # its first second: the job broke a limit, it did not fail to start.
                started = hb.uptime > 0 or hb.seq > 1
                return CloseReason.JOB_LIMIT if started else CloseReason.START_FAILED
            if hb.uptime >= self.terms.max_seconds:
                return CloseReason.COMPLETED
            if self.price * hb.uptime >= self.deposit:
                return CloseReason.DEPOSIT_EXHAUSTED
            return CloseReason.PROVIDER_STOPPED
        if self.settled is not None:
            return CloseReason.DEADLINE_PASSED if self.finalize_due else CloseReason.CHAIN_CLOSED
        return None
