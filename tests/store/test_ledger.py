"""The ledger (rigmesh.store.ledger): what the node relies on to survive a crash.

- a write is on disk once `LedgerWriter.persist` returns (a process SIGKILLed right after keeps it);
- writes that arrive while a commit is under way share the next commit (group commit);
- an applied chain event is kept once, by (transaction hash, log index), and the cursor moves in
  the same commit as the events (all or nothing);
- the file is in WAL mode with synchronous=FULL; writes leave the trio thread;
- bad input is refused, saying which check refused it.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import trio
import trio.testing

from rigmesh.store.ledger import Ledger, LedgerWriter, RentalWrite

ROOT = Path(__file__).resolve().parents[2]


def write(n: int, *, records: tuple[tuple[str, bytes], ...] = ()) -> RentalWrite:
    key = n.to_bytes(16, "big")
    return RentalWrite(key, "renter", b"peer-%d" % n, None, "negotiation:proposed", None,
                       {"n": n, "amount": 10**18 + n}, records)


def count(path: Path, table: str) -> int:
    """Rows of `table`, read through a fresh connection (what another process would see)."""
    with sqlite3.connect(path) as db:
        return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger(tmp_path / "ledger.sqlite3")


# -- durability ------------------------------------------------------------------------------------

_KILLED_AFTER_PERSIST = textwrap.dedent("""
    import os, signal, sys, trio
    from rigmesh.store.ledger import Ledger, LedgerWriter, RentalWrite

    async def main():
        writer = LedgerWriter(Ledger(sys.argv[1]))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run)
            await writer.persist([RentalWrite(
                b"k" * 16, "provider", b"peer", b"r" * 32, "usage:running", None,
                {"amount": 123456789}, (("receipt", b"signed receipt"),))])
            # Nothing after the await: the row must already be on disk.
            os.kill(os.getpid(), signal.SIGKILL)

    trio.run(main)
