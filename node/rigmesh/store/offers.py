"""The offer book on disk, so a restarted node has its offers at once.

One sqlite file, one row per (provider, listing) key: the offer's canonical bytes as received,
its seq (8-byte big-endian, since a seq may exceed sqlite's signed 64-bit integers) and its
``expires``. A withdrawal is stored like an offer: re-ingesting it restores the key's seq floor,
so a replayed older offer cannot resurrect a withdrawn listing after a restart.

The disk is trusted no more than the network: `OfferStore.load` re-ingests every row through
`OfferBook.ingest` (decode, verify, checks). A row that is expired is deleted; a row that is
corrupt or fails verification is logged, skipped and deleted, never fatal.

Writes are batched: changes accumulate in memory (the latest per key wins) and go to disk in one
transaction every ``flush_every`` changes, on `flush`, and on `close`. Ingest stays cheap; a crash
loses at most the last batch, which gossip and sync bring back. An event loop that must not block
on the disk passes ``flush_every=None``, takes each batch on the loop (`take`) and writes it from
a worker thread (`write`), as the node does.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from rigmesh.market.book import Change, OfferBook
from rigmesh.market.offer import SignedOffer
from rigmesh.wire.errors import Expired, Replayed, WireError
from rigmesh.wire.identity import PEER_ID_SIZE

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS offers (
    provider BLOB NOT NULL,
    listing INTEGER NOT NULL,
    seq BLOB NOT NULL,
    expires INTEGER NOT NULL,
    encoded BLOB NOT NULL,
    PRIMARY KEY (provider, listing)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS offers_expires ON offers (expires);
"""
_UPSERT = (
    "INSERT INTO offers (provider, listing, seq, expires, encoded) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (provider, listing) DO UPDATE SET seq = excluded.seq, "
    "expires = excluded.expires, encoded = excluded.encoded"
)
_DELETE = "DELETE FROM offers WHERE provider = ? AND listing = ?"

_Key = tuple[bytes, int]


@dataclass(frozen=True, slots=True)
class LoadReport:
    loaded: int  # offers (and withdrawals) back in the book
    expired: int  # rows past their expiry, deleted
    rejected: int  # corrupt or unverifiable rows, logged and deleted
    superseded: int = 0  # rows older than what the book already held, left alone


class OfferStore:
    """Persists an `OfferBook`. Typical use::

        store = OfferStore(path)
        store.load(book, now)   # re-ingest what survived the restart
        store.attach(book)      # from now on, persist the book's changes
        ...
        store.close()
    """

    def __init__(self, path: str | Path, *, flush_every: int | None = 1000) -> None:
        if flush_every is not None and flush_every < 1:
            raise ValueError("flush_every must be positive")
        self.path = Path(path)
        self.flush_every = flush_every
        # One thread at a time (the owner's loop, or one worker it waits for).
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: a power loss may drop the last transactions but never corrupts the file;
        # the offers come back from the network anyway.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        #: key -> the signed offer to write, or None to delete the row.
        self._pending: dict[_Key, SignedOffer | None] = {}
        self._book: OfferBook | None = None

    # -- writing -----------------------------------------------------------------------------

    def attach(self, book: OfferBook) -> None:
        """Persist every later change of `book` (after `load`, so loading rewrites nothing)."""
        if self._book is not None:
            raise RuntimeError("this store already persists a book")
        self._book = book
        book.add_listener(self._on_change)

    def detach(self) -> None:
        if self._book is not None:
            self._book.remove_listener(self._on_change)
            self._book = None

    def _on_change(self, change: Change, signed: SignedOffer) -> None:
        o = signed.offer
        self._pending[(o.provider, o.listing)] = None if change is Change.EXPIRED else signed
        if self.flush_every is not None and len(self._pending) >= self.flush_every:
            self.flush()

    def flush(self) -> int:
        """Write the batched changes in one transaction; returns how many rows it touched."""
        return self.write(self.take())

    def take(self) -> dict[_Key, SignedOffer | None]:
        """The changes batched so far (the store forgets them: `write` them)."""
        batch, self._pending = self._pending, {}
        return batch

    def write(self, batch: dict[_Key, SignedOffer | None]) -> int:
        """Write a batch from `take` in one transaction (from any one thread at a time)."""
        if not batch:
            return 0
        upserts = []
        deletes = []
        for (provider, listing), signed in batch.items():
            if signed is None:
                deletes.append((provider, listing))
            else:
                o = signed.offer
                upserts.append(
                    (provider, listing, o.seq.to_bytes(8, "big"), o.expires, signed.encoded)
                )
        with self._transaction():
            self._db.executemany(_DELETE, deletes)
            self._db.executemany(_UPSERT, upserts)
        return len(upserts) + len(deletes)

    def purge(self, now: int) -> int:
        """Delete rows with ``expires <= now`` (after flushing); returns how many."""
        self.flush()
        with self._transaction():
            return self._db.execute("DELETE FROM offers WHERE expires <= ?", (now,)).rowcount

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)

    # -- reading -----------------------------------------------------------------------------

    def load(self, book: OfferBook, now: int) -> LoadReport:
        """Re-ingest every stored row into `book` (verified like a network message)."""
        loaded = expired = rejected = superseded = 0
        drop: list[tuple[object, object]] = []
        rewrite: list[SignedOffer] = []
        rows = self._db.execute("SELECT provider, listing, seq, expires, encoded FROM offers")
        for provider, listing, seq, expires, encoded in rows.fetchall():
            if not (
                type(provider) is bytes and len(provider) == PEER_ID_SIZE
                and type(listing) is int and type(expires) is int
                and type(seq) is bytes and type(encoded) is bytes
            ):
                log.warning("offer store %s: skipping a malformed row (key %r/%r)",
                            self.path, provider, listing)
                rejected += 1
                drop.append((provider, listing))
                continue
            if expires <= now:
                expired += 1
                drop.append((provider, listing))
                continue
            try:
                _, signed = book.ingest(encoded, now)
            except Expired:
                expired += 1
                drop.append((provider, listing))
                continue
            except Replayed:
                superseded += 1  # the book already holds a newer offer of this key
                continue
            except WireError as exc:
                log.warning("offer store %s: dropping an offer that does not check out: %s",
                            self.path, exc)
                rejected += 1
                drop.append((provider, listing))
                continue
            loaded += 1
            o = signed.offer
            if (o.provider, o.listing) != (provider, listing) or o.expires != expires:
                # Authentic offer, wrong bookkeeping columns: keep the offer, fix the row.
                log.warning("offer store %s: row columns disagree with the offer; rewriting",
                            self.path)
                drop.append((provider, listing))
                rewrite.append(signed)
        with self._transaction():
            self._db.executemany(_DELETE, drop)
            self._db.executemany(
                _UPSERT,
                [(s.offer.provider, s.offer.listing, s.offer.seq.to_bytes(8, "big"),
                  s.offer.expires, s.encoded) for s in rewrite],
            )
        return LoadReport(loaded, expired, rejected, superseded)

    def __len__(self) -> int:
        """Rows on disk (not counting the unflushed batch)."""
        return self._db.execute("SELECT count(*) FROM offers").fetchone()[0]

    # -- lifetime ----------------------------------------------------------------------------

    def close(self) -> None:
        self.flush()
        self.detach()
        self._db.close()

    def __enter__(self) -> OfferStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class _Transaction:
    """BEGIN ... COMMIT, or ROLLBACK on an exception (the connection runs in autocommit)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN")

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._db.execute("ROLLBACK" if exc_type is not None else "COMMIT")
