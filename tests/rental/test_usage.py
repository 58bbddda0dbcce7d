"""The usage machine: every row of its table, every move it refuses, each role's deadlines, and
each bad heartbeat, receipt and close (wrong rental, wrong signer, replayed, a broken hash chain,
uptime going backwards, an amount below the last receipt, ...)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import replace

import pytest

from rigmesh.rental.codes import CHAIN, CLOCK, PROVIDER, RENTER, CloseReason, Party
from rigmesh.rental.crypto import SIGNED
from rigmesh.rental.messages import Close, JobState, read_heartbeat
from rigmesh.rental.negotiation import Negotiation, NegState
from rigmesh.rental.table import LocalProtocolError
from rigmesh.rental.usage import TABLE, Usage, UseEvent, UseState
from rigmesh.wire.errors import ErrorCode, WireError
from tests.rental import factory as f

S, E = UseState, UseEvent
AGREED = f.countersigned(f.accepted(f.proposal()))
RID = AGREED.agreement.terms.rental_id
OPENED = f.NOW + 10
FUNDED = OPENED + 2
PRICE = 555
HB1 = f.heartbeat(RID, 1, time=FUNDED + 5, uptime=0)
R1 = f.receipt(RID, HB1, 0)
HB2 = f.heartbeat(RID, 2, prev=HB1, time=FUNDED + 35, uptime=30, receipt_seq=1)
R2 = f.receipt(RID, HB2, 30 * PRICE)
FINAL2 = f.heartbeat(RID, 2, prev=HB1, time=FUNDED + 20, uptime=15, receipt_seq=1,
                     state=JobState.EXITED, exit=0)
RF = f.receipt(RID, FINAL2, 15 * PRICE)


def usage(role: Party) -> Usage:
    return Usage(role, SIGNED, AGREED, chain_id=f.CHAIN_ID, escrow=f.ESCROW, opened_at=OPENED,
                 funded_at=FUNDED)


def signing_input(hb: object) -> bytes:
    return read_heartbeat(hb.encoded)[1]  # type: ignore[attr-defined]


def apply(u: Usage, party: Party, message: object, now: int) -> bool:
    if party is u.role:
        return u.send(message, now)  # type: ignore[arg-type]
    return u.receive(message, now, signing_input(message) if hasattr(message, "heartbeat")
                     else None)  # type: ignore[arg-type]


def reach(state: UseState, role: Party) -> Usage:
    u = usage(role)
    if state is S.STARTING:
        return u
    apply(u, PROVIDER, HB1, HB1.heartbeat.time)
    if state is S.RUNNING:
        return u
    apply(u, RENTER, R1, HB1.heartbeat.time + 1)
    if state is S.STOPPING:
        apply(u, PROVIDER, FINAL2, FINAL2.heartbeat.time)
    elif state in (S.SETTLING, S.CLOSED):
        apply(u, RENTER, Close(RID, CloseReason.RENTER_STOPPED), FUNDED + 10)
        if state is S.CLOSED:
            u.settled_on_chain(0, AGREED.agreement.terms.deposit)
    assert u.state is state
    return u


MOVES: dict[tuple[UseState, Party, UseEvent], Callable[[Usage], object]] = {}
for _state in (S.STARTING, S.RUNNING, S.STOPPING, S.SETTLING):
    MOVES.update({
        (_state, RENTER, E.CLOSE): lambda u: apply(
            u, RENTER, Close(RID, CloseReason.HEARTBEAT_MISSED), FUNDED + 60),
        (_state, PROVIDER, E.CLOSE): lambda u: apply(
            u, PROVIDER, Close(RID, CloseReason.RECEIPT_MISSED), FUNDED + 60),
        (_state, CHAIN, E.CLOSE_REQUESTED): lambda u: u.close_requested_on_chain(FUNDED + 700),
        (_state, CHAIN, E.TOPPED_UP): lambda u: u.topped_up(u.deposit + 1),
        (_state, CHAIN, E.CLAIMED): lambda u: u.claimed(1),
        (_state, CHAIN, E.SETTLED): lambda u: u.settled_on_chain(2, u.deposit - 2),
        (_state, CLOCK, E.DEADLINE): lambda u: u.expire(10**12),
    })
MOVES.update({
    (S.STARTING, PROVIDER, E.HEARTBEAT): lambda u: apply(u, PROVIDER, HB1, HB1.heartbeat.time),
    (S.STARTING, PROVIDER, E.FINAL): lambda u: apply(
        u, PROVIDER, f.heartbeat(RID, 1, time=FUNDED + 3, uptime=0, state=JobState.FAILED),
        FUNDED + 3),
    (S.RUNNING, PROVIDER, E.HEARTBEAT): lambda u: (
        apply(u, RENTER, R1, FUNDED + 6), apply(u, PROVIDER, HB2, HB2.heartbeat.time)),
    (S.RUNNING, RENTER, E.RECEIPT): lambda u: apply(u, RENTER, R1, FUNDED + 6),
    (S.RUNNING, PROVIDER, E.FINAL): lambda u: (
        apply(u, RENTER, R1, FUNDED + 6), apply(u, PROVIDER, FINAL2, FINAL2.heartbeat.time)),
    (S.STOPPING, RENTER, E.RECEIPT): lambda u: apply(u, RENTER, RF, FINAL2.heartbeat.time + 1),
    (S.SETTLING, RENTER, E.RECEIPT): lambda u: None,  # set up in test_row (needs its own path)
})
ROWS = [(s, p, e, nxt) for s, row in TABLE.items() for (p, e), nxt in row.items()]


def test_every_row_has_a_move() -> None:
    assert {(s, p, e) for s, p, e, _ in ROWS} == set(MOVES)


@pytest.mark.parametrize(("state", "party", "event", "nxt"), ROWS,
                         ids=[f"{s.value}-{p.value}-{e.value}" for s, p, e, _ in ROWS])
def test_row(state: UseState, party: Party, event: UseEvent, nxt: UseState) -> None:
    holder = PROVIDER if party is RENTER else RENTER
    if (state, event) == (S.SETTLING, E.RECEIPT):
        # A receipt for the heartbeat still on the table when the provider had closed.
        u = reach(S.RUNNING, holder)
        apply(u, PROVIDER, Close(RID, CloseReason.PROVIDER_STOPPED), FUNDED + 8)
        assert u.state is S.SETTLING
        apply(u, RENTER, R1, FUNDED + 9)
        assert u.receipt == R1
    else:
        u = reach(state, holder)
        MOVES[(state, party, event)](u)
    assert u.state is nxt


def _try(u: Usage, party: Party, event: UseEvent) -> None:
    """A message of the event's kind that is new to `u` (a resend would be a duplicate)."""
    if event in (E.HEARTBEAT, E.FINAL):
        seq = 1 if u.last is None else u.last.heartbeat.seq + 1
        state = JobState.RUNNING if event is E.HEARTBEAT else JobState.STOPPED
        hb = f.heartbeat(RID, seq, prev=u.last, time=FUNDED + 40, uptime=0, state=state)
        apply(u, party, hb, FUNDED + 40)
    elif event is E.RECEIPT:
        fresh = replace(R1, receipt=replace(R1.receipt, evidence=b"\x01" * 32))
        apply(u, party, fresh, FUNDED + 6)
    else:
        apply(u, party, Close(RID, CloseReason.BUDGET_EXHAUSTED if party is RENTER
                                  else CloseReason.JOB_LIMIT), FUNDED + 6)


