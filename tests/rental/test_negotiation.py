"""The negotiation machine: every row of its table, every move it refuses (ours: a bug; the
peer's: a typed error), every deadline, and the rules each message must keep."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from rigmesh.rental.codes import CHAIN, CLOCK, PROVIDER, RENTER, Party, RejectReason
from rigmesh.rental.crypto import SIGNED
from rigmesh.rental.messages import Funding, Reject
from rigmesh.rental.negotiation import TABLE, TERMINAL, NegEvent, Negotiation, NegState
from rigmesh.rental.table import LocalProtocolError
from rigmesh.wire.errors import ErrorCode, WireError
from tests.rental import factory as f

S, E = NegState, NegEvent
P0 = f.proposal()
C1 = f.counter_to(P0, price=600)
P2 = f.answer_counter(C1)
ACCEPTED = f.accepted(P0)
AGREED = f.countersigned(ACCEPTED)


def machine(role: Party) -> Negotiation:
    return Negotiation(role, SIGNED, chain_id=f.CHAIN_ID, escrow=f.ESCROW)


def apply(n: Negotiation, party: Party, message: object, now: int = f.NOW) -> None:
    if party is n.role:
        n.send(message, now)  # type: ignore[arg-type]
    else:
        n.receive(message, now)  # type: ignore[arg-type]


def reach(state: NegState, role: Party, *, funding: int = Funding.RENTER) -> Negotiation:
    """A machine held by `role`, brought to `state` by the usual path."""
    n = machine(role)
    p0 = P0 if funding == Funding.RENTER else f.proposal(funding=funding)
    accepted = ACCEPTED if funding == Funding.RENTER else f.accepted(p0)
    path: dict[NegState, list[tuple[Party, object]]] = {
        S.IDLE: [],
        S.PROPOSED: [(RENTER, p0)],
        S.COUNTERED: [(RENTER, P0), (PROVIDER, C1)],
        S.ACCEPTED: [(RENTER, p0), (PROVIDER, accepted)],
        S.AGREED: [(RENTER, p0), (PROVIDER, accepted), (RENTER, f.countersigned(accepted))],
        S.REJECTED: [(RENTER, P0), (PROVIDER, Reject(P0.cid, RejectReason.NO_CAPACITY))],
    }
    if state is S.FUNDED:
        n = reach(S.AGREED, role)
        n.opened(n.rental_id, f.NOW + 5)
        return n
    if state is S.EXPIRED:
        n = reach(S.PROPOSED, role)
        assert n.expire(P0.proposal.expires)
        return n
    for party, message in path[state]:
        apply(n, party, message)
    assert n.state is state
    return n


#: For each row: the machine's state before, how to make the move, on a machine held by the
#: party that does NOT make it (so the move is received and checked as the peer's).
MOVES: dict[tuple[NegState, Party, NegEvent], Callable[[Negotiation], None]] = {
    (S.IDLE, RENTER, E.PROPOSE): lambda n: apply(n, RENTER, P0),
    (S.PROPOSED, PROVIDER, E.COUNTER): lambda n: apply(n, PROVIDER, C1),
    (S.PROPOSED, PROVIDER, E.ACCEPT): lambda n: apply(n, PROVIDER, ACCEPTED),
    (S.PROPOSED, PROVIDER, E.REJECT): lambda n: apply(
        n, PROVIDER, Reject(P0.cid, RejectReason.PRICE_TOO_LOW)),
    (S.PROPOSED, RENTER, E.REJECT): lambda n: apply(
        n, RENTER, Reject(P0.cid, RejectReason.DECLINED)),
    (S.PROPOSED, CLOCK, E.DEADLINE): lambda n: n.expire(P0.proposal.expires),
    (S.COUNTERED, RENTER, E.PROPOSE): lambda n: apply(n, RENTER, P2),
    (S.COUNTERED, RENTER, E.REJECT): lambda n: apply(
        n, RENTER, Reject(C1.cid, RejectReason.BUDGET)),
    (S.COUNTERED, PROVIDER, E.REJECT): lambda n: apply(
        n, PROVIDER, Reject(C1.cid, RejectReason.NO_CAPACITY)),
    (S.COUNTERED, CLOCK, E.DEADLINE): lambda n: n.expire(C1.proposal.expires),
    (S.ACCEPTED, RENTER, E.COUNTERSIGN): lambda n: apply(n, RENTER, AGREED),
    (S.ACCEPTED, RENTER, E.REJECT): lambda n: apply(
        n, RENTER, Reject(P0.cid, RejectReason.DECLINED)),
    (S.ACCEPTED, CLOCK, E.DEADLINE): lambda n: n.expire(P0.proposal.expires),
    (S.AGREED, RENTER, E.FUND): lambda n: apply(n, RENTER, f.fund(n.agreement)),  # type: ignore[arg-type]
    (S.AGREED, CHAIN, E.OPENED): lambda n: n.opened(n.rental_id, f.NOW + 9),
    (S.AGREED, CLOCK, E.DEADLINE): lambda n: n.expire(f.NOW + 300),
}
ROWS = [(s, p, e, nxt) for s, row in TABLE.items() for (p, e), nxt in row.items()]


def test_every_row_has_a_move() -> None:
    assert {(s, p, e) for s, p, e, _ in ROWS} == set(MOVES)


@pytest.mark.parametrize(("state", "party", "event", "nxt"), ROWS,
                         ids=[f"{s.value}-{p.value}-{e.value}" for s, p, e, _ in ROWS])
def test_row(state: NegState, party: Party, event: NegEvent, nxt: NegState) -> None:
    holder = PROVIDER if party is RENTER else RENTER
    funding = Funding.PROVIDER if event is E.FUND else Funding.RENTER
    n = reach(state, holder, funding=funding)
    MOVES[(state, party, event)](n)
    assert n.state is nxt


def _try(n: Negotiation, party: Party, event: NegEvent) -> None:
    """Attempt `event` by `party` with a message of the right kind."""
    message = {
        E.PROPOSE: P0, E.COUNTER: C1, E.ACCEPT: ACCEPTED, E.COUNTERSIGN: AGREED,
        E.REJECT: Reject(P0.cid, RejectReason.DECLINED), E.FUND: f.fund(AGREED),
    }.get(event)
    if event is E.OPENED:
        n.opened(AGREED.agreement.terms.rental_id, f.NOW)
    elif event is E.DEADLINE:
        n._move(CLOCK, E.DEADLINE)
    else:
        apply(n, party, message)


REFUSED = [
    (s, p, e) for s, p, e in itertools.product(
        [s for s in S if s is not S.FUNDED], [RENTER, PROVIDER], list(E)
    )
    if (p, e) not in TABLE.get(s, {}) and e not in (E.OPENED, E.DEADLINE)
]


@pytest.mark.parametrize(("state", "party", "event"), REFUSED,
                         ids=[f"{s.value}-{p.value}-{e.value}" for s, p, e in REFUSED])
def test_refused_moves(state: NegState, party: Party, event: NegEvent) -> None:
    # The peer's move the table does not allow: a typed error, counted against it.
    n = reach(state, party.other)
    with pytest.raises(WireError) as err:
        _try(n, party, event)
    assert err.value.code is ErrorCode.UnexpectedMessage
    assert n.state is state
    # Ours: a bug, raised loudly.
    n = reach(state, party)
    with pytest.raises(LocalProtocolError, match="UnexpectedMessage"):
        _try(n, party, event)
    assert n.state is state


def test_terminal_states_take_nothing() -> None:
    for state in TERMINAL:
        assert state not in TABLE
        n = reach(state, PROVIDER)
        assert n.deadline is None
        assert not n.expire(f.NOW + 10**6)


@pytest.mark.parametrize(("state", "deadline"), [
    (S.PROPOSED, f.NOW + 30), (S.COUNTERED, f.NOW + 30), (S.ACCEPTED, f.NOW + 30),
    (S.AGREED, f.NOW + 300),
])
def test_every_open_state_ends_at_its_deadline(state: NegState, deadline: int) -> None:
    n = reach(state, RENTER)
    assert n.deadline == deadline
    assert not n.expire(deadline - 1) and n.state is state
    assert n.expire(deadline) and n.state is S.EXPIRED


def _code(fn: Callable[[], None]) -> tuple[ErrorCode, str]:
    with pytest.raises(WireError) as err:
        fn()
    return err.value.code, err.value.detail


def test_proposal_rules() -> None:
    n = machine(PROVIDER)
    assert _code(lambda: n.receive(f.proposal(chain_id=1), f.NOW)) == (
        ErrorCode.WrongChain, f"proposal for chain 1 escrow 0x{f.ESCROW.hex()}")
    code, detail = _code(lambda: n.receive(f.proposal(escrow=bytes(20)), f.NOW))
    assert code is ErrorCode.WrongChain and "escrow 0x" + "00" * 20 in detail
    assert _code(lambda: n.receive(P0, P0.proposal.expires))[0] is ErrorCode.Expired
    far = f.proposal(expires=f.NOW + 601)
    assert _code(lambda: n.receive(far, f.NOW)) == (
        ErrorCode.InvalidField, "proposal asks for an answer more than 600 s ahead")
    assert n.receive(f.proposal(expires=f.NOW + 600), f.NOW) is None  # the edge is allowed
    n = machine(PROVIDER)
    assert _code(lambda: n.receive(f.proposal(key=f.OTHER_KEY), f.NOW))[0] is (
        ErrorCode.BadSignature)
    assert n.state is S.IDLE


def test_counter_rules() -> None:
    n = reach(S.PROPOSED, RENTER)
    moved = f.counter_to(P0, workload=f.WORKLOAD._replace(gpus=2))
    code, detail = _code(lambda: n.receive(moved, f.NOW))
    assert code is ErrorCode.InvalidField and "['workload']" in detail
    skipped = f.counter_to(P0, round=3)
    assert _code(lambda: n.receive(skipped, f.NOW)) == (
        ErrorCode.InvalidField, "counter does not follow round 0")
    elsewhere = f.counter_to(P0, prev=f.OFFER_CID)  # the right round, another predecessor
    assert _code(lambda: n.receive(elsewhere, f.NOW)) == (
        ErrorCode.InvalidField, "counter does not follow round 0")
    forged = f.counter_to(P0, key=f.OTHER_KEY)
    assert _code(lambda: n.receive(forged, f.NOW))[0] is ErrorCode.BadSignature
    assert n.state is S.PROPOSED


def test_rounds_are_bounded() -> None:
    n = machine(PROVIDER)
    p = P0
    for _ in range(2):
        n.receive(p, f.NOW)
        c = f.counter_to(p)
        n.send(c, f.NOW)
        p = f.answer_counter(c)
    n.receive(p, f.NOW)
    assert p.proposal.round == 4 and n.state is S.PROPOSED
    # round 5 cannot even be encoded as a counter the decoder takes; the machine refuses it too
    late = f.counter_to(p)
    assert late.proposal.round == 5
    with pytest.raises(LocalProtocolError, match="no counter after round 4"):
        n.send(late, f.NOW)


def test_agreement_rules() -> None:
    n = reach(S.PROPOSED, RENTER)
    other = f.accepted(f.proposal(price=554))
    assert _code(lambda: n.receive(other, f.NOW)) == (
        ErrorCode.InvalidField, "agreement on another proposal than the one on the table")
    stale = f.accepted(P0, fund_by=f.NOW)
    assert _code(lambda: n.receive(stale, f.NOW))[0] is ErrorCode.InvalidField
    too_long = f.accepted(P0, fund_by=f.NOW + 3601)
    assert _code(lambda: n.receive(too_long, f.NOW))[0] is ErrorCode.InvalidField
    forged = f.accepted(P0, key=f.OTHER_KEY)
    assert _code(lambda: n.receive(forged, f.NOW))[0] is ErrorCode.BadSignature
    n.receive(f.accepted(P0, fund_by=f.NOW + 3600), f.NOW)
    assert n.state is S.ACCEPTED

    n = reach(S.ACCEPTED, PROVIDER)
    changed = f.countersigned(f.accepted(P0, start=60))
    assert _code(lambda: n.receive(changed, f.NOW)) == (
        ErrorCode.InvalidField, "countersigned agreement differs from the accepted one")
    forged = f.countersigned(ACCEPTED, key=f.OTHER_KEY)
    assert _code(lambda: n.receive(forged, f.NOW))[0] is ErrorCode.BadSignature
    n.receive(AGREED, f.NOW)
    assert n.state is S.AGREED and n.rental_id == P0.terms().rental_id


def test_the_rental_id_is_the_escrow_terms_hash_over_the_accepted_proposal() -> None:
    terms = AGREED.agreement.terms
    assert terms.agreement_id == P0.cid[4:]  # the proposal CID's sha2-256 digest
    assert terms.renter == f.PAYER.address and terms.provider == f.PAYEE.address
    assert (terms.deposit, terms.price_per_second, terms.max_seconds) == (555 * 3600, 555, 3600)
    # The same terms proposed again in another negotiation are another rental.
    again = f.proposal(nonce=bytes(16))
    assert again.terms().rental_id != terms.rental_id


def test_fund_rules() -> None:
    n = reach(S.AGREED, PROVIDER)
    code, detail = _code(lambda: n.receive(f.fund(AGREED), f.NOW))
    assert (code, detail) == (ErrorCode.UnexpectedMessage,
                              "fund in an agreement the renter funds itself")
    n = reach(S.AGREED, PROVIDER, funding=Funding.PROVIDER)
    sa = n.agreement
    assert sa is not None
    assert _code(lambda: n.receive(f.fund(sa, deadline=f.NOW), f.NOW))[0] is ErrorCode.Expired
    assert _code(lambda: n.receive(f.fund(sa, signer=f.OTHER_ETH), f.NOW))[0] is (
        ErrorCode.BadSignature)
    wrong = f.fund(sa)._replace(rental_id=bytes(32))
    assert _code(lambda: n.receive(wrong, f.NOW)) == (ErrorCode.InvalidField,
                                                      "fund for another rental")
    n.receive(f.fund(sa), f.NOW)
    assert n.state is S.AGREED and n.fund is not None


def test_reject_must_name_this_negotiation() -> None:
    n = reach(S.PROPOSED, RENTER)
    assert _code(lambda: n.receive(Reject(C1.cid, RejectReason.NO_CAPACITY), f.NOW)) == (
        ErrorCode.InvalidField, "reject of a message not in this negotiation")


def test_opened_must_be_this_rental() -> None:
    n = reach(S.AGREED, RENTER)
    with pytest.raises(WireError, match="open of another rental"):
        n.opened(bytes(32), f.NOW)
    assert n.state is S.AGREED


def test_snapshot_round_trip() -> None:
    for state in S:
        n = reach(state, PROVIDER) if state is not S.IDLE else machine(PROVIDER)
        back = Negotiation.restore(n.snapshot(), PROVIDER, SIGNED, chain_id=f.CHAIN_ID,
                                   escrow=f.ESCROW)
        assert back.snapshot() == n.snapshot()
        assert back.state is n.state and back.deadline == n.deadline
