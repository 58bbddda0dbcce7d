"""The node's ledger: everything it must not forget across a crash, in one sqlite file.

- **rentals**: one row per negotiation and the rental it became (both roles): the engine's whole
  snapshot (rigmesh.rental: negotiation and usage machines, outbox, operations in flight), who the
  peer is, a readable state, why it ended;
- **records**: every heartbeat and receipt sent or received, every agreement (append only);
- **transactions**: the escrow client's journal: each operation's signed transaction, written
  before it is broadcast (so a retry re-sends it, never pays twice), and what became of it;
- **chain**: the chain watcher's cursor (the last block it processed, with its hash) and the
  escrow events it has applied (so a replayed event is never applied twice);
- **offers**: each listing's last seq (a restarted provider never reuses one).

The rule every system that keeps signed state follows (LND, Core Lightning, Raiden): written
durably before it is sent or acknowledged. So the file runs in WAL mode with ``synchronous=FULL``
(every commit reaches the disk), and the node's engine driver awaits `LedgerWriter.persist` before
it performs what an engine asked for. Commits are grouped: whatever many rentals persist while a
commit is on its way goes into the next one, so a thousand rentals cost a few commits a second.
Writes run in a worker thread, never on the event loop.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from eth_hash.auto import keccak

from rigmesh.wire import cbor

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rentals (
    key BLOB PRIMARY KEY,            -- the negotiation's nonce (16 bytes), stable from the start
    role TEXT NOT NULL,              -- 'renter' or 'provider'
    peer BLOB NOT NULL,              -- the other side's PeerId
    rental_id BLOB,                  -- once agreed: the escrow's rental id
    state TEXT NOT NULL,             -- 'negotiation:<state>' or 'usage:<state>'
    ended_by INTEGER,                -- the CloseReason once closed
    snapshot BLOB NOT NULL,          -- CBOR of the engine's snapshot
    created INTEGER NOT NULL,
    updated INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS rentals_rental_id ON rentals (rental_id);
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY,
    key BLOB NOT NULL,
    kind TEXT NOT NULL,              -- 'agreement', 'heartbeat', 'receipt'
    data BLOB NOT NULL,
    at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS records_key ON records (key, kind);
CREATE TABLE IF NOT EXISTS transactions (
    op_id TEXT PRIMARY KEY,          -- '<operation>:<rental id hex>[:<detail>]'
    raw BLOB NOT NULL,               -- the signed transaction, as broadcast
    tx_hash BLOB NOT NULL,
    status TEXT NOT NULL,            -- 'sent', 'mined', 'reverted'
    block INTEGER,
    error TEXT,
    at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chain (
    name TEXT PRIMARY KEY,
    value BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS applied_events (
    tx_hash BLOB NOT NULL,
    log_index INTEGER NOT NULL,
    block INTEGER NOT NULL,
    PRIMARY KEY (tx_hash, log_index)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS offers (
    listing INTEGER PRIMARY KEY,
    seq INTEGER NOT NULL
);
"""

_ROLES = ("renter", "provider")
_RECORD_KINDS = ("agreement", "heartbeat", "receipt")
_TX_STATUSES = ("sent", "mined", "reverted")


@dataclass(frozen=True, slots=True)
class RentalWrite:
    """What one engine step persists: its snapshot and the records it made."""

    key: bytes
    role: str
    peer: bytes
    rental_id: bytes | None
    state: str
    ended_by: int | None
    snapshot: dict[str, Any]
    records: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class RentalRow:
    key: bytes
    role: str
    peer: bytes
    rental_id: bytes | None
    state: str
    ended_by: int | None
    snapshot: dict[str, Any]
    created: int
    updated: int

    @property
    def closed(self) -> bool:
        return self.state in ("usage:closed", "negotiation:rejected", "negotiation:expired")


@dataclass(frozen=True, slots=True)
class TxRow:
    op_id: str
    tx_hash: bytes
    status: str
    block: int | None
    error: str | None
    at: int


