"""OfferStore with a real sqlite file: restart, expiry, corrupt rows, batching."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest

from rigmesh.market.book import OfferBook
from rigmesh.store.offers import OfferStore
from rigmesh.wire.errors import Replayed

from .factory import CHAIN_ID, NOW, peer, signed


def fresh_book() -> OfferBook:
    return OfferBook(chain_id=CHAIN_ID)


def test_restart_restores_offers_and_withdrawal_floors(tmp_path: Path) -> None:
    path = tmp_path / "offers.sqlite"
    book = fresh_book()
    store = OfferStore(path, flush_every=1000)
    store.attach(book)
    a = signed(1, 0, seq=3)
    b = signed(2, 1, seq=1, price=77)
    book.ingest(a.encoded, NOW)
    book.ingest(b.encoded, NOW)
    book.ingest(signed(2, 1, seq=2, price=55).encoded, NOW)  # replaces b
    book.ingest(signed(3, 0, seq=9, capacity=0).encoded, NOW)  # withdrawal of a key
    assert len(store) == 0  # batched: nothing written yet
    store.close()

    book2 = fresh_book()
    with OfferStore(path) as store2:
        report = store2.load(book2, NOW + 10)
        assert (report.loaded, report.expired, report.rejected) == (3, 0, 0)
        assert book2.get(peer(1).peer_id, 0) == a
        assert book2.get(peer(2).peer_id, 1).offer.price_per_second == 55
        assert book2.get(peer(3).peer_id, 0) is None and len(book2) == 2
        # The withdrawal came back as a floor: its older offer stays out.
        with pytest.raises(Replayed):
            book2.ingest(signed(3, 0, seq=8).encoded, NOW + 10)


def test_expired_rows_are_dropped_and_deleted(tmp_path: Path) -> None:
    path = tmp_path / "offers.sqlite"
    book = fresh_book()
    with OfferStore(path, flush_every=1) as store:
        store.attach(book)
        book.ingest(signed(1, expires=NOW + 100).encoded, NOW)
        book.ingest(signed(2, expires=NOW + 5000).encoded, NOW)
        assert len(store) == 2  # flush_every=1 writes at once
        book.expire(NOW + 200)
        assert len(store) == 1  # the expiry deleted the row
    book.ingest(signed(3, expires=NOW + 300).encoded, NOW)  # detached: not persisted
    with OfferStore(path) as store:
        report = store.load(fresh_book(), NOW + 6000)
        assert (report.loaded, report.expired) == (0, 1)
        assert len(store) == 0


def test_corrupt_rows_are_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "offers.sqlite"
    book = fresh_book()
    with OfferStore(path) as store:
        store.attach(book)
        for n in range(4):
            book.ingest(signed(n).encoded, NOW)
    db = sqlite3.connect(path)
    rows = db.execute("SELECT provider, listing, encoded FROM offers ORDER BY provider").fetchall()
    # Truncated bytes, a flipped signature byte, a wrong type, and one good row.
    db.execute("UPDATE offers SET encoded = ? WHERE provider = ?", (rows[0][2][:-9], rows[0][0]))
    bad_sig = bytearray(rows[1][2])
    bad_sig[-1] ^= 1
    db.execute("UPDATE offers SET encoded = ? WHERE provider = ?", (bytes(bad_sig), rows[1][0]))
    db.execute("UPDATE offers SET encoded = 'text' WHERE provider = ?", (rows[2][0],))
    db.commit()
    db.close()

    book2 = fresh_book()
    with caplog.at_level(logging.WARNING, logger="rigmesh.store.offers"), OfferStore(path) as s:
        report = s.load(book2, NOW)
        assert (report.loaded, report.rejected) == (1, 3)
        assert len(s) == 1  # the bad rows are gone from disk
    assert len(caplog.records) == 3
    assert [o.offer.provider for o in book2] == [rows[3][0]]


def test_rows_under_a_wrong_key_are_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "offers.sqlite"
    with OfferStore(path) as store:
        store.attach(book := fresh_book())
        book.ingest(signed(1, 4).encoded, NOW)
    db = sqlite3.connect(path)
    db.execute("UPDATE offers SET listing = 9")
    db.commit()
    db.close()
    with OfferStore(path) as store:
        assert store.load(book2 := fresh_book(), NOW).loaded == 1
        assert book2.get(peer(1).peer_id, 4) is not None
    db = sqlite3.connect(path)
    assert db.execute("SELECT listing FROM offers").fetchall() == [(4,)]
    db.close()


def test_batches_flush_every_n(tmp_path: Path) -> None:
    book = fresh_book()
    with OfferStore(tmp_path / "o.sqlite", flush_every=3) as store:
        store.attach(book)
        for n in range(2):
            book.ingest(signed(n).encoded, NOW)
        assert len(store) == 0
        book.ingest(signed(2).encoded, NOW)
        assert len(store) == 3
        book.ingest(signed(0, seq=2).encoded, NOW)
        assert store.flush() == 1 and len(store) == 3
        assert store.purge(NOW + 10**6) == 3 and len(store) == 0


def test_a_loop_takes_batches_and_a_worker_thread_writes_them(tmp_path: Path) -> None:
    import threading

    path = tmp_path / "offers.sqlite"
    book = fresh_book()
    store = OfferStore(path, flush_every=None)
    store.attach(book)
    for i in range(1, 2001):  # past any count that would flush from the listener
        book.ingest(signed(i % 50 + 1, 0, seq=i).encoded, NOW)
    assert len(store) == 0  # the listener never writes
    batch = store.take()
    assert len(batch) == 50 and store.take() == {}
    written: list[int] = []
    worker = threading.Thread(target=lambda: written.append(store.write(batch)))
    worker.start()
    worker.join()
    assert written == [50] and len(store) == 50
    store.close()
    with OfferStore(path) as again:
        assert again.load(fresh_book(), NOW + 10).loaded == 50
