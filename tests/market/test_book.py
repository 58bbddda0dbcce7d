"""OfferBook: ingest rules, limits, expiry, paging, listeners, and indexed queries."""

from __future__ import annotations

import pytest

from rigmesh.market.book import CURSOR_SIZE, Change, Ingest, OfferBook
from rigmesh.market.offer import MAX_OFFER_TTL, SignedOffer
from rigmesh.market.query import OfferQuery, Sort, naive_query
from rigmesh.market.reputation import Reputation
from rigmesh.wire import cbor
from rigmesh.wire.errors import (
    BadSignature,
    Expired,
    InvalidField,
    Malformed,
    NotYetValid,
    RateLimited,
    Replayed,
    TooLarge,
    UnknownVersion,
    WrongChain,
)

from .factory import A100, CHAIN_ID, H100, L4, NOW, RTX4090, make_offer, peer, signed, unsigned


@pytest.fixture
def book() -> OfferBook:
    return OfferBook(chain_id=CHAIN_ID)


def test_ingest_add_replace_and_replay(book: OfferBook) -> None:
    first = signed(1, seq=5)
    result, got = book.ingest(first.encoded, NOW)
    assert result is Ingest.ADDED and got == first
    assert book.get(peer(1).peer_id, 0) == first and book.seq_of(peer(1).peer_id, 0) == 5
    newer = signed(1, seq=6, price=7)
    assert book.ingest(newer.encoded, NOW)[0] is Ingest.REPLACED
    assert book.get(peer(1).peer_id, 0) == newer and len(book) == 1
    for stale in (first, newer):  # older and equal seq
        with pytest.raises(Replayed):
            book.ingest(stale.encoded, NOW)
    assert list(book) == [newer]


def test_replay_is_refused_before_the_signature_check(book: OfferBook) -> None:
    book.ingest(signed(1, seq=5).encoded, NOW)
    # An old offer with a broken signature: Replayed, not BadSignature, so no verify ran.
    m = cbor.decode(signed(1, seq=4).encoded, max_size=4096)
    m["sig"] = bytes(64)
    with pytest.raises(Replayed):
        book.ingest(cbor.encode(m), NOW)
    # The same forgery with a newer seq does get verified, and fails.
    m = cbor.decode(signed(1, seq=9).encoded, max_size=4096)
    m["sig"] = bytes(64)
    with pytest.raises(BadSignature):
        book.ingest(cbor.encode(m), NOW)
    assert book.seq_of(peer(1).peer_id, 0) == 5


def test_bad_input_gets_typed_errors(book: OfferBook) -> None:
    with pytest.raises(Malformed, match="a message is a CBOR map"):
        book.ingest(b"\x80", NOW)
    with pytest.raises(UnknownVersion, match="no version"):  # an empty map: no v, no kind
        book.ingest(b"\xa0", NOW)
    with pytest.raises(TooLarge, match="5000 bytes > limit 2048"):
        book.ingest(b"\x00" * 5000, NOW)
    with pytest.raises(WrongChain):
        book.ingest(signed(1, chain_id=1).encoded, NOW)
    with pytest.raises(Expired):
        book.ingest(signed(1, expires=NOW).encoded, NOW)
    with pytest.raises(NotYetValid):
        book.ingest(signed(1, issued=NOW + 1000, expires=NOW + 2000).encoded, NOW)
    # A payee binding signed by another key.
    forged = make_offer(1)._replace(payee_sig=make_offer(2).payee_sig).sign(peer(1))
    with pytest.raises(BadSignature, match="payee binding"):
        book.ingest(forged.encoded, NOW)
    assert len(book) == 0


def test_withdrawal_removes_and_guards_the_key(book: OfferBook) -> None:
    book.ingest(signed(1, seq=1).encoded, NOW)
    result, _ = book.ingest(signed(1, seq=2, capacity=0).encoded, NOW)
    assert result is Ingest.WITHDRAWN
    assert book.get(peer(1).peer_id, 0) is None and len(book) == 0
    assert book.query(OfferQuery(), NOW) == []
    assert book.seq_of(peer(1).peer_id, 0) == 2
    with pytest.raises(Replayed):  # the withdrawn offer cannot be replayed back in
        book.ingest(signed(1, seq=1).encoded, NOW)
    assert book.ingest(signed(1, seq=3).encoded, NOW)[0] is Ingest.ADDED
    # A withdrawal for a key never held is remembered too.
    assert book.ingest(signed(2, seq=4, capacity=0).encoded, NOW)[0] is Ingest.WITHDRAWN
    with pytest.raises(Replayed):
        book.ingest(signed(2, seq=3).encoded, NOW)


