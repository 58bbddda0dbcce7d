"""Gossip, sync, scoring and restart on the in-memory network, in virtual time.

The same scenarios run against real libp2p hosts in separate processes in test_multiprocess.py.
"""

from __future__ import annotations

import pytest
import trio

from rigmesh.p2p.memory import LinkParams
from rigmesh.p2p.scenario import (
    CHAIN_ID,
    SIM_LISTING,
    Sim,
    diameter,
    open_sim,
    random_graph,
    run_sim,
)
from rigmesh.wire import cbor


def forged(data: bytes) -> bytes:
    """The same offer with its signature zeroed: decodes, fails Ed25519 verification."""
    m = cbor.decode(data, max_size=4096)
    m["sig"] = bytes(64)
    return cbor.encode(m)


def test_offer_reaches_every_node_within_the_graph_bound() -> None:
    latency = 0.010

    async def body(sim: Sim) -> tuple[list[int], float, int]:
        for _ in range(12):
            await sim.add_node()
        edges = random_graph(12, 4, sim.rng)
        await sim.wire(edges)
        t0 = trio.current_time()
        cid = await sim.publish(0)
        while len(sim.holders(cid)) < 12 and trio.current_time() - t0 < 5:
            await trio.sleep(0.001)
        return sim.holders(cid), trio.current_time() - t0, diameter(12, edges)

    holders, took, diam = run_sim(1, lambda: open_sim(Sim(1, link=LinkParams(latency)), body))
    assert holders == list(range(12))
    assert took <= diam * latency + 0.002


def test_late_joiner_gets_the_book_by_sync_not_republish() -> None:
    async def body(sim: Sim) -> tuple[int, int, dict[str, int]]:
        for _ in range(5):
            await sim.add_node()
        await sim.wire(random_graph(5, 3, sim.rng))
        for i in range(5):
            for listing in range(4):
                await sim.publish(i, listing=listing)
        await trio.sleep(1)
        late = await sim.add_node()
        t0 = trio.current_time()
        await late.gossip.join([sim.nodes[2].net.addrs()[0]])
        return len(late.book), round(trio.current_time() - t0), late.gossip.counters

    # republish every hour, anti-entropy off: only the join sync can fill the book
    sim = Sim(2, config={"republish_interval": 3600.0, "anti_entropy_interval": 3600.0})
    size, took, counters = run_sim(2, lambda: open_sim(sim, body))
    assert size == 20
    assert took < 1
    assert counters["synced"] == 1


def test_spammer_is_banned_and_honest_offers_still_arrive() -> None:
    async def body(sim: Sim) -> tuple[list[int], dict[int, bool], int]:
        for _ in range(6):
            await sim.add_node()
        # a ring plus chords; node 5 (the spammer) is linked to 0, 1 and 3
        await sim.wire([(0, 1), (1, 2), (2, 3), (3, 4), (4, 0), (0, 2), (5, 0), (5, 1), (5, 3)])
        spammer = sim.nodes[5]
        cids = []
        for k in range(40):
            good = spammer.provider.offer(SIM_LISTING.but(listing=k % 16), seq=k + 1,
                                          now=sim.now())
            # raw publish: the spammer's network does not validate, receivers must
            bad = forged(good.sign(spammer.key).encoded)
            await spammer.net.publish(sim.nodes[0].gossip.topic, bad)
            if k % 10 == 0:
                cids.append(await sim.publish(k % 5, listing=k % 16, seq=k + 1))
            await trio.sleep(0.05)
        await trio.sleep(1)
        honest_hold = [len(sim.holders(c)) for c in cids]
        banned = {i: sim.nodes[i].net.is_banned(spammer.key.peer_id) for i in (0, 1, 3)}
        rejected = sum(n.gossip.counters.get("rejected", 0) for n in sim.nodes[:5])
        return honest_hold, banned, rejected

    honest_hold, banned, rejected = run_sim(3, lambda: open_sim(Sim(3), body))
    assert all(h >= 5 for h in honest_hold)  # every honest node (the spammer may hold them too)
    assert banned == {0: True, 1: True, 3: True}
    # penalty 10 per forgery, threshold 50: decay leaves five just under 50, so each neighbour
    # bans at the sixth, and nothing from the spammer reaches it after that
    assert rejected == 18


