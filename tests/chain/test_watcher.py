"""The chain watcher (rigmesh.chain.watcher) on the embedded py-evm chain and on anvil.

Reorganizations are made with the chains' snapshots: revert to before a block and mine other
blocks in its place (`evm_snapshot`/`evm_revert` on anvil, eth-tester's snapshots on py-evm).
The chains are the escrow tests' (`chain`: py-evm and anvil, each test from a snapshot after
deployment; tests/chain/conftest.py). Each test calls `poll` itself (or waits on `polled`), so
nothing waits on a clock.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from rigmesh.chain.watcher import REWIND, Applied, ChainWatcher
from rigmesh.escrow.client import AsyncEscrowClient, EscrowClient, limiter_for
from rigmesh.escrow.model import ETH
from rigmesh.rental.actions import ChainEvent, Opened
from rigmesh.store.ledger import Ledger
from rigmesh.wire.eip712 import Terms
from tests.escrow.chains import MIN_WINDOW, TestChain, key

DEPOSIT = 10**15


class Seen:
    """The watcher's callback: every event it handed over, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[ChainEvent, Applied]] = []

    async def __call__(self, event: ChainEvent, applied: Applied) -> None:
        self.events.append((event, applied))

    def opened(self) -> list[bytes]:
        return [e.rental_id for e, _ in self.events if isinstance(e, Opened)]


def watcher(chain: TestChain, ledger: Ledger, seen: Seen, confirmations: int) -> ChainWatcher:
    client = chain.client(chain.funder)
    return ChainWatcher(AsyncEscrowClient(client, limiter_for(chain.w3)), ledger, seen,
                        confirmations=confirmations, poll=0.05)


def renter(chain: TestChain, n: int) -> tuple[EscrowClient, Terms]:
    """A fresh renter with the deposit of rental `n` in the escrow, and the rental's terms
    (its open is then one transaction: `client.open(terms)`)."""
    who = key(f"watcher renter {n} {head(chain)}")
    chain.fund(who, wei=10**18, usd=0)
    client = chain.client(who)
    client.deposit(ETH, DEPOSIT)
    return client, Terms(renter=who.address, provider=key("watcher provider").address,
                         token=ETH, deposit=DEPOSIT, price_per_second=1, max_seconds=600,
                         challenge_window=MIN_WINDOW, receipt_signer=who.address,
                         agreement_id=n.to_bytes(32, "big"))


def open_rental(chain: TestChain, n: int) -> Terms:
    client, terms = renter(chain, n)
    client.open(terms)
    return terms


def head(chain: TestChain) -> int:
    return int(chain.w3.eth.block_number)


def mine(chain: TestChain, blocks: int) -> None:
    for _ in range(blocks):
        chain.advance(1)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    yield ledger
    ledger.close()


async def test_an_event_is_applied_once_at_the_confirmation_depth(
        chain: TestChain, ledger: Ledger) -> None:
    seen = Seen()
    w = watcher(chain, ledger, seen, confirmations=3)
    await w.poll()
    terms = open_rental(chain, 1)
    opened_in = head(chain)
    for _ in range(3):  # 0, 1, 2 blocks deep: not yet
        await w.poll()
        assert seen.events == []
        mine(chain, 1)
    assert await w.poll() >= 1  # 3 deep
    [(event, applied)] = seen.events
    assert isinstance(event, Opened) and event.rental_id == terms.rental_id
    assert event.terms == terms
    assert applied.block == opened_in
    assert event.opened_at == int(chain.w3.eth.get_block(opened_in)["timestamp"])
    assert ledger.applied(applied.tx_hash, applied.log_index)
    mine(chain, 4)
    await w.poll()
    assert len(seen.events) == 1
    # A restarted node (a new watcher on the same ledger) does not see it again.
    again = Seen()
    await watcher(chain, ledger, again, confirmations=3).poll()
    assert again.events == []


async def test_a_replayed_read_never_applies_an_event_twice(
        chain: TestChain, ledger: Ledger) -> None:
    seen = Seen()
    w = watcher(chain, ledger, seen, confirmations=0)
    await w.poll()
    start = ledger.cursor()
    assert start is not None
    terms = open_rental(chain, 2)
    await w.poll()
    assert seen.opened() == [terms.rental_id]
    # An overlapping read: the cursor back before the event (a restart from an older copy of
    # the cursor, a re-read after a reorganization): the applied event is skipped.
    ledger.advance(start[0], start[1], [])
    assert await w.poll() == 0
    assert seen.opened() == [terms.rental_id]


