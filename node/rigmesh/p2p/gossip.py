"""Offer gossip: one topic per chain, validation before forwarding, scoring, republish, book sync.

Written against `rigmesh.p2p.network.Network` only, so it runs unchanged on libp2p and on the
in-memory network. The flow of one gossiped offer (spec/p2p.md):

1. the network hands us (forwarder, bytes) for a message id (the offer's CID) it has not seen;
2. banned forwarder -> REJECT; over its token bucket -> IGNORE and a small penalty;
3. ``book.ingest`` decodes, checks size, canonical form, fields, time, chain and seq (cheap checks
   first), verifies the Ed25519 signature and inserts: success -> ACCEPT (forwarded);
   Replayed -> IGNORE without penalty (duplicates and races are normal in gossip);
   any other WireError -> REJECT and the code's penalty against the forwarder;
4. a forwarder whose decayed penalty crosses the threshold is banned (disconnected and refused).

Providers republish their live offers every `republish_interval` with a bumped seq (a new CID,
so the network does not deduplicate it away). A joining node syncs its book from a few peers
over ``/rigmesh/sync/1``; every node syncs from one random peer every `anti_entropy_interval`.

The decisions (the verdict on a message and its penalty, sync paging and serving, the random
phase of periodic duties) are `rigmesh.p2p.policy`'s, which the simulator calls too; this class
performs them over a `Network` under trio.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from rigmesh.market.offer import Offer, SignedOffer
from rigmesh.p2p import policy, sync
from rigmesh.p2p.network import SYNC_PROTOCOL, Network, NetworkError, Verdict, offer_topic
from rigmesh.p2p.policy import SyncStats
from rigmesh.p2p.score import PeerScores, Penalizer, ScoreConfig
from rigmesh.wire.errors import WireError
from rigmesh.wire.identity import PeerKey, peer_id_to_text

if TYPE_CHECKING:
    from rigmesh.market.book import OfferBook

#: Unix seconds now. A real node passes ``lambda: int(time.time())``; the memory network derives it
#: from trio's virtual clock.
Clock = Callable[[], int]
EventSink = Callable[[dict[str, Any]], None]


@dataclass
class GossipConfig:
    chain_id: int
    republish_interval: float = 300.0
    """Providers re-sign and republish live offers this often (seconds)."""
    anti_entropy_interval: float = 30.0
    join_sync_peers: int = 3
    """A joining node syncs from this many peers at once ..."""
    join_sync_enough: int = 1
    """... and goes on once this many of those syncs ended well."""
    sync_page: int = sync.MAX_PAGE
    sync_max_pages: int = 1000
    """Bounds one sync: at most this many pages (256 000 offers) from one peer."""
    sync_timeout: float = 10.0
    sync_rate: float = 20.0
    """Sync pages a second we serve one peer, sustained (burst: 5x)."""
    expire_interval: float = 10.0
    scores: ScoreConfig = field(default_factory=ScoreConfig)


class OfferGossip:
    def __init__(
        self,
        network: Network,
        book: OfferBook,
        config: GossipConfig,
        *,
        clock: Clock,
        rng: random.Random | None = None,
        signer: PeerKey | None = None,
        on_event: EventSink | None = None,
    ) -> None:
        self.network = network
        self.book = book
        self.config = config
        self.topic = offer_topic(config.chain_id)
        self.clock = clock
        self.rng = rng or random.Random()
        self.signer = signer
        self.scores = PeerScores(config.scores)
        #: Counts a rejected message against its sender (also used by peer exchange).
        self.penalize = Penalizer(network, self.scores, self._emit)
        self.sync_server = policy.SyncServer(config.chain_id, config.sync_rate)
        self._own: dict[tuple[bytes, int], Offer] = {}
        self._on_event = on_event
        #: Where a provider's seqs come from (listing -> the next seq, durably): its node's
        #: ledger, so a restarted provider never reuses one. None: the last one plus one.
        self.next_seq: Callable[[int], int] | None = None
        #: Called with each of our own offers once published (first time and republished).
        self.on_own_offer: Callable[[SignedOffer], None] | None = None
        self.counters: dict[str, int] = {}
        #: `run`'s nursery while it runs (join's remaining syncs go on there).
        self._nursery: trio.Nursery | None = None

    # --- events ---------------------------------------------------------------------------
    def _emit(self, event: str, **kw: Any) -> None:
        self.counters[event] = self.counters.get(event, 0) + 1
        if self._on_event is not None:
            self._on_event({"event": event, **kw})

    # --- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        await self.network.subscribe(self.topic, self._on_gossip)
        self.network.serve(SYNC_PROTOCOL, self._serve_sync, max_request=sync.MAX_REQ_SIZE)

    async def run(self) -> None:
        """The periodic duties; run in the node's nursery after `start`."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._every, self.config.republish_interval, self.republish)
            nursery.start_soon(self._every, self.config.anti_entropy_interval, self.anti_entropy)
            nursery.start_soon(self._every, self.config.expire_interval, self._expire)
            self._nursery = nursery
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None

    async def _every(self, interval: float, fn: Callable[[], Any]) -> None:
        await trio.sleep(policy.first_run(self.rng, interval))
        while True:
            await fn()
            await trio.sleep(interval)

    async def _expire(self) -> None:
        for gone in self.book.expire(self.clock()):
            self._emit("expired", cid=gone.cid)

    async def join(self, bootstrap: list[str]) -> list[bytes]:
        """Dial the bootstrap peers concurrently (a libp2p dial costs >= 250 ms), then sync the
        book from `join_sync_peers` of them at once, returning as soon as `join_sync_enough`
        of those syncs ended well (or all ended). Returns the peers reached.

        While `run` is running, the syncs still under way go on in its nursery, so a silent
        peer is still scored when its deadline passes, without holding up the join."""
        reached: list[bytes] = []

        async def dial(addr: str) -> None:
            try:
                reached.append(await self.network.connect(addr))
            except (NetworkError, WireError, OSError) as exc:
                self._emit("dial_failed", addr=addr, error=str(exc))

        async with trio.open_nursery() as nursery:
            for addr in bootstrap:
                nursery.start_soon(dial, addr)
        peers = sorted(set(reached) | set(self.network.peers()))
        chosen = policy.choose(self.rng, peers, self.config.join_sync_peers)
        enough = min(self.config.join_sync_enough, len(chosen))
        done = trio.Event()
        good = ended = 0

        async def one(peer: bytes) -> None:
            nonlocal good, ended
            stats = await self.sync_from(peer)
            ended += 1
            good += stats.error is None
            if good >= enough or ended == len(chosen):
                done.set()

        if not chosen:
            return sorted(set(reached))
        if self._nursery is not None:
            for peer in chosen:
                self._nursery.start_soon(one, peer)
            await done.wait()
        else:  # not running: nobody would score a straggler, so wait for every sync
            async with trio.open_nursery() as nursery:
                for peer in chosen:
                    nursery.start_soon(one, peer)
        return sorted(set(reached))

    # --- publishing -----------------------------------------------------------------------
    async def publish(self, data: bytes) -> SignedOffer:
        """Validate `data` exactly as a receiver would, insert it into our book, gossip it.

        Raises the WireError a receiver would reject it with: libp2p validators also run on our
        own publishes and a failing one drops the message silently, so we check first.
        """
        _kind, signed = self.book.ingest(data, self.clock())
        await self.network.publish(self.topic, data)
        self._emit("published", cid=signed.cid, seq=signed.offer.seq)
        return signed

    async def publish_offer(self, offer: Offer) -> SignedOffer:
        """Sign one of our own offers, publish it, and keep republishing it while it lives."""
        if self.signer is None:
            raise RuntimeError("this node has no signing key")
        signed = offer.sign(self.signer)
        result = await self.publish(signed.encoded)
        if self.on_own_offer is not None:
            self.on_own_offer(result)
        if offer.capacity:
            self._own[offer.key] = offer
        else:
            self._own.pop(offer.key, None)
        return result

    async def republish(self) -> None:
        now = self.clock()
        for key, offer in list(self._own.items()):
            ttl = offer.expires - offer.issued
            seq = offer.seq + 1 if self.next_seq is None else self.next_seq(offer.listing)
            fresh = offer._replace(seq=seq, issued=now, expires=now + ttl)
            self._own[key] = fresh
            assert self.signer is not None  # _own is only filled by publish_offer
            try:
                published = await self.publish(fresh.sign(self.signer).encoded)
                if self.on_own_offer is not None:
                    self.on_own_offer(published)
            except WireError as exc:  # our own offer is invalid: a bug or a bad config
                self._emit("republish_failed", error=str(exc))
                del self._own[key]

    # --- receiving ------------------------------------------------------------------------
    async def _on_gossip(self, peer: bytes, data: bytes) -> Verdict:
        now = self.clock()
        mono = trio.current_time()
        d = policy.judge_gossip(
            self.scores, peer, len(data), lambda: self.book.ingest(data, now), mono=mono,
            banned=self.network.is_banned(peer),
        )
        if d.penalty is not None:
            await self.penalize(peer, d.penalty, mono)
        if d.note is not None:
            self.counters[d.note] = self.counters.get(d.note, 0) + 1
        if d.outcome is not None:
            kind, signed = d.outcome
            self._emit("offer", cid=signed.cid, peer=peer_id_to_text(peer), result=kind.name,
                       seq=signed.offer.seq)
        return d.verdict

    # --- sync -----------------------------------------------------------------------------
    async def _serve_sync(self, peer: bytes, data: bytes) -> bytes:
        mono = trio.current_time()
        try:
            return self.sync_server.serve(peer, data, self.book, now=self.clock(), mono=mono)
        except WireError as exc:
            await self.penalize(peer, exc, mono)
            raise

    async def sync_from(self, peer: bytes) -> SyncStats:
        """Page through `peer`'s book and ingest every offer; bounded by `sync_max_pages`.

        An error frame from the peer (it refused, it is overloaded) ends the sync without a
        penalty; silence past `sync_timeout`, a page we cannot decode, or invalid offers in it,
        count against the peer (`policy.SyncPager` decides which).
        """
        pager = policy.SyncPager(
            peer, self.config.chain_id, page_size=self.config.sync_page,
            max_pages=self.config.sync_max_pages,
        )
        while (req := pager.request()) is not None:
            try:
                raw = await self.network.request(
                    peer, SYNC_PROTOCOL, req.encode(),
                    timeout=self.config.sync_timeout, max_response=sync.MAX_PAGE_SIZE,
                )
            except (WireError, NetworkError) as exc:
                penalty = pager.failed(exc)
                if penalty is not None:
                    await self.penalize(peer, penalty, trio.current_time())
                break
            mono = trio.current_time()
            try:
                offers = pager.page(raw)
            except WireError as exc:
                await self.penalize(peer, exc, mono)
                break
            now = self.clock()
            for data in offers:
                try:
                    self.book.ingest(data, now)
                    penalty = pager.offer(None)
                except WireError as exc:
                    penalty = pager.offer(exc)
                if penalty is not None and await self.penalize(peer, penalty, mono):
                    pager.abort(penalty)
                    break
        stats = pager.stats
        self._emit("synced", peer=peer_id_to_text(peer), pages=stats.pages, added=stats.added,
                   ignored=stats.ignored, rejected=stats.rejected, error=stats.error)
        return stats

    async def anti_entropy(self) -> None:
        peers = self.network.peers()
        if peers:
            await self.sync_from(self.rng.choice(peers))