REFUSED = [
    (s, p, e) for s, p, e in itertools.product(
        list(S), [RENTER, PROVIDER], [E.HEARTBEAT, E.FINAL, E.RECEIPT, E.CLOSE]
    )
    if (p, e) not in TABLE.get(s, {})
]


@pytest.mark.parametrize(("state", "party", "event"), REFUSED,
                         ids=[f"{s.value}-{p.value}-{e.value}" for s, p, e in REFUSED])
def test_refused_moves(state: UseState, party: Party, event: UseEvent) -> None:
    u = reach(state, party.other)
    with pytest.raises(WireError) as err:
        _try(u, party, event)
    assert err.value.code is ErrorCode.UnexpectedMessage
    assert u.state is state
    u = reach(state, party)
    with pytest.raises(LocalProtocolError, match="UnexpectedMessage"):
        _try(u, party, event)


def test_chain_events_after_close_are_refused() -> None:
    u = reach(S.CLOSED, RENTER)
    for event in (lambda: u.topped_up(1), lambda: u.claimed(1),
                  lambda: u.close_requested_on_chain(1), lambda: u.settled_on_chain(1, 1)):
        with pytest.raises(WireError) as err:
            event()
        assert err.value.code is ErrorCode.UnexpectedMessage


# --- deadlines ---------------------------------------------------------------------------------

