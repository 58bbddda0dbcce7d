"""The p2p layer's decisions, pure: events and a clock value in, verdicts and actions out.

The trio shell (`gossip.py`, `peers.py`) and the simulator (`simulations/rigsim`) both call
these, so a node and a simulated peer decide alike: what a gossip message is worth and what it
costs its forwarder, how a book sync pages and when it ends, whom peer exchange passes on and
whom it dials, when periodic duties first run. Nothing here does I/O or reads a clock: `mono` is
the monotonic clock scores decay on (``trio.current_time()`` in a node, virtual time in the
simulator) and `now` the Unix seconds offers are checked against. Applying a penalty (and the
ban it may earn) is `PeerScores.punish`, also pure; the shell's `Penalizer` then enforces bans.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from rigmesh.market.offer import MAX_OFFER_SIZE, SignedOffer
from rigmesh.p2p import sync
from rigmesh.p2p.network import NetworkError, Verdict, host_of
from rigmesh.p2p.pex import (
    MAX_ADDRS,
    PeerEntry,
    PeersAnswer,
    decode_request,
)
from rigmesh.p2p.score import PeerScores, TokenBucket
from rigmesh.wire import identity
from rigmesh.wire.errors import RateLimited, Replayed, TooLarge, WireError

T = TypeVar("T")
P = TypeVar("P")

# --- periodic duties ----------------------------------------------------------------------------


def first_run(rng: random.Random, interval: float) -> float:
    """Delay before a periodic duty (republish, anti-entropy, peer exchange) first runs: a random
    phase, so a thousand nodes started together do not act in lockstep."""
    return rng.random() * interval


def choose(rng: random.Random, peers: Sequence[P], k: int) -> list[P]:
    """`k` distinct peers at random (fewer if there are fewer), for join syncs and exchanges."""
    return rng.sample(list(peers), min(k, len(peers)))


# --- gossip validation --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GossipDecision(Generic[T]):
    """What one gossip message is worth (spec/p2p.md 2.3)."""

    verdict: Verdict
    #: Count this against the forwarder (`PeerScores.punish`); None: no fault of its.
    penalty: WireError | None = None
    #: What `ingest` returned, when accepted.
    outcome: T | None = None
    #: A counter to bump for a no-fault IGNORE: "replayed" or "book_limited".
    note: str | None = None


def judge_gossip(
    scores: PeerScores,
    peer: bytes,
    size: int,
    ingest: Callable[[], T],
    *,
    mono: float,
    banned: bool,
) -> GossipDecision[T]:
    """Validate one gossip message (`size` bytes) forwarded by `peer`, in the spec's order:
    a banned forwarder is rejected; one over its token bucket is ignored with a small penalty;
    an oversize message is rejected; then `ingest` (the book's decode, checks, signature and
    insert; the simulator passes its model of them) decides: inserted -> ACCEPT, `Replayed`
    -> IGNORE without penalty (duplicates and races are normal in gossip), `RateLimited` from
    our own book (full, or the origin over its listings) -> IGNORE, not the forwarder's fault;
    any other refusal -> REJECT with that error as the penalty."""
    if banned:
        return GossipDecision(Verdict.REJECT)
    if not scores.allow(peer, mono):
        return GossipDecision(Verdict.IGNORE, penalty=RateLimited("gossip rate"))
    try:
        if size > MAX_OFFER_SIZE:
            raise TooLarge(f"{size} bytes")
        outcome = ingest()
    except Replayed:
        return GossipDecision(Verdict.IGNORE, note="replayed")
    except RateLimited:
        return GossipDecision(Verdict.IGNORE, note="book_limited")
    except WireError as exc:
        return GossipDecision(Verdict.REJECT, penalty=exc)
    return GossipDecision(Verdict.ACCEPT, outcome=outcome)


# --- book sync ----------------------------------------------------------------------------------


class PageSource(Protocol):
    """What a sync server pages through (`OfferBook.page`)."""

    def page(self, after: bytes | None, limit: int) -> tuple[list[SignedOffer], bytes | None]:
        ...


class SyncServer:
    """Serves `/rigmesh/sync/1` pages: a token bucket per requester (`rate` pages a second,
    burst five times that), the request's checks, one page of live offers."""

    def __init__(self, chain_id: int, rate: float) -> None:
        self.chain_id = chain_id
        self.rate = rate
        self._buckets: dict[bytes, TokenBucket] = {}

    def serve(self, peer: bytes, data: bytes, book: PageSource, *, now: int, mono: float) -> bytes:
        """The page answering `data`. Raises the `WireError` to answer with an error frame and
        to count against the requester."""
        bucket = self._buckets.get(peer)
        if bucket is None:
            bucket = self._buckets[peer] = TokenBucket(self.rate, 5 * self.rate)
        if not bucket.take(mono):
            raise RateLimited("sync pages")
        req = sync.decode_request(data, self.chain_id)
        offers, cursor = book.page(req.after, req.limit)  # InvalidField: a bad cursor
        # Expired offers the book still holds would only cost the requester a penalty check.
        live = [o.encoded for o in offers if o.offer.expires > now]
        return sync.SyncPage(offers=live, next=cursor).encode()


@dataclass
class SyncStats:
    peer: bytes
    pages: int = 0
    added: int = 0
    ignored: int = 0
    rejected: int = 0
    error: str | None = None


