"""The offer book: every live offer a node knows, indexed for the renter's queries.

Rules (the same for gossip, sync and a restart from disk):

- An offer is keyed by (provider, listing). A strictly higher ``seq`` replaces the held offer;
  anything else is `Replayed`. A withdrawn or expired key keeps its last ``seq`` as a *floor*
  until ``issued + MAX_OFFER_TTL`` of that offer: an older offer of an honest provider was issued
  no later, so it is dead by then, and until then a replayed old offer cannot resurrect the key.
- ``capacity == 0`` withdraws the listing: it is removed and not stored (only its floor stays).
- Past ``expires`` an offer is gone: `expire` removes it (a heap keyed by expiry, amortized
  O(log n)), and `query` never returns one even before `expire` ran.
- Bounded: at most ``max_offers`` live offers and ``max_listings_per_provider`` per provider;
  past either a new key is refused with `RateLimited` (a replacement of a held key always
  passes). Floors are bounded by ``2 * max_offers + 1024`` (the soonest to lapse go first).
- `ingest` runs every cheap check (size, canonical CBOR, fields, time, chain and escrow, seq,
  limits) before
  the Ed25519 verify, so a flood of replays or of offers we would refuse costs no signature check.

Index (why a query over 100,000 offers looks at a few dozen):

- Offers are bucketed by (normalized GPU model, GPU count, token), twice: once over all
  countries and once per country, so a country filter picks its own buckets. Distinct models are
  few, so the case-insensitive substring match of ``gpu_model`` runs over the bucket names, not
  the offers; token and GPU count select buckets exactly, and each bucket remembers the largest
  per-GPU VRAM it holds, to skip buckets that cannot satisfy a VRAM filter. The GPU count is in
  the key because price grows with it: an 8-GPU query must not walk past every cheap single GPU.
- Each bucket keeps one sorted index per ranking (market/query.py: price, price per VRAM GiB,
  reputation score) of entries ``(primary, price, provider, listing, gen)``. A query merges the
  chosen index of the selected buckets with `heapq.merge`, applies the remaining filters
  (`OfferQuery.matches`, the same function the reference scan uses) and stops after ``limit``
  matches; sorted by price with a price ceiling it also stops at the first entry above it.
  With a price ceiling and another ranking, when few offers lie under the ceiling it reads just
  those from the price index and sorts the matches.
- Inserting is cheap: new entries go to a per-bucket pending list and are merged into the sorted
  index when a query next reads it. Replaced and removed offers leave stale entries behind,
  recognized by ``gen`` (each indexing of a live offer gets a fresh number) and dropped when a
  bucket holds more than twice as many entries as live offers (rebuilt from the live ones).
- Reputation changes re-index that provider's offers (at most ``max_listings_per_provider``):
  the book subscribes to its `Reputation` table.
- Not indexed: ``min_reputation``, ``interruptible``, zone, CPU and RAM filters are checked per
  entry on the walk, so a query that only a few percent of a bucket pass walks correspondingly
  further (the benchmark's slowest queries are ``min_reputation=600`` ones, a few ms).

`len(book)` and iteration count held offers, including expired ones `expire` has not swept yet.
"""

from __future__ import annotations

import enum
import heapq
import itertools
from collections.abc import Callable, Iterable, Iterator

from sortedcontainers import SortedList

from rigmesh.escrow.contract import default_escrow_address
from rigmesh.market.offer import (
    MAX_OFFER_TTL,
    BindingCache,
    Offer,
    SignedOffer,
    check_domain,
    check_time,
    read_offer,
    verify_offer,
)
from rigmesh.market.query import (
    MAX_LIMIT,
    OfferQuery,
    Sort,
    normalize_model,
    price_per_vram_key,
    score_key,
)
from rigmesh.market.reputation import Reputation
from rigmesh.wire import identity
from rigmesh.wire.errors import (
    InvalidField,
    RateLimited,
    Replayed,
)

