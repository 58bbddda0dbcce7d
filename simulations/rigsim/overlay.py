"""The gossip overlay: who is connected to whom, and the p2p decisions made on it, through the
node's own pure policies (`rigmesh.p2p.policy`).

- A traced offer publication floods the graph message by message: every copy has its own
  delay (latency + jitter) and may be lost; each receiving peer deduplicates by message id (as
  libp2p does, before validation) and judges the copy with `judge_gossip` and its own scores
  (token bucket, penalties); an ACCEPTed copy is forwarded to its other neighbours. The result
  is each peer's arrival time: the propagation delay distribution.
- Spammers gossip forged offers to their neighbours. Each neighbour's `judge_gossip` refuses
  them with the error the real offer decoder raises for those bytes, `PeerScores.punish`
  counts the penalty, and at the threshold the neighbour bans the spammer (the connection
  drops for `ban_seconds`, dials are refused). A spammer dials its old neighbours again when
  their bans end, and asks for new peers by peer exchange while it has a connection.
- A peer that comes back after being offline dials its neighbours, asks one for more peers
  (`PeerTable.serve` / `to_dial`) when below its degree, and syncs one page at a time from one
  of them (`SyncServer` / `SyncPager`) over the shared book; the join ends with the last page.

A flood is computed at the moment of publication over the graph as it is then (a flood takes
well under a second, the graph changes on the scale of minutes).
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from rigmesh.market.book import OfferBook
from rigmesh.market.offer import decode_offer
from rigmesh.p2p import pex, policy
from rigmesh.p2p.network import Verdict
from rigmesh.p2p.score import PeerScores, ScoreConfig
from rigmesh.wire.errors import BadSignature, Timeout, WireError
from rigmesh.wire.identity import peer_id_to_text

ADDR_PREFIX = "/memory/"


def random_graph(n: int, degree: int, rng: random.Random) -> list[dict[int, None]]:
    """Adjacency of a connected random graph with mean degree about `degree`: a random spanning
    tree, then random extra edges (the same construction as `rigmesh.p2p.scenario`)."""
    adj: list[dict[int, None]] = [{} for _ in range(n)]
    order = list(range(n))
    rng.shuffle(order)
    edges = 0
    for k in range(1, n):
        a, b = order[k], order[rng.randrange(k)]
        adj[a][b] = adj[b][a] = None
        edges += 1
    target = min(n * degree // 2, n * (n - 1) // 2)
    while edges < target:
        a, b = rng.randrange(n), rng.randrange(n)
        if a != b and b not in adj[a]:
            adj[a][b] = adj[b][a] = None
            edges += 1
    return adj


@dataclass
class Flood:
    """One traced publication: per reached peer, the delay from publish to acceptance (ms)."""

    origin: int
    at_ms: int
    delays: list[float] = field(default_factory=list)
    online: int = 0
    messages: int = 0
    lost: int = 0
    duplicates: int = 0


@dataclass
class SpamStats:
    sent: int = 0
    rejected: int = 0
    bans: int = 0
    #: Seconds from a spammer's first message to a neighbour to that neighbour's ban.
    time_to_ban: list[float] = field(default_factory=list)
    exchanges: int = 0


class Overlay:
    def __init__(self, ids: list[bytes], degree: int, rng: random.Random, *,
                 latency_ms: float, jitter_ms: float, loss: float,
                 scores: ScoreConfig | None = None) -> None:
        self.ids = ids
        self.index = {p: i for i, p in enumerate(ids)}
        self.degree = degree
        self.rng = rng
        self.latency_ms, self.jitter_ms, self.loss = latency_ms, jitter_ms, loss
        self.score_config = scores or ScoreConfig()
        self.adj = random_graph(len(ids), degree, rng)
        #: The neighbours a peer had before bans and churn: whom it dials again.
        self.home = [dict(a) for a in self.adj]
        self.online = [True] * len(ids)
        self.relays = [True] * len(ids)  # spammers relay nothing honest
        self._scores: dict[int, PeerScores] = {}
        self._bans: dict[int, dict[int, float]] = {}
        self._tables: dict[int, policy.PeerTable] = {}
        self.floods: list[Flood] = []
        self.spam = SpamStats()
        self._first_spam: dict[tuple[int, int], float] = {}
        self._forged_error: dict[int, WireError] = {}

    # -- state ---------------------------------------------------------------------------

    def scores(self, peer: int) -> PeerScores:
        s = self._scores.get(peer)
        if s is None:
            s = self._scores[peer] = PeerScores(self.score_config)
        return s

    def bans(self, by: int, peer: int, mono: float) -> bool:
        until = self._bans.get(by, {}).get(peer)
        return until is not None and mono < until

    def _ban(self, by: int, peer: int, mono: float) -> None:
        self._bans.setdefault(by, {})[peer] = mono + self.score_config.ban_seconds
        self.adj[by].pop(peer, None)
        self.adj[peer].pop(by, None)
        self.spam.bans += 1

    def delay(self) -> float | None:
        """One message's delay in ms, or None when the link loses it."""
        rng = self.rng
        if self.loss and rng.random() < self.loss:
            return None
        return self.latency_ms + (rng.random() * self.jitter_ms if self.jitter_ms else 0.0)

    def _judge(self, dst: int, src: int, size: int, ingest: Callable[[], object],
               mono: float) -> Verdict:
        scores = self.scores(dst)
        d = policy.judge_gossip(scores, self.ids[src], size, ingest, mono=mono,
                                banned=self.bans(dst, src, mono))
        if d.penalty is not None and scores.punish(self.ids[src], d.penalty.code, mono):
            self._ban(dst, src, mono)
        return d.verdict

    # -- honest gossip -------------------------------------------------------------------

    def flood(self, origin: int, at_ms: int, size: int) -> Flood:
        """Publish one valid offer from `origin` at `at_ms` and follow every copy."""
        f = Flood(origin, at_ms, online=sum(self.online))
        base = at_ms / 1000.0
        accepted = bytearray(len(self.ids))
        accepted[origin] = 1
        heap: list[tuple[float, int, int, int]] = []
        seq = 0
        adj, online, relays, delay = self.adj, self.online, self.relays, self.delay

        def forward(src: int, t: float, came_from: int) -> None:
            """`src` accepted the offer at `t`: a copy to every other online neighbour that
            has not accepted it yet, each with its own delay, or lost."""
            nonlocal seq
            for nxt in adj[src]:
                if nxt == came_from or not online[nxt] or accepted[nxt]:
                    continue
                f.messages += 1
                d = delay()
                if d is None:
                    f.lost += 1
                    continue
                seq += 1
                heapq.heappush(heap, (t + d, seq, nxt, src))

        def valid() -> bool:
            return True  # an honest offer is inserted by everyone it reaches first

        forward(origin, 0.0, -1)
        pop = heapq.heappop
        while heap:
            t, _, dst, src = pop(heap)
            if accepted[dst]:
                f.duplicates += 1  # the seen cache drops it before validation
                continue
            if not online[dst] or src not in adj[dst]:
                continue  # went offline, or banned the sender, while the copy was in flight
            if self._judge(dst, src, size, valid, base + t / 1000.0) is not Verdict.ACCEPT:
                continue
            accepted[dst] = 1
            f.delays.append(t)
            if relays[dst]:
                forward(dst, t, src)
        self.floods.append(f)
        return f

    # -- spam ----------------------------------------------------------------------------

    def forged_error(self, spammer: int, forged: bytes, now: int) -> WireError:
        """What the real decoder says of this spammer's forged offer (decoded once)."""
        err = self._forged_error.get(spammer)
        if err is None:
            try:
                decode_offer(forged, now)
                err = BadSignature("forged offer verified")  # cannot happen: the sig is zero
            except WireError as exc:
                err = exc
            self._forged_error[spammer] = err
        return err

    def spam_round(self, spammer: int, forged: bytes, now: int, mono: float) -> None:
        """The spammer gossips one forged offer to each neighbour."""
        err = self.forged_error(spammer, forged, now)

        def ingest() -> object:
            raise err

        for nb in list(self.adj[spammer]):
            if not self.online[nb]:
                continue
            self.spam.sent += 1
            self._first_spam.setdefault((nb, spammer), mono)
            if self._judge(nb, spammer, len(forged), ingest, mono) is Verdict.REJECT:
                self.spam.rejected += 1
            if self.bans(nb, spammer, mono):
                first = self._first_spam.pop((nb, spammer), mono)
                self.spam.time_to_ban.append(mono - first)

    def redial(self, peer: int, mono: float) -> int:
        """Dial the peer's old neighbours that are online and do not ban it; then, below its
        degree, ask one neighbour for more peers. Returns its connections."""
        for nb in self.home[peer]:
            if self.online[nb] and not self.bans(nb, peer, mono) and not self.bans(
                peer, nb, mono
            ):
                self.adj[peer][nb] = self.adj[nb][peer] = None
        connected = [p for p in self.adj[peer] if self.online[p]]
        if policy.wants_peers(len(connected), self.degree):
            self.exchange(peer, self.rng.choice(sorted(connected)), mono)
        return len(self.adj[peer])

    def addr(self, peer: int) -> str:
        return ADDR_PREFIX + peer_id_to_text(self.ids[peer])

    def exchange(self, asker: int, answerer: int, mono: float) -> int:
        """One `/rigmesh/peers/1` exchange: the answerer's `PeerTable` answers, the asker dials
        what `to_dial` picks (a dial to a peer that bans it is refused). Returns new edges."""
        self.spam.exchanges += 1
        table = self._tables.get(answerer)
        if table is None:
            table = self._tables[answerer] = policy.PeerTable(rate=1.0)
        req = pex.PeersRequest((self.addr(asker),), pex.MAX_PEERS).encode()
        connected = {self.ids[p] for p in self.adj[answerer] if self.online[p]}
        try:
            raw = table.serve(self.ids[asker], req, connected=connected, host=self.addr(asker),
                              rng=self.rng, mono=mono)
        except WireError:
            return 0
        answer = pex.decode_answer(raw, pex.MAX_PEERS)
        mine = {self.ids[p] for p in self.adj[asker]}
        chosen = policy.to_dial(
            answer, me=self.ids[asker], connected=mine, target=self.degree,
            is_banned=lambda p: self.bans(asker, self.index[p], mono),
        )
        added = 0
        for entry in chosen:
            other = self.index[entry.peer]
            if not policy.dial_addrs(entry) or not self.online[other]:
                continue
            if self.bans(other, asker, mono):
                continue  # it refuses our dial
            self.adj[asker][other] = self.adj[other][asker] = None
            added += 1
        return added

    # -- joining -------------------------------------------------------------------------

    def join_sync(self, peer: int, book: OfferBook, chain_id: int, now: int,
                  mono: float) -> float | None:
        """A returning peer syncs the book page by page from one online neighbour (the first of
        its join syncs to end is what the join waits for). Returns how long it took in ms
        (None: nobody to sync from)."""
        candidates = sorted(p for p in self.adj[peer] if self.online[p])
        if not candidates:
            return None
        server_peer = policy.choose(self.rng, candidates, 1)[0]
        server = policy.SyncServer(chain_id, rate=1e9)  # one sync: its rate limit never binds
        pager = policy.SyncPager(self.ids[server_peer], chain_id, page_size=256,
                                 max_pages=1000)
        took = 0.0
        while (req := pager.request()) is not None:
            there, back = self.delay(), self.delay()
            if there is None or back is None:
                # A lost request or answer: the requester's 10 s deadline passes.
                pager.failed(Timeout("sync page"))
                took += 10_000.0
                break
            took += there + back
            raw = server.serve(self.ids[peer], req.encode(), book, now=now, mono=mono)
            for _ in pager.page(raw):
                pager.offer(None)
        return took

