"""Two nodes in one process on the embedded chain: a whole rental, from offer to settlement."""

from __future__ import annotations

import dataclasses

import trio

from rigmesh.escrow.model import Status
from rigmesh.market.offer import SignedOffer
from rigmesh.node.node import Node
from rigmesh.rental.codes import CloseReason
from rigmesh.rental.usage import UseState
from tests.node.conftest import PRICE, Net, an_offer, job, wants
from tests.node.parties import closed, parties, running_with, started


async def test_a_rental_between_two_nodes(net: Net) -> None:
    async with net.pair() as (_provider, renter):
        offer = await an_offer(renter)
        key = await renter.rent(offer, wants(job("print('hello from the job')"), seconds=20))
        rental = await renter.wait_until(
            key, lambda e: e.use is not None and e.use.state is UseState.CLOSED, timeout=60)
        use = rental.use
        assert use is not None and use.settled is not None
        state = await renter.escrow.rental_state(use.rental_id)
        assert state.status is Status.CLOSED
        paid, refunded = use.settled
        assert paid == use.amount and paid + refunded == use.deposit
        assert use.ended_by() is CloseReason.JOB_EXITED, (use.ended_by(), use.state, use.snapshot())
        assert paid <= PRICE * 20


async def test_a_heartbeat_before_the_renter_saw_the_funding_makes_it_read_the_chain(
    net: Net,
) -> None:
    """The provider's watcher may see the open first, and its first heartbeat then finds a
    renter that has not: the renter reads the chain at once instead of refusing it and waiting
    for the retry. Here the renter's own watcher polls once an hour, so only the heartbeat can
    show it the funding."""
    async with parties(net) as p:
        p.chains["renter"] = dataclasses.replace(net.settings, poll=3600.0)
        provider, renter, offer = await started(p)
        key = await renter.rent(offer, wants(job("import time; time.sleep(60)"), seconds=30))
        await renter.wait_until(key, running_with(PRICE), timeout=10)
        await provider.wait_until(key, running_with(PRICE), timeout=10)


async def test_inputs_in_output_streamed_results_back(net: Net) -> None:
    import hashlib

    import trio

    from rigmesh.rental.workload import FileDigest, Workload

    data = b"x" * 100_000  # three input chunks
    code = (
        "import os, time, hashlib\n"
        "d = open('in/data.bin','rb').read()\n"
        "print('got', len(d), flush=True)\n"
        "for i in range(3):\n"
        "    print('tick', i, flush=True); time.sleep(1)\n"
        "os.makedirs('out', exist_ok=True)\n"
        "open('out/sum.txt','w').write(hashlib.sha256(d).hexdigest())\n"
    )
    import sys

    workload = Workload("command", (sys.executable, "-c", code), 0,
                        (FileDigest("in/data.bin", len(data), hashlib.sha256(data).digest()),))
    async with net.pair() as (_provider, renter):
        offer = await an_offer(renter)
        key = await renter.rent(offer, wants(workload, seconds=30), {"in/data.bin": data})
        lines = b""
        with trio.fail_after(60):
            async for piece in renter.output(key):
                lines += piece
        assert b"got 100000" in lines and b"tick 2" in lines
        rental = await renter.wait_until(
            key, lambda e: e.use is not None and e.use.state is UseState.CLOSED
            and e.outputs_checked is not None, timeout=60)
        assert rental.outputs_checked is True
        results = net.root / "renter" / "results" / rental.use.rental_id.hex()  # type: ignore[union-attr]
        assert (results / "out/sum.txt").read_text() == hashlib.sha256(data).hexdigest()
        use = rental.use
        assert use is not None and use.settled is not None
        # Paid for the seconds the job ran (about three), as the last receipt said.
        assert use.settled[0] == use.amount == PRICE * use.last.heartbeat.uptime  # type: ignore[union-attr]
        assert 2 <= use.last.heartbeat.uptime <= 6  # type: ignore[union-attr]


async def test_offers_follow_the_rentals_and_leave_with_the_provider(net: Net) -> None:
    async def offered(node: Node, provider: bytes, want: int | None) -> SignedOffer | None:
        """Wait until `node`'s book holds the provider's offer with capacity `want` (None:
        withdrawn), woken by the book's changes."""
        with trio.fail_after(20):
            while True:
                found = node.book.get(provider, 0)
                if (found.offer.capacity if found else None) == want:
                    return found
                changed = trio.Event()
                listener = lambda *_, changed=changed: changed.set()  # noqa: E731

                node.book.add_listener(listener)
                with trio.move_on_after(1):  # and ask for a sync now and then
                    await changed.wait()
                node.book.remove_listener(listener)
                await node.gossip.anti_entropy()

    async with parties(net) as p:
        (listing,) = p.provider_settings.listings
        p.provider_settings = dataclasses.replace(p.provider_settings,
                                                  listings=(listing.but(capacity=2),))
        provider, renter, offer = await started(p)
        pid = provider.peer_id
        first = await offered(renter, pid, 2)
        assert first is not None
        key = await renter.rent(offer, wants(job("import time; time.sleep(4)"), seconds=30))
        busy = await offered(renter, pid, 1)  # one of two rented
        await renter.wait_until(key, closed, timeout=60)
        free = await offered(renter, pid, 2)  # back after the rental
        assert busy is not None and free is not None
        assert first.offer.seq < busy.offer.seq < free.offer.seq
        await p.stop("provider")
        assert await offered(renter, pid, None) is None  # withdrawn when it stopped
        provider = await p.start("provider")  # a restart remembers the seq
        again = await offered(provider, pid, 2)
        assert again is not None and again.offer.seq > free.offer.seq + 1  # past the withdrawal