#: Index slot of each ranking in a bucket.
_SORT_SLOT = {Sort.PRICE: 0, Sort.PRICE_PER_VRAM_GIB: 1, Sort.SCORE: 2}
#: A bucket's index is rebuilt once stale entries exceed live ones by this much (amortizes).
_COMPACT_SLACK = 64
#: The expiry and floor heaps are rebuilt past twice their live size plus this.
_HEAP_SLACK = 1024
#: Length of a paging cursor: provider PeerId bytes + one listing byte.
CURSOR_SIZE = identity.PEER_ID_SIZE + 1


class Ingest(enum.Enum):
    ADDED = "added"
    REPLACED = "replaced"
    WITHDRAWN = "withdrawn"  # capacity 0 removed the listing (or pre-empted one we never held)


class Change(enum.Enum):
    """What `OfferBook.add_listener` callbacks hear (the store persists from these)."""

    ADDED = "added"
    REPLACED = "replaced"
    WITHDRAWN = "withdrawn"  # carries the withdrawal offer itself
    EXPIRED = "expired"  # carries the offer that expired


ChangeListener = Callable[[Change, SignedOffer], None]
_Key = tuple[bytes, int]
#: (normalized GPU model or None for CPU-only, GPU count, token)
_BucketKey = tuple[str | None, int, bytes]
_Partition = dict[_BucketKey, "_Bucket"]


class _Bucket:
    __slots__ = ("consumed", "entries", "indexes", "keys", "max_vram", "pending")

    def __init__(self) -> None:
        self.keys: set[_Key] = set()
        self.indexes: list[SortedList] = [SortedList(), SortedList(), SortedList()]
        #: (provider, listing, gen) indexed since; each ranking's index takes its entries from
        #: here when a query first reads it (``consumed``: how far each one has read).
        self.pending: list[tuple[bytes, int, int]] = []
        self.consumed = [0, 0, 0]
        #: Entries per ranking (indexed + pending, live + stale), bounded by rebuilding.
        self.entries = 0
        #: The largest per-GPU VRAM held since the last rebuild (an upper bound for pruning).
        self.max_vram = 0