""")


def test_a_persisted_write_survives_sigkill_right_after_the_await(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_AFTER_PERSIST, str(path)], cwd=ROOT,
        env={"PYTHONPATH": f"{ROOT / 'node'}:{ROOT}", "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == -9, proc.stderr
    reopened = Ledger(path)
    try:
        [row] = reopened.rentals()
        assert (row.key, row.state, row.rental_id) == (b"k" * 16, "usage:running", b"r" * 32)
        assert row.snapshot == {"amount": 123456789}
        assert [(k, d) for k, d, _ in reopened.records(b"k" * 16)] == [
            ("receipt", b"signed receipt")]
    finally:
        reopened.close()


def test_wal_mode_and_synchronous_full(ledger: Ledger) -> None:
    # synchronous is a property of the connection that writes; WAL is kept in the file.
    assert ledger._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # 2 = FULL
    with sqlite3.connect(ledger.path) as fresh:
        assert fresh.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# -- group commit, off the event loop --------------------------------------------------------------


async def test_writes_arriving_during_a_commit_share_the_next_commit(ledger: Ledger) -> None:
    writer = LedgerWriter(ledger)
    entered, release = threading.Event(), threading.Event()
    batches: list[int] = []
    threads: list[int] = []
    save = ledger.save

    def gated_save(writes: list[RentalWrite]) -> None:
        threads.append(threading.get_ident())
        batches.append(len(writes))
        if len(batches) == 1:
            entered.set()
            release.wait(10)
        save(writes)

    ledger.save = gated_save  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        nursery.start_soon(writer.persist, [write(0)])
        await trio.to_thread.run_sync(entered.wait, 10)  # the first commit is under way
        done = 0
        all_done = trio.Event()

        async def persist(n: int) -> None:
            nonlocal done
            await writer.persist([write(n)])
            done += 1
            if done == 20:
                all_done.set()

        for n in range(1, 21):
            nursery.start_soon(persist, n)
        await trio.testing.wait_all_tasks_blocked()
        assert done == 0  # nobody returns before their commit
        release.set()
        with trio.fail_after(10):
            await all_done.wait()
        nursery.cancel_scope.cancel()
    assert batches == [1, 20]
    assert ledger.commits == 2
    assert count(ledger.path, "rentals") == 21
    # Every commit ran in a worker thread, never on the trio thread.
    assert threading.get_ident() not in threads and len(threads) == 2


async def test_a_failed_commit_stops_every_writer(ledger: Ledger) -> None:
    writer = LedgerWriter(ledger)

    def broken(writes: list[RentalWrite]) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    ledger.save = broken  # type: ignore[method-assign]
    with pytest.raises(BaseExceptionGroup) as failed:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run)
            with pytest.raises(RuntimeError, match="the ledger failed: the node must stop"):
                await writer.persist([write(1)])
    assert failed.group_contains(sqlite3.OperationalError, match="disk I/O error")
    # A later write is refused at once: nothing may go out that the disk does not hold.
    with pytest.raises(RuntimeError, match="the ledger failed"):
        await writer.persist([write(2)])


def test_later_steps_of_a_rental_win_and_records_append(ledger: Ledger) -> None:
    key = write(7).key
    ledger.save([write(7, records=(("heartbeat", b"h1"),))])
    ledger.save([RentalWrite(key, "renter", b"peer-7", b"r" * 32, "usage:closed", 10001,
                             {"n": 7, "amount": 5}, (("receipt", b"r1"),))])
    [row] = ledger.rentals()
    assert (row.state, row.ended_by, row.rental_id, row.snapshot["amount"]) == (
        "usage:closed", 10001, b"r" * 32, 5)
    assert row.closed and ledger.rentals(open_only=True) == []
    assert [k for k, _, _ in ledger.records(key)] == ["heartbeat", "receipt"]
    assert [d for _, d, _ in ledger.records(key, "receipt")] == [b"r1"]


# -- the chain cursor and applied events -----------------------------------------------------------


def test_applied_events_are_kept_once_by_tx_hash_and_log_index(ledger: Ledger) -> None:
    tx = b"\x11" * 32
    ledger.advance(5, b"\x05" * 32, [(tx, 0, 5), (tx, 1, 5)])
    # A replayed read: the same events again, with one new one.
    ledger.advance(6, b"\x06" * 32, [(tx, 0, 5), (tx, 1, 5), (b"\x22" * 32, 0, 6)])
    assert count(ledger.path, "applied_events") == 3
    assert ledger.applied(tx, 1) and not ledger.applied(tx, 2)
    assert ledger.cursor() == (6, b"\x06" * 32)


def test_the_cursor_moves_only_with_its_events(ledger: Ledger) -> None:
    ledger.advance(5, b"\x05" * 32, [(b"\x11" * 32, 0, 5)])
    # The second event cannot be stored (its log index is no number): the whole commit is
    # refused, the first event included, so the cursor does not move past events that were
    # never marked applied.
    with pytest.raises(sqlite3.ProgrammingError, match="Error binding parameter 2"):
        ledger.advance(9, b"\x09" * 32, [(b"\x22" * 32, 0, 9), (b"\x33" * 32, object(), 9)])  # type: ignore[list-item]
    assert ledger.cursor() == (5, b"\x05" * 32)
    assert not ledger.applied(b"\x22" * 32, 0)
    assert count(ledger.path, "applied_events") == 1


def test_offer_seq_never_repeats_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    first = Ledger(path)
    assert [first.next_seq(1), first.next_seq(1), first.next_seq(2, at_least=40)] == [1, 2, 40]
    first.close()
    again = Ledger(path)
    assert [again.next_seq(1), again.next_seq(2)] == [3, 41]
    again.close()


# -- the transaction journal -----------------------------------------------------------------------


def test_the_journal_holds_a_signed_transaction_before_its_outcome(ledger: Ledger) -> None:
    journal = ledger.journal()
    journal["open:ab"] = b"\x02raw signed tx"
    assert "open:ab" in journal and len(journal) == 1 and list(journal) == ["open:ab"]
    [row] = ledger.transactions("open:")
    assert (row.status, row.block) == ("sent", None)
    ledger.tx_outcome("open:ab", status="mined", block=12)
    [row] = ledger.transactions()
    assert (row.status, row.block) == ("mined", 12)
    del journal["open:ab"]
    assert len(journal) == 0
    with pytest.raises(KeyError, match="open:ab"):
        journal["open:ab"]


# -- bad input -------------------------------------------------------------------------------------


def test_an_outcome_for_an_unknown_transaction_is_refused(ledger: Ledger) -> None:
    with pytest.raises(KeyError, match="no transaction settle:cd in the journal"):
        ledger.tx_outcome("settle:cd", status="mined", block=3)
    ledger.journal()["settle:cd"] = b"raw"
    with pytest.raises(ValueError, match="transaction status 'lost'"):
        ledger.tx_outcome("settle:cd", status="lost")
    assert ledger.transactions()[0].status == "sent"


@pytest.mark.parametrize(("bad", "check"), [
    ({"role": "arbiter"}, "role 'arbiter'"),
    ({"records": (("invoice", b"x"),)}, "record kind 'invoice'"),
    ({"state": "running"}, "state 'running'"),
])
def test_a_malformed_rental_write_is_refused_and_nothing_is_written(
        ledger: Ledger, bad: dict[str, object], check: str) -> None:
    from dataclasses import replace

    good = write(1, records=(("agreement", b"a"),))
    with pytest.raises(ValueError, match=check):
        ledger.save([good, replace(write(2), **bad)])  # type: ignore[arg-type]
    assert count(ledger.path, "rentals") == 0 and count(ledger.path, "records") == 0