def test_expiry_heap_and_lazy_expiry(book: OfferBook) -> None:
    a = unsigned(make_offer(1, expires=NOW + 10))
    b = unsigned(make_offer(2, expires=NOW + 20))
    c = unsigned(make_offer(3, expires=NOW + 30))
    for s in (c, a, b):
        book.insert(s, NOW)
    # Not swept yet, but a query never returns an expired offer.
    assert {s.offer.provider for s in book.query(OfferQuery(), NOW + 15)} == {
        b.offer.provider, c.offer.provider
    }
    assert book.expire(NOW + 9) == []
    assert book.expire(NOW + 20) == [a, b]
    assert len(book) == 1 and book.get(peer(1).peer_id, 0) is None
    # The expired key keeps its seq floor until issued + MAX_OFFER_TTL.
    with pytest.raises(Replayed):
        book.insert(unsigned(make_offer(1, seq=1, expires=NOW + 100)), NOW + 20)
    assert book.insert(unsigned(make_offer(1, seq=2, expires=NOW + 100)), NOW + 20) is Ingest.ADDED


def test_replacing_an_expired_unswept_offer_counts_as_added(book: OfferBook) -> None:
    events: list[tuple[Change, int]] = []
    book.add_listener(lambda ch, s: events.append((ch, s.offer.seq)))
    book.insert(unsigned(make_offer(1, seq=1, expires=NOW + 10)), NOW)
    assert book.insert(unsigned(make_offer(1, seq=2, expires=NOW + 100)), NOW + 50) is Ingest.ADDED
    assert events == [(Change.ADDED, 1), (Change.EXPIRED, 1), (Change.ADDED, 2)]
    assert book.expire(NOW + 60) == []  # the stale heap entry of seq 1 is ignored


def test_floor_lapses_after_the_ttl(book: OfferBook) -> None:
    book.insert(unsigned(make_offer(1, seq=5, issued=NOW, expires=NOW + 10)), NOW)
    later = NOW + MAX_OFFER_TTL
    book.expire(later)
    assert book.seq_of(peer(1).peer_id, 0) is None
    # Any offer older than seq 5 would have been dead by now, so a low seq is fine again.
    old = unsigned(make_offer(1, seq=1, issued=later - 5, expires=later + 10))
    assert book.insert(old, later) is Ingest.ADDED


def test_limits_refuse_with_rate_limited() -> None:
    book = OfferBook(max_offers=3, max_listings_per_provider=2)
    book.insert(unsigned(make_offer(1, 0)), NOW)
    book.insert(unsigned(make_offer(1, 1)), NOW)
    with pytest.raises(RateLimited, match="listings"):
        book.insert(unsigned(make_offer(1, 2)), NOW)
    # Replacing a held listing always passes; so does a withdrawal.
    assert book.insert(unsigned(make_offer(1, 1, seq=2)), NOW) is Ingest.REPLACED
    book.insert(unsigned(make_offer(2, 0, expires=NOW + 5)), NOW)
    with pytest.raises(RateLimited, match="full"):
        book.insert(unsigned(make_offer(3, 0)), NOW)
    # Once an offer expired there is room again (the book sweeps before refusing).
    assert book.insert(unsigned(make_offer(3, 0)), NOW + 10) is Ingest.ADDED
    assert len(book) == 3
    assert book.insert(unsigned(make_offer(1, 1, seq=3, capacity=0)), NOW + 10) is Ingest.WITHDRAWN
    assert book.insert(unsigned(make_offer(1, 5)), NOW + 10) is Ingest.ADDED


