"""The p2p layer's pure decisions (rigmesh.p2p.policy), without a network or trio: the verdict
and penalty of each gossip message, a whole paged sync between two books, the peer-exchange
answer and the dials it leads to. The shell tests (test_memory_gossip.py, test_peers.py) run the
same decisions over a network."""

from __future__ import annotations

import ast
import random
import subprocess
import sys
from pathlib import Path

import pytest

import rigmesh.p2p.policy as policy_module
from rigmesh.market.book import OfferBook
from rigmesh.p2p import pex, policy, sync
from rigmesh.p2p.network import NetworkError, Verdict
from rigmesh.p2p.score import PeerScores, ScoreConfig
from rigmesh.wire import cbor
from rigmesh.wire.errors import (
    BadSignature,
    ErrorCode,
    Expired,
    InvalidField,
    RateLimited,
    Replayed,
    Timeout,
    TooLarge,
)
from rigmesh.wire.identity import peer_id_to_text
from tests.factories import CHAIN_ID, NOW, Provider

PEER = Provider(1).peer_id


def test_policy_module_is_pure() -> None:
    """No trio, no clock, no network: the simulator imports it without the shell."""
    tree = ast.parse(Path(policy_module.__file__).read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"trio", "time", "asyncio", "socket", "libp2p"}
    code = "import sys, rigmesh.p2p.policy; print('trio' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "False"


def test_gossip_verdicts_follow_the_spec_order() -> None:
    scores = PeerScores()

    def judge(ingest: object, size: int = 100, banned: bool = False) -> policy.GossipDecision:
        def run() -> object:
            if isinstance(ingest, Exception):
                raise ingest
            return ingest

        return policy.judge_gossip(scores, PEER, size, run, mono=0.0, banned=banned)

    assert judge("added") == policy.GossipDecision(Verdict.ACCEPT, outcome="added")
    # A banned forwarder is refused before anything is read, without a new penalty.
    assert judge(BadSignature("x"), banned=True) == policy.GossipDecision(Verdict.REJECT)
    d = judge("added", size=2049)
    assert (d.verdict, type(d.penalty)) == (Verdict.REJECT, TooLarge)
    assert judge(Replayed("old")) == policy.GossipDecision(Verdict.IGNORE, note="replayed")
    assert judge(RateLimited("book full")) == policy.GossipDecision(
        Verdict.IGNORE, note="book_limited"
    )
    d = judge(BadSignature("forged"))
    assert (d.verdict, d.penalty is not None and d.penalty.code) == (
        Verdict.REJECT, ErrorCode.BadSignature
    )


def test_gossip_over_the_token_bucket_is_ignored_with_a_small_penalty() -> None:
    scores = PeerScores(ScoreConfig(rate=1.0, burst=2.0))

    def judge(mono: float) -> policy.GossipDecision:
        return policy.judge_gossip(scores, PEER, 10, lambda: "ok", mono=mono, banned=False)

    assert [judge(0.0).verdict for _ in range(2)] == [Verdict.ACCEPT] * 2
    d = judge(0.0)
    assert d.verdict is Verdict.IGNORE and d.penalty is not None
    assert d.penalty.code is ErrorCode.RateLimited
    assert judge(1.0).verdict is Verdict.ACCEPT  # one token a second refills


def book_with(n: int) -> OfferBook:
    book = OfferBook(chain_id=CHAIN_ID)
    for i in range(n):
        book.ingest(Provider(100 + i).signed(chain_id=CHAIN_ID).encoded, NOW)
    return book


def test_a_sync_pages_through_a_whole_book_and_ends() -> None:
    server_book, mine = book_with(7), OfferBook(chain_id=CHAIN_ID)
    server = policy.SyncServer(CHAIN_ID, rate=20.0)
    pager = policy.SyncPager(PEER, CHAIN_ID, page_size=3, max_pages=100)
    requests = 0
    while (req := pager.request()) is not None:
        requests += 1
        raw = server.serve(PEER, req.encode(), server_book, now=NOW, mono=float(requests))
        for data in pager.page(raw):
            try:
                mine.ingest(data, NOW)
                assert pager.offer(None) is None
            except Replayed as exc:
                assert pager.offer(exc) is None
    assert requests == 3 and pager.done
    assert (pager.stats.pages, pager.stats.added, pager.stats.error) == (3, 7, None)
    assert len(mine) == 7