class Ledger:
    """The sqlite file. Thread-safe (one connection behind a lock): the escrow client writes its
    journal from worker threads, the writer commits from another."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # Money rows: every commit reaches the disk (NORMAL may roll back the last commits
        # after a power loss, which would forget a receipt we acknowledged).
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self.commits = 0

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _write(self, fn: Any) -> Any:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                result = fn(self._db)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            self.commits += 1
            return result

    # -- rentals ------------------------------------------------------------------------------

    def save(self, writes: list[RentalWrite]) -> None:
        """Persist a batch of engine steps in one commit (later steps of a rental win)."""
        for w in writes:  # refused before anything is written (the batch is one commit)
            if w.role not in _ROLES:
                raise ValueError(f"rental {w.key.hex()}: role {w.role!r} is not one of {_ROLES}")
            if not w.state.startswith(("negotiation:", "usage:")):
                raise ValueError(f"rental {w.key.hex()}: state {w.state!r} is neither "
                                 "'negotiation:<state>' nor 'usage:<state>'")
            for kind, _ in w.records:
                if kind not in _RECORD_KINDS:
                    raise ValueError(f"rental {w.key.hex()}: record kind {kind!r} is not one "
                                     f"of {_RECORD_KINDS}")
        now = int(time.time())

        def run(db: sqlite3.Connection) -> None:
            for w in writes:
                db.execute(
                    "INSERT INTO rentals (key, role, peer, rental_id, state, ended_by, snapshot,"
                    " created, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (key) DO UPDATE SET rental_id = excluded.rental_id,"
                    " state = excluded.state, ended_by = excluded.ended_by,"
                    " snapshot = excluded.snapshot, updated = excluded.updated",
                    (w.key, w.role, w.peer, w.rental_id, w.state, w.ended_by,
                     cbor.encode(w.snapshot), now, now),
                )
                db.executemany(
                    "INSERT INTO records (key, kind, data, at) VALUES (?, ?, ?, ?)",
                    [(w.key, kind, data, now) for kind, data in w.records],
                )

        self._write(run)

    def rentals(self, *, role: str | None = None, open_only: bool = False) -> list[RentalRow]:
        query = "SELECT key, role, peer, rental_id, state, ended_by, snapshot, created, updated" \
                " FROM rentals"
        args: list[Any] = []
        if role is not None:
            query += " WHERE role = ?"
            args.append(role)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY created, key", args).fetchall()
        out = [
            RentalRow(key, r, peer, rid, state, ended, cbor.decode(snap, max_size=1 << 24),
                      created, updated)
            for key, r, peer, rid, state, ended, snap, created, updated in rows
        ]
        return [row for row in out if not (open_only and row.closed)]

    def records(self, key: bytes, kind: str | None = None) -> list[tuple[str, bytes, int]]:
        query, args = "SELECT kind, data, at FROM records WHERE key = ?", [key]
        if kind is not None:
            query += " AND kind = ?"
            args.append(kind)  # type: ignore[arg-type]
        with self._lock:
            return [tuple(r) for r in self._db.execute(query + " ORDER BY id", args)]  # type: ignore[misc]

    # -- transactions -------------------------------------------------------------------------

    def journal(self) -> TxJournal:
        """The escrow client's journal (`EscrowClient(journal=...)`), backed by this file."""
        return TxJournal(self)

    def tx_outcome(self, op_id: str, *, status: str, block: int | None = None,
                   error: str | None = None) -> None:
        if status not in _TX_STATUSES:
            raise ValueError(f"transaction status {status!r} is not one of {_TX_STATUSES}")

        def run(db: sqlite3.Connection) -> None:
            cursor = db.execute(
                "UPDATE transactions SET status = ?, block = ?, error = ? WHERE op_id = ?",
                (status, block, error, op_id),
            )
            if cursor.rowcount == 0:  # an outcome for a transaction never journaled: a bug
                raise KeyError(f"no transaction {op_id} in the journal")

        self._write(run)

    def transactions(self, prefix: str = "") -> list[TxRow]:
        with self._lock:
            rows = self._db.execute(
                "SELECT op_id, tx_hash, status, block, error, at FROM transactions"
                " WHERE op_id LIKE ? ORDER BY at, op_id", (prefix + "%",),
            ).fetchall()
        return [TxRow(*r) for r in rows]

    # -- chain --------------------------------------------------------------------------------

    def cursor(self) -> tuple[int, bytes] | None:
        """The last block the chain watcher processed, and its hash."""
        with self._lock:
            row = self._db.execute("SELECT value FROM chain WHERE name = 'cursor'").fetchone()
        if row is None:
            return None
        block, block_hash = cbor.decode(row[0], max_size=256)
        return block, block_hash

    def advance(self, block: int, block_hash: bytes,
                applied: list[tuple[bytes, int, int]]) -> None:
        """Mark events applied and move the cursor, in one commit."""

        def run(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT OR IGNORE INTO applied_events (tx_hash, log_index, block) VALUES (?, ?, ?)",
                applied,
            )
            db.execute(
                "INSERT INTO chain (name, value) VALUES ('cursor', ?)"
                " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (cbor.encode([block, block_hash]),),
            )

        self._write(run)

    def applied(self, tx_hash: bytes, log_index: int) -> bool:
        with self._lock:
            return self._db.execute(
                "SELECT 1 FROM applied_events WHERE tx_hash = ? AND log_index = ?",
                (tx_hash, log_index),
            ).fetchone() is not None

    # -- offers -------------------------------------------------------------------------------

    def next_seq(self, listing: int, at_least: int = 1) -> int:
        """The seq a new offer of `listing` takes (never one used before, even across crashes)."""

        def run(db: sqlite3.Connection) -> int:
            row = db.execute("SELECT seq FROM offers WHERE listing = ?", (listing,)).fetchone()
            seq = max(at_least, 1 if row is None else row[0] + 1)
            db.execute(
                "INSERT INTO offers (listing, seq) VALUES (?, ?)"
                " ON CONFLICT (listing) DO UPDATE SET seq = excluded.seq", (listing, seq),
            )
            return seq

        return int(self._write(run))


