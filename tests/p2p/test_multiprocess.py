"""Real libp2p hosts on 127.0.0.1, one OS process each (rigmesh.p2p.peer): gossip reaches all,
a late joiner syncs, a spammer is scored out, a SIGKILLed node comes back with its PeerId."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.p2p.procs import PeerProc

pytestmark = pytest.mark.slow

# Fast duties for tests; republish stays slow so only gossip and sync can deliver.
GOSSIP = '{"republish_interval": 3600, "anti_entropy_interval": 3600}'
#: Generous waits: on a loaded 2-core machine starting Python + libp2p took up to 40 s. The
#: assertions, not the waits, decide: a wait that expires fails the test.
STARTUP = 120.0
DELIVERY = 60.0


def start(tmp: Path, name: str, bootstrap: list[str], *extra: str) -> PeerProc:
    args = ["--key-file", str(tmp / f"{name}.key"), "--gossip", GOSSIP, *extra]
    for b in bootstrap:
        args += ["--bootstrap", b]
    return PeerProc(*args)


def addr(p: PeerProc) -> str:
    return p.ready(timeout=STARTUP)[0]["addrs"][0]


@pytest.fixture(scope="module")
def keys_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keys")


@pytest.fixture(scope="module")
def five(keys_dir: Path) -> Iterator[list[PeerProc]]:
    """Five processes started together, then wired as a ring plus two chords. Shared by the
    tests of this module (starting Python and libp2p costs ~2 s a process on two cores); each
    test uses its own listings and checks only what it added."""
    procs = [start(keys_dir, f"n{i}", []) for i in range(5)]
    try:
        addrs = [addr(p) for p in procs]
        for i, p in enumerate(procs):
            p.send(cmd="join", addrs=[addrs[(i + 1) % 5], addrs[(i + 2) % 5]])
        for p in procs:
            p.wait_for(lambda e: e["event"] == "joined", timeout=STARTUP)
        time.sleep(2.5)  # two GossipSub heartbeats: the mesh forms
        yield procs
    finally:
        for p in procs:
            p.stop()


def offer_seen(cid: str) -> object:
    return lambda e: e.get("cid") == cid and e["event"] in ("offer", "published")


def publish_from_each(five: list[PeerProc], listing: int) -> set[str]:
    """Every node publishes one offer of `listing`; wait until every node holds all five."""
    for p in five:
        p.send(cmd="publish", listing=listing, tag=f"l{listing}")
    cids = {
        p.wait_for(lambda e: e["event"] == "publish_done" and e["tag"] == f"l{listing}")[0]["cid"]
        for p in five
    }
    for p in five:
        for cid in cids:
            p.wait_for(offer_seen(cid), timeout=DELIVERY)
    return cids


def test_offer_published_by_one_reaches_all_five(five: list[PeerProc]) -> None:
    five[3].send(cmd="publish", listing=10)
    cid = five[3].wait_for(lambda e: e["event"] == "publish_done")[0]["cid"]
    for p in five:
        p.wait_for(offer_seen(cid), timeout=DELIVERY)


def test_late_joiner_syncs_the_book(five: list[PeerProc], tmp_path: Path) -> None:
    cids = publish_from_each(five, listing=20)
    # GossipSub keeps recent messages for gossip_history (5) heartbeats of 1 s and offers them
    # to new peers by IHAVE/IWANT; wait that out, so only the sync can deliver them.
    time.sleep(6)
    late = start(tmp_path, "late", [addr(five[2])])
    try:
        joined = late.wait_for(lambda e: e["event"] == "joined", timeout=STARTUP)[0]
        assert joined["book"] >= 5
        late.send(cmd="book")
        book = late.wait_for(lambda e: e["event"] == "book")[0]
        assert cids <= set(book["cids"])
        # it got them by sync: no gossip of them arrived (republish is hourly)
        assert not [e for e in late.snapshot() if e["event"] == "offer"]
    finally:
        late.stop()


def test_spammer_is_scored_out_while_honest_offers_arrive(
    five: list[PeerProc], tmp_path: Path
) -> None:
    spammer = start(tmp_path, "spam", [addr(five[0]), addr(five[1])])
    try:
        spammer.wait_for(lambda e: e["event"] == "joined", timeout=STARTUP)
        time.sleep(2.0)  # join the mesh, so the forgeries go out
        spam_id = spammer.ready()[0]["peer_id"]
        spammer.send(cmd="spam", count=40, interval=0.05)
        for k in range(4):
            five[4].send(cmd="publish", listing=40 + k, tag=k)
            time.sleep(0.5)
        spammer.wait_for(lambda e: e["event"] == "spam_done", timeout=STARTUP)
        cids = [e["cid"] for e in five[4].wait_for(
            lambda e: e["event"] == "publish_done" and e["tag"] is not None, count=4)]
        for p in five:
            for cid in cids:
                p.wait_for(offer_seen(cid), timeout=DELIVERY)
        banned_by = [
            i for i, p in enumerate(five)
            if any(e["event"] == "banned" and e["peer"] == spam_id for e in p.snapshot())
        ]
        assert 0 in banned_by and 1 in banned_by
        # no forgery was forwarded: every one that was refused came straight from the spammer
        # (its bootstrap peers, and any it met by peer exchange), never from an honest relay
        for p in five:
            assert {e["peer"] for e in p.snapshot() if e["event"] == "rejected"} <= {spam_id}
    finally:
        spammer.stop()


def test_sigkilled_node_restarts_with_same_peer_id_and_rejoins(
    five: list[PeerProc], keys_dir: Path
) -> None:
    cids = publish_from_each(five, listing=30)
    old_id = five[2].ready()[0]["peer_id"]
    five[2].kill()
    back = start(keys_dir, "n2", [addr(five[0]), addr(five[4])])
    try:
        assert back.ready(timeout=STARTUP)[0]["peer_id"] == old_id
        back.wait_for(lambda e: e["event"] == "joined", timeout=STARTUP)
        back.send(cmd="book")
        assert cids <= set(back.wait_for(lambda e: e["event"] == "book")[0]["cids"])
        time.sleep(2.0)
        back.send(cmd="publish", listing=31)
        cid = back.wait_for(lambda e: e["event"] == "publish_done")[0]["cid"]
        for i in (0, 1, 3, 4):
            five[i].wait_for(offer_seen(cid), timeout=DELIVERY)
    finally:
        back.stop()
        five[2] = back  # the fixture stops it