def test_a_sync_stops_at_max_pages_and_on_failures() -> None:
    server_book = book_with(5)
    server = policy.SyncServer(CHAIN_ID, rate=20.0)
    pager = policy.SyncPager(PEER, CHAIN_ID, page_size=1, max_pages=2)
    pages = 0
    while (req := pager.request()) is not None:
        pager.page(server.serve(PEER, req.encode(), server_book, now=NOW, mono=0.0))
        pages += 1
    assert pages == 2 and pager.stats.pages == 2

    silent = policy.SyncPager(PEER, CHAIN_ID, page_size=1, max_pages=5)
    silent.request()
    timeout = Timeout("no answer")
    assert silent.failed(timeout) is timeout  # silence counts against the server
    assert silent.request() is None and silent.stats.error == "Timeout: no answer"

    refused = policy.SyncPager(PEER, CHAIN_ID, page_size=1, max_pages=5)
    refused.request()
    frame = RateLimited("busy")
    frame.from_peer = True
    assert refused.failed(frame) is None  # its own error frame is its answer
    gone = policy.SyncPager(PEER, CHAIN_ID, page_size=1, max_pages=5)
    gone.request()
    assert gone.failed(NetworkError("reset")) is None

    # A cursor that does not move forward breaks the rules and ends the sync.
    backwards = policy.SyncPager(PEER, CHAIN_ID, page_size=2, max_pages=5)
    req = backwards.request()
    assert req is not None
    backwards._after = b"\xff" * 39  # as if a first page had reached the end of key space
    req = backwards.request()
    assert req is not None
    with pytest.raises(InvalidField):
        backwards.page(sync.SyncPage([b"x"], b"\x00" * 39).encode())
    assert backwards.request() is None and backwards.stats.rejected == 1


def test_sync_offer_outcomes_count_and_penalize() -> None:
    pager = policy.SyncPager(PEER, CHAIN_ID, page_size=1, max_pages=1)
    assert pager.offer(Replayed("dup")) is None
    expired = Expired("late")
    assert pager.offer(expired) is expired
    assert (pager.stats.ignored, pager.stats.rejected) == (1, 1)


def test_the_sync_server_rate_limits_each_requester() -> None:
    server = policy.SyncServer(CHAIN_ID, rate=1.0)
    book = book_with(1)
    req = sync.SyncRequest(CHAIN_ID, None, 10).encode()
    for _ in range(5):  # burst: five times the rate
        server.serve(PEER, req, book, now=NOW, mono=0.0)
    with pytest.raises(RateLimited):
        server.serve(PEER, req, book, now=NOW, mono=0.0)
    server.serve(Provider(2).peer_id, req, book, now=NOW, mono=0.0)  # another peer's budget


def memory_addr(peer: bytes) -> str:
    return "/memory/" + peer_id_to_text(peer)


def test_peer_table_passes_on_only_vouched_addresses_of_connected_peers() -> None:
    a, b, c = (Provider(i).peer_id for i in (11, 12, 13))
    table = policy.PeerTable(rate=1.0)
    rng = random.Random(1)
    foreign = "/ip4/10.9.9.9/tcp/1/p2p/" + peer_id_to_text(a)
    req = pex.PeersRequest((memory_addr(a), foreign), 8).encode()
    first = pex.decode_answer(
        table.serve(a, req, connected={a, b}, host=memory_addr(a), rng=rng, mono=0.0), 8
    )
    assert first.peers == ()  # nobody else announced anything yet
    assert table.announced == {a: (memory_addr(a),)}  # the foreign host is dropped
    req_b = pex.PeersRequest((memory_addr(b),), 8).encode()
    answer = pex.decode_answer(
        table.serve(b, req_b, connected={a, b}, host=memory_addr(b), rng=rng, mono=0.0), 8
    )
    assert answer.peers == (pex.PeerEntry(a, (memory_addr(a),)),)
    # a left: it is no longer passed on.
    answer = pex.decode_answer(
        table.serve(c, pex.PeersRequest((), 8).encode(), connected={b, c}, host=None, rng=rng,
                    mono=0.0), 8,
    )
    assert [e.peer for e in answer.peers] == [b]
    with pytest.raises(RateLimited):
        for _ in range(6):
            table.serve(c, pex.PeersRequest((), 8).encode(), connected={b, c}, host=None,
                        rng=rng, mono=0.0)


def test_to_dial_skips_us_connected_and_banned_and_fills_only_the_room() -> None:
    me, a, b, c, d = (Provider(i).peer_id for i in (20, 21, 22, 23, 24))
    entries = tuple(pex.PeerEntry(p, (memory_addr(p),)) for p in (me, a, b, c, d))
    chosen = policy.to_dial(
        pex.PeersAnswer(entries), me=me, connected={a}, is_banned=lambda p: p == b, target=3
    )
    assert [e.peer for e in chosen] == [c, d]
    assert policy.to_dial(pex.PeersAnswer(entries), me=me, connected={a, b, c}, is_banned=bool,
                          target=3) == []
    wrong = pex.PeerEntry(a, (memory_addr(b), memory_addr(a)))
    assert policy.dial_addrs(wrong) == [memory_addr(a)]
    assert policy.wants_peers(1, 8) and not policy.wants_peers(0, 8)
    assert not policy.wants_peers(8, 8)


def test_codec_names_stay_importable_from_peers() -> None:
    from rigmesh.p2p import peers

    assert peers.PeersRequest is pex.PeersRequest and peers.MAX_PEERS == pex.MAX_PEERS
    assert cbor.decode(peers.PeersRequest((), 1).encode(), max_size=100)["kind"] == "peers_req"