class OfferBook:
    def __init__(
        self,
        *,
        chain_id: int | None = None,
        escrows: Iterable[bytes] | None = None,
        max_offers: int = 200_000,
        max_listings_per_provider: int = 16,
        bindings: BindingCache | None = None,
        reputation: Reputation | None = None,
    ) -> None:
        if max_offers < 1 or max_listings_per_provider < 1:
            raise ValueError("limits must be positive")
        self.chain_id = chain_id
        #: The escrow contracts this book's offers may name (else WrongChain); by default the
        #: canonical CREATE2 deployment.
        self.escrows = frozenset(escrows if escrows is not None else (default_escrow_address(),))
        self.max_offers = max_offers
        self.max_listings_per_provider = max_listings_per_provider
        self.bindings = bindings if bindings is not None else BindingCache()
        self.reputation = reputation if reputation is not None else Reputation()
        self.reputation.subscribe(self._on_reputation)
        # A held offer is its SignedOffer in `_live` and the `gen` its current index entries carry
        # in `_gens`: no per-offer record object, since the cyclic GC walks every long-lived
        # one at each collection while the book grows (its buckets follow from the offer).
        self._live: dict[_Key, SignedOffer] = {}
        self._gens: dict[_Key, int] = {}
        self._by_provider: dict[bytes, set[int]] = {}
        # Every live offer sits in two buckets: one of the country-blind partition, for
        # queries without a country, and one of its country's partition.
        self._coarse: _Partition = {}
        self._by_country: dict[str, _Partition] = {}
        self._gen = itertools.count()
        self._expiry: list[tuple[int, bytes, int, int]] = []  # (expires, provider, listing, seq)
        self._floors: dict[_Key, tuple[int, int]] = {}  # key -> (seq, until)
        self._floor_heap: list[tuple[int, bytes, int, int]] = []  # (until, provider, listing, seq)
        self._paged: set[_Key] = set()  # keys present in _page or _page_pending (maybe stale)
        self._page: SortedList = SortedList()
        self._page_pending: list[_Key] = []
        self._listeners: list[ChangeListener] = []

    # -- ingest ------------------------------------------------------------------------------

    def ingest(self, data: bytes, now: int) -> tuple[Ingest, SignedOffer]:
        """Decode, check, verify and insert one offer received from the network (or the disk).

        The steps are those of `offer.decode_offer`, with the book's own checks (chain, seq,
        limits) between the cheap checks and the signature checks."""
        offer, sig, signing_input = read_offer(data, now)
        held = self._admit(offer, now)
        verify_offer(offer, sig, signing_input, self.bindings)
        signed = SignedOffer(offer, sig, bytes(data))
        return self._apply(signed, held, now), signed

    def insert(self, signed: SignedOffer, now: int) -> Ingest:
        """Insert an offer whose signatures were already verified (our own, or `decode_offer`'s
        result). Time, chain, seq and limits are checked here as in `ingest`."""
        check_time(signed.offer, now)
        return self._apply(signed, self._admit(signed.offer, now), now)

    def _admit(self, offer: Offer, now: int) -> SignedOffer | None:
        """The book's cheap checks; raises without changing anything (except sweeping expired
        offers to make room). Returns the held offer of the offer's key, if any."""
        check_domain(offer, self.chain_id, self.escrows)
        key = (offer.provider, offer.listing)
        current = self._live.get(key)
        held = None
        if current is not None:
            h = current.offer
            # An expired offer not swept yet guards its key exactly as its floor would.
            if h.issued + MAX_OFFER_TTL > now:
                held = h.seq
        else:
            floor = self._floors.get(key)
            if floor is not None and floor[1] > now:
                held = floor[0]
        if held is not None and offer.seq <= held:
            raise Replayed(f"seq {offer.seq} is not newer than {held}")
        if offer.capacity == 0 or (current is not None and current.offer.expires > now):
            return current  # a withdrawal or a replacement never grows the book
        listings = self._by_provider.get(offer.provider)
        taken = len(listings) if listings else 0
        if current is not None:
            taken -= 1  # the expired offer of this key goes when this one comes
        if taken >= self.max_listings_per_provider:
            self._expire_provider(offer.provider, now)
            listings = self._by_provider.get(offer.provider)
            taken = len(listings) if listings else 0
            if taken >= self.max_listings_per_provider:
                raise RateLimited(f"provider already has {taken} listings")
            current = self._live.get(key)
        if len(self._live) - (current is not None) >= self.max_offers:
            self.expire(now)
            current = self._live.get(key)
            if len(self._live) - (current is not None) >= self.max_offers:
                raise RateLimited(f"offer book full ({self.max_offers} offers)")
        return current

    def _apply(self, signed: SignedOffer, held: SignedOffer | None, now: int) -> Ingest:
        o = signed.offer
        key = (o.provider, o.listing)
        if held is not None and held.offer.expires <= now:
            self._drop_expired(key, held, now)
            held = None
        if o.capacity == 0:
            if held is not None:
                self._unlink(key, held)
            self._set_floor(key, o.seq, o.issued + MAX_OFFER_TTL, now)
            self._emit(Change.WITHDRAWN, signed)
            return Ingest.WITHDRAWN
        if self._floors:
            self._floors.pop(key, None)  # the live offer's seq guards the key from now on
        bk = self._bucket_key(o)
        self._live[key] = signed
        if held is None:
            listings = self._by_provider.get(o.provider)
            if listings is None:
                self._by_provider[o.provider] = {o.listing}
            else:
                listings.add(o.listing)
            if key not in self._paged:
                self._paged.add(key)
                self._page_pending.append(key)
            result, change = Ingest.ADDED, Change.ADDED
        else:
            old_bk = self._bucket_key(held.offer)
            old_country = held.offer.region.country
            if old_bk != bk or old_country != o.region.country:
                self._leave_buckets(key, old_bk, old_country)
            result, change = Ingest.REPLACED, Change.REPLACED
        self._index(key, o, bk)
        heapq.heappush(self._expiry, (o.expires, o.provider, o.listing, o.seq))
        if len(self._expiry) > 2 * len(self._live) + _HEAP_SLACK:
            self._expiry = [
                (s.offer.expires, k[0], k[1], s.offer.seq) for k, s in self._live.items()
            ]
            heapq.heapify(self._expiry)
        if self._listeners:
            self._emit(change, signed)
        return result

    # -- index maintenance ---------------------------------------------------------------------

    def _bucket_key(self, o: Offer) -> _BucketKey:
        gpu = o.gpu
        if gpu is None:
            return (None, 0, o.token)
        return (normalize_model(gpu.model), gpu.count, o.token)

    def _index(self, key: _Key, o: Offer, bk: _BucketKey) -> None:
        """Give the held offer `o` (bucket key `bk`) a fresh gen and queue it in its two buckets
        (`_sorted_index` sorts it in)."""
        gen = self._gens[key] = next(self._gen)
        entry = (key[0], key[1], gen)
        vram = o.gpu.vram_mib if o.gpu is not None else 0
        country = o.region.country
        by_country = self._by_country.get(country)
        if by_country is None:
            by_country = self._by_country[country] = {}
        for part in (self._coarse, by_country):
            bucket = part.get(bk)
            if bucket is None:
                bucket = part[bk] = _Bucket()
            bucket.keys.add(key)
            bucket.pending.append(entry)
            bucket.entries += 1
            if vram > bucket.max_vram:
                bucket.max_vram = vram
            if bucket.entries > 2 * len(bucket.keys) + _COMPACT_SLACK:
                part[bk] = self._compacted(bucket)

    def _compacted(self, bucket: _Bucket) -> _Bucket:
        """The bucket started over from its live offers, when stale entries got too many (their
        gens stay, so their entries in the other partition stay valid)."""
        fresh = _Bucket()
        live = self._live
        gens = self._gens
        for k in bucket.keys:
            fresh.pending.append((k[0], k[1], gens[k]))
            g = live[k].offer.gpu
            if g is not None and g.vram_mib > fresh.max_vram:
                fresh.max_vram = g.vram_mib
        fresh.keys = bucket.keys
        fresh.entries = len(fresh.keys)
        return fresh

    def _sorted_index(self, bucket: _Bucket, slot: int) -> SortedList:
        """The bucket's index for one ranking, with the entries queued since its last read.

        Entries are built here rather than at insert, so an insert costs one append and a
        ranking nobody asks for costs nothing; a queued offer already replaced is skipped."""
        pending = bucket.pending
        start = bucket.consumed[slot]
        if start == len(pending):
            return bucket.indexes[slot]
        live = self._live
        gens = self._gens
        fresh = []
        for provider, listing, gen in itertools.islice(pending, start, None):
            key = (provider, listing)
            if gens.get(key) != gen:
                continue
            o = live[key].offer
            price = o.price_per_second
            if slot == 0:
                primary = price
            elif slot == 1:
                primary = price_per_vram_key(o)
            else:
                primary = score_key(price, self.reputation.score(provider))
            fresh.append((primary, price, provider, listing, gen))
        index = bucket.indexes[slot]
        index.update(fresh)
        bucket.consumed[slot] = len(pending)
        if min(bucket.consumed) == len(pending):
            bucket.pending = []
            bucket.consumed = [0, 0, 0]
        return index

    def _leave_buckets(self, key: _Key, bk: _BucketKey, country: str) -> None:
        for part in (self._coarse, self._by_country[country]):
            bucket = part[bk]
            bucket.keys.discard(key)
            if not bucket.keys:
                del part[bk]  # its (now all stale) entries go with it
        if not self._by_country[country]:
            del self._by_country[country]

    def _unlink(self, key: _Key, held: SignedOffer) -> None:
        """Forget a live offer; its index entries turn stale (no live offer has their gen)."""
        del self._live[key]
        del self._gens[key]
        listings = self._by_provider[key[0]]
        listings.discard(key[1])
        if not listings:
            del self._by_provider[key[0]]
        self._leave_buckets(key, self._bucket_key(held.offer), held.offer.region.country)

    def _on_reputation(self, provider: bytes, old: int, new: int) -> None:
        for listing in tuple(self._by_provider.get(provider, ())):
            key = (provider, listing)
            o = self._live[key].offer
            self._index(key, o, self._bucket_key(o))

    # -- expiry and floors -------------------------------------------------------------------

    def _drop_expired(self, key: _Key, held: SignedOffer, now: int) -> None:
        self._unlink(key, held)
        o = held.offer
        self._set_floor(key, o.seq, o.issued + MAX_OFFER_TTL, now)
        self._emit(Change.EXPIRED, held)

    def _set_floor(self, key: _Key, seq: int, until: int, now: int) -> None:
        if until <= now:
            return  # every older offer of the key is already dead
        self._floors[key] = (seq, until)
        heap = self._floor_heap
        heapq.heappush(heap, (until, key[0], key[1], seq))
        floors = self._floors
        while len(floors) > 2 * self.max_offers + _HEAP_SLACK:
            u, provider, listing, s = heapq.heappop(heap)
            if floors.get((provider, listing)) == (s, u):
                del floors[(provider, listing)]
        if len(heap) > 2 * len(floors) + _HEAP_SLACK:
            self._floor_heap = [(u, k[0], k[1], s) for k, (s, u) in floors.items()]
            heapq.heapify(self._floor_heap)

    def expire(self, now: int) -> list[SignedOffer]:
        """Remove and return every offer with ``expires <= now``; also lapse old floors."""
        out: list[SignedOffer] = []
        heap = self._expiry
        live = self._live
        while heap and heap[0][0] <= now:
            _, provider, listing, seq = heapq.heappop(heap)
            key = (provider, listing)
            held = live.get(key)
            if held is not None and held.offer.seq == seq:
                self._drop_expired(key, held, now)
                out.append(held)
        fheap = self._floor_heap
        floors = self._floors
        while fheap and fheap[0][0] <= now:
            until, provider, listing, seq = heapq.heappop(fheap)
            if floors.get((provider, listing)) == (seq, until):
                del floors[(provider, listing)]
        return out

    def _expire_provider(self, provider: bytes, now: int) -> None:
        for listing in tuple(self._by_provider.get(provider, ())):
            key = (provider, listing)
            held = self._live[key]
            if held.offer.expires <= now:
                self._drop_expired(key, held, now)

    # -- reading -----------------------------------------------------------------------------

    def get(self, provider: bytes, listing: int) -> SignedOffer | None:
        """The held offer (possibly past its expiry if `expire` has not run since)."""
        return self._live.get((provider, listing))

    def seq_of(self, provider: bytes, listing: int) -> int | None:
        """The seq a new offer of this key must exceed: the held offer's, else the floor left by
        a withdrawal or expiry, else None."""
        key = (provider, listing)
        held = self._live.get(key)
        if held is not None:
            return held.offer.seq
        floor = self._floors.get(key)
        return floor[0] if floor is not None else None  # (until `expire` lapses it)

    def __len__(self) -> int:
        return len(self._live)

    def __iter__(self) -> Iterator[SignedOffer]:
        return iter(list(self._live.values()))

    def page(self, after: bytes | None, limit: int) -> tuple[list[SignedOffer], bytes | None]:
        """Held offers ordered by key bytes (provider || listing byte), after the cursor `after`.

        The cursor is the key bytes of the last offer returned, so paging is stable under
        concurrent inserts and removals (nothing is skipped that stayed in the book). Call
        `expire` first to leave expired offers out."""
        if after is not None and (type(after) is not bytes or len(after) != CURSOR_SIZE):
            raise InvalidField(f"cursor: expected {CURSOR_SIZE} bytes")
        if type(limit) is not int or not 1 <= limit <= MAX_LIMIT:
            raise InvalidField(f"limit: expected 1..{MAX_LIMIT}")
        if len(self._paged) > 2 * len(self._live) + _HEAP_SLACK:
            self._paged = set(self._live)
            self._page = SortedList(self._paged)
            self._page_pending = []
        elif self._page_pending:
            self._page.update(self._page_pending)
            self._page_pending = []
        out: list[SignedOffer] = []
        live = self._live
        keys = (
            self._page.irange(minimum=(after[:-1], after[-1]), inclusive=(False, True))
            if after is not None
            else self._page
        )
        for key in keys:
            held = live.get(key)
            if held is None:
                continue
            if len(out) == limit:
                last = out[-1].offer
                return out, last.provider + bytes((last.listing,))
            out.append(held)
        return out, None

    def query(self, q: OfferQuery, now: int) -> list[SignedOffer]:
        """The best ``q.limit`` live offers matching `q`, in `q.sort` order: exactly what
        `query.naive_query` returns over the same offers, without looking at most of them."""
        wants_gpu = q.wants_gpu
        needle = q.model_needle
        if q.country is None:
            part = self._coarse
        else:
            part = self._by_country.get(q.country)
            if part is None:
                return []
        buckets: list[_Bucket] = []
        for (model, gpus, token), bucket in part.items():
            if model is None:
                if wants_gpu is True or needle is not None:
                    continue
            elif wants_gpu is False or (needle is not None and needle not in model):
                continue
            if (
                (q.token is not None and token != q.token)
                or gpus < q.min_gpus
                or bucket.max_vram < q.min_vram_mib
                or bucket.max_vram * gpus < q.min_total_vram_mib
            ):
                continue
            buckets.append(bucket)
        ceiling = q.max_price_per_second
        if ceiling is not None and q.sort is not Sort.PRICE:
            # A price ceiling with another ranking: when few offers are under the ceiling, read
            # them all from the price index and sort the matches, rather than walk the ranking
            # past many offers above it. Reading n of N offers this way costs n; walking the
            # ranking costs about limit * N / n (if the ceiling is the selective filter).
            by_price = [self._sorted_index(b, 0) for b in buckets]
            under = [idx.bisect_left((ceiling + 1,)) for idx in by_price]
            n = sum(under)
            if q.limit is None or n * n <= q.limit * sum(len(idx) for idx in by_price):
                prefixes = (i.islice(0, k) for i, k in zip(by_price, under, strict=True))
                return self._scan(q, now, prefixes)
        slot = _SORT_SLOT[q.sort]
        sources = [self._sorted_index(b, slot) for b in buckets]
        entries = sources[0] if len(sources) == 1 else heapq.merge(*sources)
        if q.sort is not Sort.PRICE:
            ceiling = None
        limit = q.limit if q.limit is not None else len(self._live)
        live = self._live
        gens = self._gens
        score = self.reputation.score
        matches = q.matches
        out: list[SignedOffer] = []
        for primary, _, provider, listing, gen in entries:
            if ceiling is not None and primary > ceiling:
                break  # sorted by price: nothing further can match
            key = (provider, listing)
            if gens.get(key) != gen:
                continue  # stale entry of a replaced or removed offer
            signed = live[key]
            if matches(signed.offer, score(provider), now):
                out.append(signed)
                if len(out) >= limit:
                    break
        return out

    def _scan(
        self, q: OfferQuery, now: int, sources: Iterable[Iterable[tuple[int, int, bytes, int, int]]]
    ) -> list[SignedOffer]:
        """Every match among the entries of `sources`, sorted by `q`'s ranking, first q.limit."""
        live = self._live
        gens = self._gens
        score = self.reputation.score
        hits = []
        for source in sources:
            for _, _, provider, listing, gen in source:
                key = (provider, listing)
                if gens.get(key) == gen:
                    signed = live[key]
                    rep = score(provider)
                    if q.matches(signed.offer, rep, now):
                        hits.append((q.sort_key(signed.offer, rep), signed))
        hits.sort(key=lambda h: h[0])
        return [h[1] for h in (hits if q.limit is None else hits[: q.limit])]

    # -- listeners ---------------------------------------------------------------------------

    def add_listener(self, listener: ChangeListener) -> None:
        """`listener(change, signed)` runs after every change (the offer store persists so)."""
        self._listeners.append(listener)

    def remove_listener(self, listener: ChangeListener) -> None:
        self._listeners.remove(listener)

    def _emit(self, change: Change, signed: SignedOffer) -> None:
        for listener in self._listeners:
            listener(change, signed)
