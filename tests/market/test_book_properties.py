"""Property tests: the index answers exactly as the naive scan, and the book follows a model.

These are the tests that keep the index honest: random offer sets and random queries must give
the naive scan's results (same offers, same order), and random interleavings of inserts,
replacements, withdrawals, expiry and reputation changes must leave the book equal to a plain
dict that follows the rules of market/book.py's docstring.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rigmesh.market.book import Ingest, OfferBook
from rigmesh.market.offer import ISOLATION_LEVELS, MAX_CLOCK_SKEW, MAX_OFFER_TTL, Offer
from rigmesh.market.query import OfferQuery, Sort, naive_query
from rigmesh.market.reputation import Reputation
from rigmesh.wire.errors import Expired, NotYetValid, RateLimited, Replayed, WireError

from .factory import A100, H100, L4, NOW, RTX4090, USDC, make_offer, peer, signed, unsigned

GPUS = [H100, A100, RTX4090, L4, ("NVIDIA H100 PCIe", 81559), None]
NEEDLES = ["h100", "H100 ", "a100", "rtx", "nvidia", "pcie", "l4", "x"]
COUNTRIES = ["DE", "US", "FR"]


@st.composite
def offers(draw: st.DrawFn, provider: int | None = None) -> Offer:
    n = draw(st.integers(0, 4)) if provider is None else provider
    issued = NOW - draw(st.integers(0, 3000))
    return make_offer(
        n,
        draw(st.integers(0, 2)),
        seq=draw(st.integers(0, 6)),
        gpu=draw(st.sampled_from(GPUS)),
        count=draw(st.sampled_from((1, 2, 4, 8))),
        price=draw(st.integers(1, 40)) * draw(st.sampled_from((1, 1, 100))),
        country=draw(st.sampled_from(COUNTRIES)),
        zone=draw(st.sampled_from(("a", "b"))),
        interruptible=draw(st.booleans()),
        capacity=draw(st.sampled_from((0, 1, 1, 1, 2))),
        issued=issued,
        expires=NOW + draw(st.integers(1, 4000)),
        token=draw(st.sampled_from((USDC, USDC, bytes(20)))),
        cpu_cores=draw(st.sampled_from((4, 16, 64))),
        isolation=draw(st.sampled_from(ISOLATION_LEVELS)),
    )


@st.composite
def queries(draw: st.DrawFn) -> OfferQuery:
    cpu_only = draw(st.booleans()) and draw(st.booleans())
    kw: dict[str, Any] = {"cpu_only": cpu_only, "gpu_required": draw(st.booleans())}
    if not cpu_only:
        kw["gpu_model"] = draw(st.none() | st.sampled_from(NEEDLES))
        kw["min_vram_mib"] = draw(st.sampled_from((0, 0, 24000, 50000)))
        kw["min_gpus"] = draw(st.sampled_from((0, 0, 2, 4, 8)))
        kw["min_total_vram_mib"] = draw(st.sampled_from((0, 0, 90000, 300000)))
    # Ceilings often equal to a price on offer (prices are 1..40 or multiples of 100).
    kw["max_price_per_second"] = draw(
        st.none() | st.integers(0, 45) | st.integers(1, 40).map(lambda p: 100 * p)
    )
    kw["country"] = draw(st.none() | st.sampled_from(COUNTRIES))
    if kw["country"] is not None:
        kw["zone"] = draw(st.none() | st.sampled_from(("a", "b")))
    kw["min_reputation"] = draw(st.sampled_from((0, 0, 400, 500, 501, 900)))
    kw["interruptible"] = draw(st.none() | st.booleans())
    kw["min_cpu_cores"] = draw(st.sampled_from((0, 0, 16)))
    kw["token"] = draw(st.none() | st.sampled_from((USDC, bytes(20))))
    kw["min_isolation"] = draw(st.none() | st.sampled_from(ISOLATION_LEVELS))
    kw["sort"] = draw(st.sampled_from(list(Sort)))
    kw["limit"] = draw(st.none() | st.integers(1, 12))
    return OfferQuery(**kw)


def reputation_for(scores: list[int]) -> Reputation:
    rep = Reputation()
    for n, score in enumerate(scores):
        rep.set(peer(n).peer_id, score)
    return rep


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(offers(), max_size=60),
    st.lists(queries(), min_size=1, max_size=8),
    st.lists(st.integers(0, 1000), min_size=5, max_size=5),
    st.integers(0, 4000),
)
def test_index_answers_as_the_naive_scan(
    batch: list[Offer], qs: list[OfferQuery], scores: list[int], later: int
) -> None:
    rep = reputation_for(scores)
    book = OfferBook(reputation=rep)
    for o in batch:
        with contextlib.suppress(Replayed):
            book.insert(unsigned(o), NOW)
    held = list(book)
    for q in qs:
        variants = [q]
        if held and q.cpu_only is False:
            # A ceiling exactly at a price on offer: the boundary of the price index walk.
            price = held[len(held) // 2].offer.price_per_second
            variants.append(dataclasses.replace(q, max_price_per_second=price))
        for v in variants:
            for now in (NOW, NOW + later):  # the later clock has expired offers not yet swept
                assert book.query(v, now) == naive_query(held, v, now, rep)


class Model:
    """The book's rules as a dict of the last accepted offer per key (market/book.py)."""

    def __init__(self, max_offers: int, max_listings: int) -> None:
        self.last: dict[tuple[bytes, int], Offer] = {}
        self.max_offers = max_offers
        self.max_listings = max_listings

    def live(self, now: int) -> dict[tuple[bytes, int], Offer]:
        return {k: o for k, o in self.last.items() if o.capacity > 0 and o.expires > now}

    def insert(self, o: Offer, now: int) -> Ingest | type[Exception]:
        if now >= o.expires:
            return Expired
        if o.issued > now + MAX_CLOCK_SKEW:
            return NotYetValid
        prev = self.last.get(o.key)
        if prev is not None and prev.issued + MAX_OFFER_TTL > now and o.seq <= prev.seq:
            return Replayed
        live = self.live(now)
        if o.capacity == 0:
            self.last[o.key] = o
            return Ingest.WITHDRAWN
        if o.key not in live:
            if sum(1 for k in live if k[0] == o.provider) >= self.max_listings:
                return RateLimited
            if len(live) >= self.max_offers:
                return RateLimited
        self.last[o.key] = o
        return Ingest.REPLACED if o.key in live else Ingest.ADDED


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("insert"), offers()),
            st.tuples(st.just("tick"), st.integers(1, 2000)),
            st.tuples(st.just("expire"), st.none()),
            st.tuples(st.just("reputation"), st.tuples(st.integers(0, 4), st.integers(0, 1000))),
            st.tuples(st.just("query"), queries()),
        ),
        max_size=80,
    )
)
def test_interleavings_follow_the_model(ops: list[tuple[str, Any]]) -> None:
    rep = Reputation()
    book = OfferBook(max_offers=12, max_listings_per_provider=3, reputation=rep)
    model = Model(12, 3)
    now = NOW
    for op, arg in ops:
        if op == "insert":
            # Offers are issued relative to the moving clock so that time keeps mattering.
            o = arg._replace(issued=arg.issued - NOW + now, expires=arg.expires - NOW + now)
            want = model.insert(o, now)
            try:
                got: Ingest | type[Exception] = book.insert(unsigned(o), now)
            except (Expired, NotYetValid, Replayed, RateLimited) as exc:
                got = type(exc)
            assert got == want, (op, o)
        elif op == "tick":
            now += arg
        elif op == "expire":
            gone = book.expire(now)
            assert all(s.offer.expires <= now for s in gone)
            assert len(book) == len(model.live(now))
        elif op == "reputation":
            rep.set(peer(arg[0]).peer_id, arg[1])
        else:
            live = [unsigned(o) for o in model.live(now).values()]
            assert book.query(arg, now) == naive_query(live, arg, now, rep)
        live_now = model.live(now)
        held = {s.offer.key: s.offer for s in book if s.offer.expires > now}
        assert held == live_now
        for key, o in live_now.items():
            assert book.seq_of(*key) == o.seq
    book.expire(now)
    assert {s.offer.key: s.offer for s in book} == model.live(now)
    # Paging walks exactly the held offers, in key order.
    paged, cursor = [], None
    while True:
        got_page, cursor = book.page(cursor, 5)
        paged.extend(got_page)
        if cursor is None:
            break
    assert [s.offer.key for s in paged] == sorted(model.live(now))


@functools.cache
def _valid_encoding() -> bytes:
    return signed(1).encoded


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mangled_bytes_only_raise_wire_errors(data: st.DataObject) -> None:
    raw = bytearray(_valid_encoding())
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        op = data.draw(st.sampled_from(("flip", "cut", "insert")))
        if op == "flip":
            raw[i] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "cut":
            del raw[i:]
            if not raw:
                break
        else:
            raw.insert(i, data.draw(st.integers(0, 255)))
    book = OfferBook()
    try:
        result, got = book.ingest(bytes(raw), NOW)
    except WireError:
        assert len(book) == 0
    else:  # a flip that still verifies can only be in an unsigned-irrelevant spot: none exist
        assert bytes(raw) == _valid_encoding() and result is Ingest.ADDED and got.encoded == raw
