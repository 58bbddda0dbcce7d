"""Peer exchange /rigmesh/peers/1: codec and limits, a star join on the memory network, and real
libp2p processes that meet each other through one bootstrap node and then do without it."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
import trio

from rigmesh.p2p import framing, peers
from rigmesh.p2p.memory import LinkParams
from rigmesh.p2p.network import NetworkError
from rigmesh.p2p.scenario import Sim, open_sim, run_sim
from rigmesh.wire import cbor
from rigmesh.wire.errors import (
    InvalidField,
    Malformed,
    RateLimited,
    TooLarge,
    UnknownKind,
    WireError,
)
from rigmesh.wire.identity import PeerKey, peer_id_to_text
from tests.p2p.procs import PeerProc
from tests.p2p.test_multiprocess import STARTUP, addr

PEER = PeerKey(bytes(range(32))).peer_id
ADDR = f"/ip4/127.0.0.1/tcp/4001/p2p/{peer_id_to_text(PEER)}"


def test_codec_round_trips_and_refuses_bad_input() -> None:
    req = peers.PeersRequest((ADDR,), 8)
    assert peers.decode_request(req.encode()) == req
    answer = peers.PeersAnswer((peers.PeerEntry(PEER, (ADDR, ADDR)),))
    assert peers.decode_answer(answer.encode(), 8) == answer
    with pytest.raises(TooLarge):  # more peers than asked for
        peers.decode_answer(answer.encode(), 0)
    with pytest.raises(InvalidField):  # limit out of range
        peers.decode_request(peers.PeersRequest((), peers.MAX_PEERS + 1).encode())
    with pytest.raises(InvalidField):  # too many addresses
        peers.decode_request(peers.PeersRequest((ADDR,) * 5, 1).encode())
    with pytest.raises(InvalidField):  # an entry without addresses
        peers.decode_answer(peers.PeersAnswer((peers.PeerEntry(PEER, ()),)).encode(), 8)
    with pytest.raises(Malformed):  # not the PeerId of an Ed25519 key
        peers.decode_answer(peers.PeersAnswer((peers.PeerEntry(b"x" * 38, (ADDR,)),)).encode(), 8)
    with pytest.raises(Malformed):  # an address that is not text
        peers.decode_request(framing.envelope("peers_req", {"addrs": [b"a"], "limit": 1}))
    with pytest.raises(UnknownKind):
        peers.decode_request(answer.encode())
    with pytest.raises(TooLarge):
        peers.decode_request(cbor.encode({"pad": b"x" * 2000}))


def test_spec_cddl_describes_peer_exchange() -> None:
    pycddl = pytest.importorskip("pycddl")
    text = (Path(__file__).resolve().parents[2] / "spec" / "messages.cddl").read_text()
    schema = pycddl.Schema(text)
    schema.validate_cbor(peers.PeersRequest((), 1).encode())
    schema.validate_cbor(peers.PeersRequest((ADDR,) * 4, peers.MAX_PEERS).encode())
    full = tuple(peers.PeerEntry(PEER, ("a" * 200,) * 4) for _ in range(peers.MAX_PEERS))
    encoded = peers.PeersAnswer(full).encode()
    assert len(encoded) <= peers.MAX_ANSWER_SIZE
    schema.validate_cbor(encoded)
    with pytest.raises(Exception):  # noqa: B017 - pycddl raises its own ValidationError
        schema.validate_cbor(peers.PeersRequest((), peers.MAX_PEERS + 1).encode())


def test_star_join_meets_everyone_and_survives_losing_the_bootstrap() -> None:
    """Ten nodes that know only node 0 ask it for peers, reach `target` connections, and an
    offer still reaches all of them after node 0 crashes."""
    n, target = 10, 4

    async def body(sim: Sim) -> tuple[list[int], list[int], bool]:
        for _ in range(n):
            await sim.add_node()
        px = [
            peers.PeerExchange(node.net, target=target, rng=random.Random(i))
            for i, node in enumerate(sim.nodes)
        ]
        for p in px:
            p.start()
        for i in range(1, n):  # one at a time, as nodes come up
            await sim.connect(i, 0)
            await px[i].top_up()
        for i in range(1, n):  # a second round, as `run` does every interval
            await px[i].top_up()
        degrees = [len(node.net.peers()) for node in sim.nodes]
        # A node at its target asks nobody.
        calls = await px[1].top_up() if degrees[1] >= target else -1
        await sim.crash(0)
        cid = await sim.publish(5, listing=1)
        t0 = trio.current_time()
        while len(sim.holders(cid)) < n - 1 and trio.current_time() - t0 < 5:
            await trio.sleep(0.01)
        return degrees, sim.holders(cid), calls == 0

    degrees, holders, idle = run_sim(
        3, lambda: open_sim(Sim(3, link=LinkParams(0.005)), body)
    )
    assert all(d >= target for d in degrees[1:]), degrees
    assert holders == list(range(1, n))
    assert idle


def test_lying_and_flooding_askers_are_bounded() -> None:
    """An answer naming a peer under someone else's address is not dialled; a peer asking
    faster than the rate limit gets RateLimited."""

    async def body(sim: Sim) -> None:
        for _ in range(3):
            await sim.add_node()
        a, b, c = sim.nodes
        pa = peers.PeerExchange(a.net, target=8, rng=random.Random(1))
        pa.start()
        await b.net.connect(a.net.addrs()[0])
        await c.net.connect(a.net.addrs()[0])
        # b announces c's address as its own: a passes it on, but under b's PeerId, so an
        # asker's address check refuses to dial it.
        lie = peers.PeersRequest(tuple(c.net.addrs()), 8).encode()
        await b.net.request(a.net.peer_id, peers.PROTOCOL, lie)
        pc = peers.PeerExchange(c.net, target=8, rng=random.Random(2))
        before = set(c.net.peers())
        assert await pc.exchange(a.net.peer_id) == 0
        assert set(c.net.peers()) == before
        with pytest.raises(RateLimited):
            for _ in range(20):
                await b.net.request(a.net.peer_id, peers.PROTOCOL, lie)

    run_sim(5, lambda: open_sim(Sim(5), body))


@pytest.mark.slow
def test_libp2p_processes_meet_through_one_bootstrap(tmp_path: Path) -> None:
    """Four processes; three know only the first. The last to join learns the other two from
    it, connects to them, and still gets their offers after the bootstrap is SIGKILLed."""
    gossip = '{"republish_interval": 3600, "anti_entropy_interval": 3600}'
    boot = PeerProc("--key-file", str(tmp_path / "boot.key"), "--gossip", gossip)
    procs = [boot]
    try:
        boot_addr = addr(boot)
        joined = []
        for i in range(3):
            p = PeerProc("--key-file", str(tmp_path / f"j{i}.key"), "--gossip", gossip,
                         "--bootstrap", boot_addr, "--target-peers", "3")
            procs.append(p)
            me = p.ready(timeout=STARTUP)[0]["peer_id"]
            p.wait_for(lambda e: e["event"] in ("peers_learned", "peers_failed"), STARTUP)
            joined.append((p, me))
        last, _ = joined[-1]
        last.send(cmd="peers")
        got = last.wait_for(lambda e: e["event"] == "peers", timeout=30)[0]["peers"]
        assert {joined[0][1], joined[1][1]} <= set(got), got
        boot.kill()
        time.sleep(2.5)  # GossipSub heartbeats: the mesh re-forms without the bootstrap
        first = joined[0][0]
        first.send(cmd="publish", listing=3, seq=1)
        cid = first.wait_for(lambda e: e["event"] == "publish_done", timeout=30)[0]["cid"]
        last.wait_for(lambda e: e["event"] == "offer" and e["cid"] == cid, timeout=60)
    finally:
        for p in procs:
            p.stop()


def test_exchange_with_a_vanished_peer_fails_cleanly() -> None:
    async def body(sim: Sim) -> int:
        for _ in range(2):
            await sim.add_node()
        a, b = sim.nodes
        await a.net.connect(b.net.addrs()[0])
        px = peers.PeerExchange(a.net, target=8, rng=random.Random(1))
        await sim.crash(1)
        try:
            return await px.exchange(b.net.peer_id)
        except NetworkError:  # pragma: no cover - the failure must be caught inside
            return -1

    assert run_sim(4, lambda: open_sim(Sim(4), body)) == 0


def test_only_addresses_on_the_askers_own_host_are_passed_on() -> None:
    """An asker announcing addresses on other hosts (here /ip4/10.x.0.1, its connection being a
    memory one) gets none of them passed on, so it cannot have honest nodes dial a host of its
    choice; its own address is passed on, once, and the table keeps at most 4 per peer."""

    async def body(sim: Sim) -> tuple[tuple[str, ...], ...]:
        for _ in range(3):
            await sim.add_node()
        a, b, c = sim.nodes
        pa = peers.PeerExchange(a.net, target=8, rng=random.Random(1))
        pa.start()
        await b.net.connect(a.net.addrs()[0])
        await c.net.connect(a.net.addrs()[0])
        me = peer_id_to_text(b.net.peer_id)
        made_up = tuple(f"/ip4/10.{i}.0.1/tcp/4001/p2p/{me}" for i in range(3))
        own = b.net.addrs()[0]
        answers = []
        for announced in (made_up, (*made_up[:2], own, own)):
            await b.net.request(a.net.peer_id, peers.PROTOCOL,
                                peers.PeersRequest(announced, 8).encode())
            raw = await c.net.request(a.net.peer_id, peers.PROTOCOL,
                                      peers.PeersRequest((), 8).encode())
            answers.append(tuple(a for e in peers.decode_answer(raw, 8).peers for a in e.addrs))
        return tuple(answers)

    nothing, only_own = run_sim(6, lambda: open_sim(Sim(6), body))
    assert nothing == ()
    assert only_own == (f"/memory/{peer_id_to_text(Sim(6).key(1).peer_id)}",)


def test_garbage_on_peer_exchange_counts_against_the_sender() -> None:
    """Six malformed requests ban the asker (penalty 10 each, threshold 50), as on sync; an
    answer that does not decode counts against the answerer."""

    async def body(sim: Sim) -> tuple[list[str], bool, float]:
        for _ in range(3):
            await sim.add_node()
        a, b, c = sim.nodes
        pa = peers.PeerExchange(a.net, target=8, rng=random.Random(1), rate=100.0)
        pa.start()
        await b.net.connect(a.net.addrs()[0])
        codes = []
        for _ in range(6):
            try:
                await b.net.request(a.net.peer_id, peers.PROTOCOL, b"\xff garbage")
            except (WireError, NetworkError) as exc:  # the error frame, then the ban
                codes.append(type(exc).__name__)
        banned = a.net.is_banned(b.net.peer_id)
        # c answers peer exchange with garbage: a's exchange with it scores c
        c.net.serve(peers.PROTOCOL, _garbage)
        await a.net.connect(c.net.addrs()[0])
        await pa.exchange(c.net.peer_id)
        return codes, banned, pa.penalize.scores.penalty(c.net.peer_id, trio.current_time())

    codes, banned, penalty = run_sim(7, lambda: open_sim(Sim(7), body))
    assert codes[:5] == ["Malformed"] * 5
    assert banned
    assert penalty == pytest.approx(10.0)


async def _garbage(peer: bytes, data: bytes) -> bytes:
    return b"\xff\x00"  # not CBOR: Malformed