def test_paging_is_ordered_and_complete(book: OfferBook) -> None:
    for n in range(7):
        for listing in range(3):
            book.insert(unsigned(make_offer(n, listing)), NOW)
    seen: list[SignedOffer] = []
    cursor = None
    pages = 0
    while True:
        got, cursor = book.page(cursor, 4)
        seen.extend(got)
        pages += 1
        if cursor is None:
            break
        assert len(cursor) == CURSOR_SIZE
        # Changes between pages do not disturb the walk.
        book.insert(unsigned(make_offer(99, pages)), NOW)
    keys = [s.offer.provider + bytes((s.offer.listing,)) for s in seen]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert {k for k in keys if k[:-1] != peer(99).peer_id} == {
        s.offer.provider + bytes((s.offer.listing,))
        for s in book
        if s.offer.provider != peer(99).peer_id
    }
    with pytest.raises(InvalidField):
        book.page(b"short", 4)
    with pytest.raises(InvalidField):
        book.page(None, 0)
    assert book.page(None, 1000)[1] is None


def test_query_filters_and_sorts(book: OfferBook) -> None:
    offers = [
        make_offer(1, gpu=H100, count=8, price=6400, country="DE"),
        make_offer(2, gpu=H100, count=1, price=900, country="US", interruptible=True,
                   isolation="namespaces"),
        make_offer(3, gpu=A100, count=2, price=1000, country="DE", zone="ber-1",
                   isolation="namespaces+cgroup"),
        make_offer(4, gpu=RTX4090, count=1, price=150, country="FR"),
        make_offer(5, gpu=L4, count=4, price=700, country="DE"),
        make_offer(6, gpu=None, price=50, country="DE"),
    ]
    for o in offers:
        book.insert(unsigned(o), NOW)

    def providers(q: OfferQuery) -> list[int]:
        got = book.query(q, NOW)
        assert got == naive_query(list(book), q, NOW, book.reputation)
        return [next(i for i, o in enumerate(offers, 1) if o == s.offer) for s in got]

    assert providers(OfferQuery()) == [4, 5, 2, 3, 1]  # GPU required by default
    assert providers(OfferQuery(gpu_required=False)) == [6, 4, 5, 2, 3, 1]
    assert providers(OfferQuery(cpu_only=True)) == [6]
    assert providers(OfferQuery(gpu_model="H100")) == [2, 1]
    assert providers(OfferQuery(gpu_model="nvidia  h100 80gb")) == [2, 1]
    assert providers(OfferQuery(gpu_model="geforce")) == [4]
    assert providers(OfferQuery(min_gpus=2)) == [5, 3, 1]
    assert providers(OfferQuery(min_vram_mib=40000)) == [2, 3, 1]
    assert providers(OfferQuery(min_total_vram_mib=90000)) == [5, 1]
    assert providers(OfferQuery(max_price_per_second=900)) == [4, 5, 2]
    assert providers(OfferQuery(country="de")) == [5, 3, 1]
    assert providers(OfferQuery(country="DE", zone="ber-1")) == [3]
    assert providers(OfferQuery(country="JP")) == []
    assert providers(OfferQuery(interruptible=True)) == [2]
    assert providers(OfferQuery(interruptible=False, limit=2)) == [4, 5]
    assert providers(OfferQuery(token=bytes(20))) == []
    assert providers(OfferQuery(min_isolation="none")) == [4, 5, 2, 3, 1]
    assert providers(OfferQuery(min_isolation="namespaces")) == [2, 3]
    assert providers(OfferQuery(min_isolation="namespaces+cgroup")) == [3]
    with pytest.raises(InvalidField, match="min_isolation: one of"):
        OfferQuery(min_isolation="vm")
    # Price per GiB: 8 H100 at 6400/s are cheaper per GiB than one at 900/s.
    assert providers(OfferQuery(sort=Sort.PRICE_PER_VRAM_GIB))[:2] == [4, 5]
    assert providers(OfferQuery(sort="price_per_vram_gib", gpu_model="h100")) == [1, 2]