START = 120
INTERVAL, GRACE = 30, 15


@pytest.mark.parametrize("role", [RENTER, PROVIDER])
def test_starting_ends_when_no_job_starts(role: Party) -> None:
    u = reach(S.STARTING, role)
    assert u.deadline == FUNDED + START
    assert not u.expire(FUNDED + START - 1) and u.state is S.STARTING
    assert u.expire(FUNDED + START) and u.state is S.SETTLING


def test_running_deadlines_by_role() -> None:
    # The renter waits interval + grace for the next heartbeat.
    u = reach(S.RUNNING, RENTER)
    seen = HB1.heartbeat.time
    assert u.deadline == seen + INTERVAL + GRACE
    assert not u.expire(seen + INTERVAL + GRACE - 1)
    assert u.expire(seen + INTERVAL + GRACE) and u.state is S.SETTLING
    # The provider waits grace for the answer to a heartbeat, and nothing once answered.
    u = reach(S.RUNNING, PROVIDER)
    assert u.deadline == seen + GRACE and not u.answered
    assert not u.expire(seen + GRACE - 1)
    u.receive(R1, seen + 1)
    assert u.answered and u.deadline is None and not u.expire(10**12)
    u = reach(S.RUNNING, PROVIDER)
    assert u.expire(seen + GRACE) and u.state is S.SETTLING


def test_stopping_waits_grace_for_the_last_receipt() -> None:
    u = reach(S.STOPPING, PROVIDER)
    sent = FINAL2.heartbeat.time
    assert u.deadline == sent + GRACE
    assert not u.expire(sent + GRACE - 1)
    assert u.expire(sent + GRACE) and u.state is S.SETTLING


def test_settling_ends_after_the_chain_deadline_once() -> None:
    u = reach(S.SETTLING, RENTER)
    hard = OPENED + 3600 + 600  # opened + maxSeconds + challengeWindow
    assert u.chain_deadline == hard and u.deadline == hard + 1
    u.close_requested_on_chain(FUNDED + 700)
    assert u.deadline == FUNDED + 701
    assert not u.expire(FUNDED + 700)
    assert u.expire(FUNDED + 701) and u.finalize_due and u.state is S.SETTLING
    assert u.deadline is None and not u.expire(10**12)
    assert u.close_requested_on_chain(10**12) is None and u.chain_deadline == FUNDED + 700


def test_closed_has_no_deadline() -> None:
    u = reach(S.CLOSED, PROVIDER)
    assert u.deadline is None and u.settled == (0, AGREED.agreement.terms.deposit)


# --- bad heartbeats ----------------------------------------------------------------------------


def _refused(u: Usage, message: object, now: int) -> tuple[ErrorCode, str]:
    before = u.snapshot()
    with pytest.raises(WireError) as err:
        apply(u, PROVIDER if u.role is RENTER else RENTER, message, now)
    assert u.snapshot() == before, "a refused message changes nothing"
    return err.value.code, err.value.detail


def running_renter() -> Usage:
    u = reach(S.RUNNING, RENTER)
    u.send(R1, FUNDED + 6)
    return u