async def test_polls_at_once_apply_an_event_once(chain: TestChain, ledger: Ledger) -> None:
    """The node polls out of turn (a heartbeat shows the chain moved) while the loop's own poll
    may be under way: the two never read the same events."""
    seen = Seen()
    w = watcher(chain, ledger, seen, confirmations=0)
    await w.poll()
    terms = open_rental(chain, 4)
    counts: list[int] = []

    async def poll() -> None:
        counts.append(await w.poll())

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(poll)
    assert seen.opened() == [terms.rental_id]
    assert sorted(counts)[:2] == [0, 0] and sorted(counts)[2] >= 1  # one poll read them all


async def test_a_crash_between_applying_and_committing_hands_the_event_over_again(
        chain: TestChain, ledger: Ledger) -> None:
    """The watcher commits after the callbacks: a node killed in between gets the event again
    at its restart (the engines take a repeated chain event as a no-op), and once committed
    never again."""

    class Killed(Exception):
        pass

    async def crash(event: ChainEvent, applied: Applied) -> None:
        raise Killed

    w = watcher(chain, ledger, Seen(), confirmations=0)
    await w.poll()
    terms = open_rental(chain, 3)
    w.on_event = crash
    with pytest.raises(Killed):
        await w.poll()
    seen = Seen()
    restarted = watcher(chain, ledger, seen, confirmations=0)
    await restarted.poll()
    assert seen.opened() == [terms.rental_id]
    await restarted.poll()
    assert seen.opened() == [terms.rental_id]


async def test_a_reorganization_shallower_than_the_depth_never_reaches_the_node(
        chain: TestChain, ledger: Ledger) -> None:
    seen = Seen()
    w = watcher(chain, ledger, seen, confirmations=3)
    client, terms = renter(chain, 4)
    mine(chain, 4)
    await w.poll()
    before = chain.snapshot()
    client.open(terms)
    await w.poll()  # the open is in the newest block: not seen
    cursor = ledger.cursor()
    # The block holding the open is replaced by empty ones (a longer branch).
    chain.revert(before)
    mine(chain, 6)
    await w.poll()
    assert seen.events == []
    assert w.reorgs == 0
    assert cursor is not None and ledger.cursor() == (
        head(chain) - 3, bytes(chain.w3.eth.get_block(head(chain) - 3)["hash"]))


async def test_a_reorganization_deeper_than_the_depth_is_reported_and_read_again(
        chain: TestChain, ledger: Ledger, caplog: pytest.LogCaptureFixture) -> None:
    seen = Seen()
    w = watcher(chain, ledger, seen, confirmations=1)
    (first_client, first), (second_client, second) = renter(chain, 5), renter(chain, 6)
    mine(chain, 2)
    await w.poll()
    before = chain.snapshot()
    first_client.open(first)
    mine(chain, 2)
    await w.poll()
    assert seen.opened() == [first.rental_id]
    cursor = ledger.cursor()
    assert cursor is not None
    # Another branch: a different rental opened where the first was, and more blocks, so the
    # block under the watcher's cursor is another one.
    chain.revert(before)
    second_client.open(second)
    second_in = head(chain)
    assert second_in < cursor[0]  # below the cursor: only a re-read finds it
    mine(chain, 4)
    with caplog.at_level(logging.ERROR, logger="rigmesh.chain.watcher"):
        await w.poll()
    assert w.reorgs == 1
    assert f"chain reorganized below the confirmation depth at block {cursor[0]}" in caplog.text
    assert f"re-reading from {max(0, cursor[0] - REWIND)}" in caplog.text
    # What was applied from the dropped blocks stays applied; the new branch is read.
    assert seen.opened() == [first.rental_id, second.rental_id]
    assert [a.block for e, a in seen.events if isinstance(e, Opened)][1] == second_in
    await w.poll()
    assert w.reorgs == 1 and len(seen.opened()) == 2


async def test_chain_time_follows_the_newest_block(chain: TestChain, ledger: Ledger) -> None:
    w = watcher(chain, ledger, Seen(), confirmations=2)
    await w.poll()
    assert w.chain_time == int(chain.w3.eth.get_block("latest")["timestamp"])
    earlier = chain.snapshot()
    chain.advance(5000)
    latest = int(chain.w3.eth.get_block("latest")["timestamp"])
    await w.poll()
    assert w.chain_time == latest
    # A chain that went back (a reorganization to an older tip) does not move it back.
    chain.revert(earlier)
    await w.poll()
    assert w.chain_time == latest


async def test_run_polls_until_cancelled(chain: TestChain, ledger: Ledger) -> None:
    seen = Seen()
    w = watcher(chain, ledger, seen, confirmations=0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(w.run)
        await w.polled.wait()
        terms = await trio.to_thread.run_sync(open_rental, chain, 7)
        with trio.fail_after(10):
            while terms.rental_id not in seen.opened():
                await w.polled.wait()
        nursery.cancel_scope.cancel()
    assert seen.opened() == [terms.rental_id]