def test_crashed_node_restarts_with_same_peer_id_and_resyncs() -> None:
    async def body(sim: Sim) -> tuple[bytes, bytes, int, list[int]]:
        for _ in range(5):
            await sim.add_node()
        await sim.wire(random_graph(5, 3, sim.rng))
        for i in range(5):
            await sim.publish(i)
        await trio.sleep(1)
        before = sim.nodes[3].key.peer_id
        await sim.crash(3)
        await trio.sleep(5)
        node = await sim.add_node(3)
        await node.gossip.join([sim.nodes[0].net.addrs()[0], sim.nodes[1].net.addrs()[0]])
        size = len(node.book)
        cid = await sim.publish(3, listing=1)
        await trio.sleep(1)
        return before, node.key.peer_id, size, sim.holders(cid)

    before, after, size, holders = run_sim(4, lambda: open_sim(Sim(4), body))
    assert before == after
    assert size == 5  # all five offers, its own included: the others still held it
    assert holders == [0, 1, 2, 3, 4]


def lossy_run(seed: int) -> tuple[list[str], list[int]]:
    async def body(sim: Sim) -> list[int]:
        for _ in range(15):
            await sim.add_node()
        await sim.wire(random_graph(15, 4, sim.rng))
        for i in range(15):
            await sim.publish(i)
            await trio.sleep(0.2)
        await trio.sleep(120)  # anti-entropy every 30 s repairs what the 20 % loss dropped
        return [len(n.book) for n in sim.nodes]

    sim = Sim(seed, link=LinkParams(latency=0.02, jitter=0.03, loss=0.2))
    sizes = run_sim(seed, lambda: open_sim(sim, body))
    return sim.log, sizes


def test_runs_repeat_bit_for_bit_with_a_seed_and_anti_entropy_repairs_loss() -> None:
    log_a, sizes_a = lossy_run(7)
    log_b, sizes_b = lossy_run(7)
    assert len(log_a) > 100
    assert log_a == log_b
    assert sizes_a == sizes_b == [15] * 15
    log_c, _ = lossy_run(8)
    assert log_c != log_a


async def test_full_book_ignores_without_penalizing_the_forwarder() -> None:
    """RateLimited from our own book (full, or the origin over its listings) is not the
    forwarder's fault: IGNORE, no penalty, no ban."""
    from rigmesh.market.book import OfferBook
    from rigmesh.p2p.gossip import GossipConfig, OfferGossip
    from rigmesh.p2p.memory import MemoryHub
    from rigmesh.p2p.network import Verdict
    from tests.factories import NOW, Provider

    hub = MemoryHub(seed=7)
    me, forwarder = Provider(70), Provider(71)
    book = OfferBook(chain_id=CHAIN_ID, max_offers=1)
    gossip = OfferGossip(hub.node(me.peer_id), book, GossipConfig(chain_id=CHAIN_ID),
                         clock=lambda: NOW)
    first = Provider(72).signed(chain_id=CHAIN_ID).encoded
    second = Provider(73).signed(chain_id=CHAIN_ID).encoded
    assert await gossip._on_gossip(forwarder.peer_id, first) is Verdict.ACCEPT
    for _ in range(50):
        assert await gossip._on_gossip(forwarder.peer_id, second) is Verdict.IGNORE
    assert gossip.counters["book_limited"] == 50
    assert "rejected" not in gossip.counters
    assert not gossip.network.is_banned(forwarder.peer_id)


def test_join_takes_the_first_good_sync_and_scores_a_silent_peer() -> None:
    """Of two bootstrap peers one never answers sync: the join goes on as soon as the other's
    sync ended (not after the 10 s deadline), and the silent one is scored when it passes."""
    from rigmesh.p2p.network import SYNC_PROTOCOL

    async def silent(peer: bytes, data: bytes) -> bytes:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def body(sim: Sim) -> tuple[float, int, float, float]:
        good, mute = await sim.add_node(), await sim.add_node()
        for listing in range(3):
            await sim.publish(0, listing=listing)
        mute.net.serve(SYNC_PROTOCOL, silent)
        late = await sim.add_node()
        t0 = trio.current_time()
        await late.gossip.join([good.net.addrs()[0], mute.net.addrs()[0]])
        took = trio.current_time() - t0
        size = len(late.book)
        scores = late.gossip.scores
        before = scores.penalty(mute.key.peer_id, trio.current_time())
        # virtual time: wait until the straggler's sync has ended (its "synced" event)
        while not any('"error": "Timeout' in line for line in sim.log):
            await trio.sleep(0.5)
        return took, size, before, scores.penalty(mute.key.peer_id, trio.current_time())

    sim = Sim(9, config={"join_sync_peers": 2, "republish_interval": 3600.0,
                         "anti_entropy_interval": 3600.0})
    took, size, before, after = run_sim(9, lambda: open_sim(sim, body))
    assert took < 1.0
    assert size == 3
    assert before == 0.0
    assert after == pytest.approx(2.0, rel=0.01)  # the Timeout penalty, barely decayed