def test_score_follows_reputation_changes() -> None:
    rep = Reputation()
    book = OfferBook(reputation=rep)
    cheap = unsigned(make_offer(1, price=1000))
    dear = unsigned(make_offer(2, price=1400))
    book.insert(cheap, NOW)
    book.insert(dear, NOW)
    q = OfferQuery(sort=Sort.SCORE)
    assert book.query(q, NOW) == [cheap, dear]
    # 1400 * (2000 - 1000) < 1000 * (2000 - 500): the trusted provider wins on score.
    rep.set(peer(2).peer_id, 1000)
    assert book.query(q, NOW) == [dear, cheap] == naive_query(list(book), q, NOW, rep)
    assert book.query(OfferQuery(min_reputation=600), NOW) == [dear]
    rep.set(peer(2).peer_id, 0)
    assert book.query(q, NOW) == [cheap, dear]


def test_price_ceiling_plans_agree() -> None:
    """Ceilings with a non-price ranking go through the price-prefix plan when selective."""
    book = OfferBook()
    for n in range(300):
        book.insert(unsigned(make_offer(n, price=100 + 7 * n, count=1 + n % 8)), NOW)
    for ceiling in (50, 120, 400, 1000, 5000):
        for sort in Sort:
            for limit in (1, 5, None):
                q = OfferQuery(max_price_per_second=ceiling, sort=sort, limit=limit)
                assert book.query(q, NOW) == naive_query(list(book), q, NOW, book.reputation)


def test_stale_entries_are_compacted() -> None:
    book = OfferBook()
    for seq in range(1, 400):
        book.insert(unsigned(make_offer(1, seq=seq, price=1000 + seq % 17)), NOW)
        if seq % 50 == 0:
            assert [s.offer.seq for s in book.query(OfferQuery(), NOW)] == [seq]
    (bucket,) = book._coarse.values()
    assert bucket.entries <= 2 * len(bucket.keys) + 64
    assert len(book._expiry) <= 2 * len(book) + 1024


def test_model_moves_between_buckets(book: OfferBook) -> None:
    book.insert(unsigned(make_offer(1, seq=1, gpu=H100, country="DE")), NOW)
    book.insert(unsigned(make_offer(1, seq=2, gpu=A100, country="US")), NOW)
    assert book.query(OfferQuery(gpu_model="h100"), NOW) == []
    assert book.query(OfferQuery(country="DE"), NOW) == []
    assert [s.offer.seq for s in book.query(OfferQuery(gpu_model="a100", country="US"), NOW)] == [2]


def test_offers_for_an_escrow_the_book_does_not_trust_are_wrong_chain() -> None:
    """spec/protocol.md 3.1: the escrow is part of the domain. By default a book trusts the
    canonical CREATE2 deployment (this artifact, windows 60 s .. 1 day) and nothing else."""
    from rigmesh.escrow.contract import escrow_address

    canonical = escrow_address(60, 86400)
    other = bytes.fromhex("5fbdb2315678afecb367f032d93f642f64180aa3")
    book = OfferBook(chain_id=CHAIN_ID)
    assert book.escrows == {canonical}
    for escrow in (bytes(20), other, escrow_address(60, 86401)):
        with pytest.raises(WrongChain, match=f"escrow 0x{escrow.hex()} is not one this node"):
            book.ingest(make_offer(1)._replace(escrow=escrow).sign(peer(1)).encoded, NOW)
        with pytest.raises(WrongChain, match="not one this node trusts"):  # own offers too
            book.insert(unsigned(make_offer(2)._replace(escrow=escrow)), NOW)
    assert book.ingest(make_offer(1)._replace(escrow=canonical).sign(peer(1)).encoded, NOW)
    configured = OfferBook(chain_id=CHAIN_ID, escrows=[other])
    configured.ingest(make_offer(3)._replace(escrow=other).sign(peer(3)).encoded, NOW)
    with pytest.raises(WrongChain, match="not one this node trusts"):
        configured.ingest(make_offer(4)._replace(escrow=canonical).sign(peer(4)).encoded, NOW)
    with pytest.raises(WrongChain, match="chain 1, this book holds chain 31337"):
        configured.ingest(make_offer(5, chain_id=1)._replace(escrow=other).sign(peer(5)).encoded,
                          NOW)
    assert len(book) == 1 and len(configured) == 1