def test_heartbeat_rules() -> None:
    u = running_renter()
    t = HB2.heartbeat.time
    other = f.heartbeat(bytes(32), 2, prev=HB1, time=t, uptime=30, receipt_seq=1)
    assert _refused(u, other, t) == (ErrorCode.InvalidField, "heartbeat of another rental")
    forged = f.heartbeat(RID, 2, prev=HB1, time=t, uptime=30, receipt_seq=1, key=f.OTHER_KEY)
    assert _refused(u, forged, t)[0] is ErrorCode.BadSignature
    replay = f.heartbeat(RID, 1, time=t, uptime=30)
    assert _refused(u, replay, t) == (ErrorCode.Replayed, "heartbeat seq 1 <= 1")
    broken = f.heartbeat(RID, 2, prev=HB2, time=t, uptime=30, receipt_seq=1)  # not HB1's digest
    assert _refused(u, broken, t) == (
        ErrorCode.InvalidField, "heartbeat 2 does not extend the chain at 1")
    gap = f.heartbeat(RID, 3, prev=HB1, time=t, uptime=30, receipt_seq=1)
    assert _refused(u, gap, t)[0] is ErrorCode.InvalidField
    back = f.heartbeat(RID, 2, prev=HB1, time=HB1.heartbeat.time - 1, uptime=0, receipt_seq=1)
    assert _refused(u, back, t) == (ErrorCode.InvalidField, "heartbeat time goes backwards")
    # A heartbeat may be 30 s ahead of or behind the receiver's clock, not more.
    ahead = f.heartbeat(RID, 2, prev=HB1, time=t + 31, uptime=30, receipt_seq=1)
    assert _refused(u, ahead, t)[0] is ErrorCode.NotYetValid
    assert apply(running_renter(), PROVIDER,
                 f.heartbeat(RID, 2, prev=HB1, time=t + 30, uptime=30, receipt_seq=1), t)
    behind = f.heartbeat(RID, 2, prev=HB1, time=t, uptime=30, receipt_seq=1)
    assert _refused(u, behind, t + 31) == (
        ErrorCode.InvalidField, f"heartbeat time {t} behind {t + 31}")
    fast = f.heartbeat(RID, 2, prev=HB1, time=t, uptime=31, receipt_seq=1)
    assert _refused(u, fast, t) == (ErrorCode.InvalidField, "uptime grows faster than time")
    # A heartbeat acknowledges exactly the newest receipt (the provider's word that it holds it).
    unacknowledged = f.heartbeat(RID, 2, prev=HB1, time=t, uptime=30, receipt_seq=0)
    assert _refused(u, unacknowledged, t) == (
        ErrorCode.InvalidField, "acknowledges receipt 0, the newest is 1")


def test_one_heartbeat_at_a_time() -> None:
    u = reach(S.RUNNING, RENTER)  # HB1 not answered yet
    assert _refused(u, HB2, HB2.heartbeat.time) == (
        ErrorCode.InvalidField, "heartbeat 2 before heartbeat 1 was answered")
    u = reach(S.RUNNING, PROVIDER)
    with pytest.raises(LocalProtocolError, match="before heartbeat 1 was answered"):
        u.send(HB2, HB2.heartbeat.time)


def test_uptime_never_goes_backwards() -> None:
    u = running_renter()
    u.receive(HB2, HB2.heartbeat.time, signing_input(HB2))
    u.send(R2, HB2.heartbeat.time + 1)
    t = HB2.heartbeat.time + 30
    back = f.heartbeat(RID, 3, prev=HB2, time=t, uptime=29, receipt_seq=2)
    assert _refused(u, back, t) == (ErrorCode.InvalidField, "uptime goes backwards")


def test_the_first_heartbeat_counts_uptime_from_the_open() -> None:
    u = reach(S.STARTING, RENTER)
    t = FUNDED + 5
    early = f.heartbeat(RID, 1, time=t, uptime=t - OPENED + 1)
    assert _refused(u, early, t) == (ErrorCode.InvalidField, "uptime grows faster than time")


def test_a_resent_heartbeat_is_a_duplicate_not_a_new_one() -> None:
    u = reach(S.RUNNING, RENTER)
    assert u.receive(HB1, FUNDED + 8, signing_input(HB1)) is False
    assert u.last == HB1


# --- bad receipts ------------------------------------------------------------------------------


def running_provider() -> Usage:
    u = reach(S.RUNNING, PROVIDER)
    u.receive(R1, FUNDED + 6)
    u.send(HB2, HB2.heartbeat.time)
    return u