class TxJournal(MutableMapping[str, bytes]):
    """op_id -> signed raw transaction, durable before the client broadcasts it."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    def __getitem__(self, op_id: str) -> bytes:
        with self._ledger._lock:
            row = self._ledger._db.execute(
                "SELECT raw FROM transactions WHERE op_id = ?", (op_id,)).fetchone()
        if row is None:
            raise KeyError(op_id)
        return bytes(row[0])

    def __setitem__(self, op_id: str, raw: bytes) -> None:
        self._ledger._write(lambda db: db.execute(
            "INSERT INTO transactions (op_id, raw, tx_hash, status, at) VALUES (?, ?, ?, 'sent', ?)"
            " ON CONFLICT (op_id) DO UPDATE SET raw = excluded.raw, tx_hash = excluded.tx_hash,"
            " status = 'sent'", (op_id, raw, keccak(raw), int(time.time())),
        ))

    def __delitem__(self, op_id: str) -> None:
        self._ledger._write(
            lambda db: db.execute("DELETE FROM transactions WHERE op_id = ?", (op_id,)))

    def __iter__(self) -> Iterator[str]:
        with self._ledger._lock:
            rows = self._ledger._db.execute("SELECT op_id FROM transactions").fetchall()
        return iter([r[0] for r in rows])

    def __len__(self) -> int:
        with self._ledger._lock:
            return int(self._ledger._db.execute("SELECT count(*) FROM transactions").fetchone()[0])

    def __contains__(self, op_id: object) -> bool:
        with self._ledger._lock:
            return self._ledger._db.execute(
                "SELECT 1 FROM transactions WHERE op_id = ?", (op_id,)).fetchone() is not None


class LedgerWriter:
    """Group commit for the engine driver: `persist` returns once its writes are on disk, and
    every write that arrives while a commit is under way goes into the next commit."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._pending: list[RentalWrite] = []
        self._waiters: list[trio.Event] = []
        self._wake = trio.Event()
        self._failure: BaseException | None = None
        self._limiter = trio.CapacityLimiter(1)

    async def persist(self, writes: list[RentalWrite]) -> None:
        if self._failure is not None:
            raise RuntimeError("the ledger failed: the node must stop") from self._failure
        done = trio.Event()
        self._pending.extend(writes)
        self._waiters.append(done)
        self._wake.set()
        await done.wait()
        if self._failure is not None:
            # Nothing may go out that the disk does not hold (Core Lightning stops too).
            raise RuntimeError("the ledger failed: the node must stop") from self._failure

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            batch, waiters = self._pending, self._waiters
            self._pending, self._waiters = [], []
            if not waiters:
                continue
            try:
                await trio.to_thread.run_sync(self.ledger.save, batch, limiter=self._limiter)
            except BaseException as exc:
                self._failure = exc
                for w in waiters:
                    w.set()
                raise
            for w in waiters:
                w.set()