class SyncPager:
    """One sync from one peer, as the requester runs it: which page to ask for next, what an
    answer must look like, when the sync ends (the last page, `max_pages`, a failure), and which
    failures count against the peer. The caller sends `request()` until it returns None and
    reports what happened to each request and offer."""

    def __init__(self, peer: bytes, chain_id: int, *, page_size: int, max_pages: int) -> None:
        self.stats = SyncStats(peer)
        self.chain_id = chain_id
        self.page_size = page_size
        self._pages_left = max_pages
        self._after: bytes | None = None
        self._req: sync.SyncRequest | None = None
        self.done = False

    def request(self) -> sync.SyncRequest | None:
        """The next page to ask for; None once the sync has ended."""
        if self.done or self._pages_left <= 0:
            self.done = True
            return None
        self._pages_left -= 1
        self._req = sync.SyncRequest(self.chain_id, self._after, self.page_size)
        return self._req

    def failed(self, exc: WireError | NetworkError) -> WireError | None:
        """The request got no page. Ends the sync; returns the penalty for the peer: its silence
        past our deadline or an answer over the limit, never an error frame it sent (its answer:
        it refused, it is busy) nor a transport failure."""
        self.done = True
        if isinstance(exc, NetworkError):
            self.stats.error = str(exc)
            return None
        self.stats.error = f"{exc.code.name}: {exc.detail}"
        if exc.from_peer:
            return None
        self.stats.rejected += 1
        return exc

    def page(self, raw: bytes) -> list[bytes]:
        """The offers of the answer to the last request, which must follow the rules (at most
        the page size, each 1..2048 bytes, a cursor that moves forward). A `WireError` counts
        against the peer and ends the sync."""
        assert self._req is not None, "page() answers a request()"
        try:
            page = sync.decode_page(raw, self._req)
        except WireError as exc:
            self.stats.rejected += 1
            self.abort(exc)
            raise
        self.stats.pages += 1
        if page.next is None:
            self.done = True
        self._after = page.next
        return page.offers

    def offer(self, error: WireError | None) -> WireError | None:
        """How ingesting one offer of the page went (None: inserted). Returns the penalty for
        the peer: none for `Replayed` (a race between paths), the error itself otherwise (an
        `Expired` one costs little: an offer may expire in flight)."""
        if error is None:
            self.stats.added += 1
            return None
        if isinstance(error, Replayed):
            self.stats.ignored += 1
            return None
        self.stats.rejected += 1
        return error

    def abort(self, exc: WireError) -> None:
        """End the sync (the peer is banned, or broke the rules)."""
        self.done = True
        self.stats.error = f"{exc.code.name}: {exc.detail}"


# --- peer exchange ------------------------------------------------------------------------------


def vouched(addrs: Sequence[str], host: str | None) -> tuple[str, ...]:
    """The asker's announced addresses that its own connection vouches for: those on the host
    the connection comes from, deduplicated, at most `MAX_ADDRS`. An address on another host
    would have later askers dial whatever the asker named."""
    return tuple(dict.fromkeys(a for a in addrs if host_of(a) == host))[:MAX_ADDRS]


class PeerTable:
    """The answering side of `/rigmesh/peers/1`: a request budget per asker (`rate` a second,
    burst 5), and the addresses each connected asker announced, passed on to later askers while
    it stays connected."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.announced: dict[bytes, tuple[str, ...]] = {}
        self._buckets: dict[bytes, TokenBucket] = {}

    def serve(
        self,
        asker: bytes,
        data: bytes,
        *,
        connected: Collection[bytes],
        host: str | None,
        rng: random.Random,
        mono: float,
    ) -> bytes:
        """The answer to `asker`'s request `data`: a random choice of our `connected` peers with
        recorded addresses, never the asker. Raises the `WireError` to answer with an error
        frame and to count against the asker. `host`: `host_of` the asker's connection."""
        bucket = self._buckets.get(asker)
        if bucket is None:
            bucket = self._buckets[asker] = TokenBucket(self.rate, 5.0)
        if not bucket.take(mono):
            raise RateLimited("peer exchange")
        req = decode_request(data)
        # Forget peers that left, so the table stays as small as our connection list.
        for gone in [p for p in self.announced if p not in connected]:
            del self.announced[gone]
        for gone in [p for p in self._buckets if p not in connected and p != asker]:
            del self._buckets[gone]
        addrs = vouched(req.addrs, host)
        if addrs:
            self.announced[asker] = addrs
        else:
            self.announced.pop(asker, None)
        known = sorted(p for p in self.announced if p != asker)
        chosen = choose(rng, known, req.limit)
        return PeersAnswer(tuple(PeerEntry(p, self.announced[p]) for p in chosen)).encode()


def wants_peers(connected: int, target: int) -> bool:
    """Whether to ask for more peers: below `target`, and someone to ask."""
    return 0 < connected < target


def to_dial(
    answer: PeersAnswer,
    *,
    me: bytes,
    connected: Collection[bytes],
    is_banned: Callable[[bytes], bool],
    target: int,
) -> list[PeerEntry]:
    """The entries of an answer worth dialling: not us, not connected, not banned, and no more
    than the room left below `target`."""
    fresh = [
        e for e in answer.peers
        if e.peer != me and e.peer not in connected and not is_banned(e.peer)
    ]
    return fresh[: max(0, target - len(connected))]


def dial_addrs(entry: PeerEntry) -> list[str]:
    """The entry's addresses that name its own PeerId: the dial proves it, so a forwarded
    address can be wrong, never another identity."""
    text = identity.peer_id_to_text(entry.peer)
    return [a for a in entry.addrs if a.endswith(text)]