def test_receipt_rules() -> None:
    u = running_provider()
    t = HB2.heartbeat.time + 1
    older = SIGNED.sign_receipt(f.PAYER, replace(R1.receipt, evidence=HB2.digest),
                                chain_id=f.CHAIN_ID, escrow=f.ESCROW)
    assert _refused(u, older, t) == (
        ErrorCode.InvalidField, "a receipt answers the newest heartbeat (its seq and digest)")
    good = f.receipt(RID, HB2, 30 * PRICE)
    wrong_hb = SIGNED.sign_receipt(f.PAYER, replace(good.receipt, evidence=bytes(32)),
                                   chain_id=f.CHAIN_ID, escrow=f.ESCROW)
    assert _refused(u, wrong_hb, t)[1].startswith("a receipt answers the newest heartbeat")
    other = f.receipt(RID, HB2, 30 * PRICE, escrow=f.TOKEN)
    assert _refused(u, other, t) == (ErrorCode.InvalidField, "receipt of another rental")
    more = f.receipt(RID, HB2, 31 * PRICE, uptime=31)
    assert _refused(u, more, t) == (
        ErrorCode.InvalidField, "receipt for more uptime than the heartbeat claims")
    dear = f.receipt(RID, HB2, 30 * PRICE + 1)
    assert _refused(u, dear, t) == (
        ErrorCode.InvalidField, "receipt above price x uptime (the escrow would refuse it)")
    assert u.receive(f.receipt(RID, HB2, 30 * PRICE), t)


def test_an_amount_below_the_last_receipt_is_refused() -> None:
    u = running_provider()
    u.receive(R2, HB2.heartbeat.time + 1)
    hb3 = f.heartbeat(RID, 3, prev=HB2, time=HB2.heartbeat.time + 30, uptime=60, receipt_seq=2)
    u.send(hb3, hb3.heartbeat.time)
    lower = f.receipt(RID, hb3, 30 * PRICE - 1)
    assert _refused(u, lower, hb3.heartbeat.time + 1) == (
        ErrorCode.InvalidField, "a later receipt may not lower the amount or the uptime")
    equal = f.receipt(RID, hb3, 30 * PRICE)  # the same amount is allowed (nothing owed more)
    assert u.receive(equal, hb3.heartbeat.time + 1)


def test_receipts_signed_by_anyone_else_do_not_decode() -> None:
    forged = f.receipt(RID, HB1, 0, signer=f.OTHER_ETH).encode()
    with pytest.raises(WireError) as err:
        SIGNED.read_receipt(forged, chain_id=f.CHAIN_ID, escrow=f.ESCROW,
                            signer=f.PAYER.address)
    assert err.value.code is ErrorCode.BadSignature


# --- closes ------------------------------------------------------------------------------------


def test_close_reasons_belong_to_their_side() -> None:
    u = reach(S.RUNNING, PROVIDER)
    assert _refused(u, Close(RID, CloseReason.RECEIPT_MISSED), FUNDED + 9) == (
        ErrorCode.InvalidField, "renter closing with reason RECEIPT_MISSED")
    assert _refused(u, Close(bytes(32), CloseReason.RENTER_STOPPED), FUNDED + 9) == (
        ErrorCode.InvalidField, "close of another rental")
    with pytest.raises(LocalProtocolError, match="provider closing with reason RENTER_STOPPED"):
        u.send(Close(RID, CloseReason.RENTER_STOPPED), FUNDED + 9)


def test_close_reason_ranges_say_who_closed() -> None:
    for reason in CloseReason:
        expected = RENTER if reason < 10_000 else PROVIDER if reason < 20_000 else CHAIN
        assert reason.closed_by is expected
    assert {r.closed_by for r in CloseReason} == {RENTER, PROVIDER, CHAIN}


def test_snapshot_round_trip_in_every_state() -> None:
    for state in S:
        for role in (RENTER, PROVIDER):
            u = reach(state, role)
            back = Usage.restore(u.snapshot(), role, SIGNED, AGREED, chain_id=f.CHAIN_ID,
                                 escrow=f.ESCROW)
            assert back.snapshot() == u.snapshot() and back.deadline == u.deadline


def test_negotiation_hands_over_a_funded_rental() -> None:
    n = Negotiation(PROVIDER, SIGNED, chain_id=f.CHAIN_ID, escrow=f.ESCROW)
    n.receive(AGREED.agreement.proposal, f.NOW)
    n.send(f.accepted(AGREED.agreement.proposal), f.NOW)
    n.receive(AGREED, f.NOW)
    n.opened(RID, OPENED)
    assert n.state is NegState.FUNDED and n.opened_at == OPENED
