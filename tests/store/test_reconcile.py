"""The ledger against the chain: a clean ledger reconciles to nothing, each difference is found.

The pure function is checked on hand-made lists; then a ledger on disk, written by the escrow
client's own journal while it sends real transactions to the embedded chain, is held against
that chain with each kind of difference produced deliberately.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from eth_account import Account

from rigmesh.escrow.client import TxOutcome
from rigmesh.escrow.model import ETH
from rigmesh.store.ledger import Ledger, RentalWrite
from rigmesh.store.reconcile import (
    AMOUNT_DIFFERS,
    MISSING_IN_LEDGER,
    MISSING_ON_CHAIN,
    PENDING,
    REORGED,
    ChainEntry,
    LedgerEntry,
    Report,
    reconcile,
    reconcile_account,
)
from tests.market import chain_rentals
from tests.market.chain_rentals import DEPOSIT, PRICE, Party, Rentals

TX = [bytes([i]) * 32 for i in range(10)]
RID = b"\xaa" * 32

# The shared fixtures (a chain snapshot per test), by name for pytest.
chain_module, rentals = chain_rentals.chain_module, chain_rentals.rentals


def kinds(report: Report) -> list[tuple[str, str, int | None, int | None]]:
    return [(d.kind, d.what, d.ledger_amount, d.chain_amount) for d in report.differences]


# -- the pure function ----------------------------------------------------------------------------


def test_matching_lists_reconcile_to_nothing() -> None:
    ledger = [LedgerEntry("deposit", 500, TX[0], block=3),
              LedgerEntry("open", 500, TX[1], RID, block=4),
              LedgerEntry("settle", 200, None, RID, status="seen"),
              LedgerEntry("refund", 300, None, RID, status="seen")]
    chain = [ChainEntry("deposit", 500, TX[0], 3, 0),
             ChainEntry("open", 500, TX[1], 4, 0, RID),
             ChainEntry("claim", 100, TX[2], 5, 0, RID, expected=False),  # the provider's
             ChainEntry("settle", 200, TX[3], 6, 0, RID),
             ChainEntry("refund", 300, TX[3], 6, 1, RID)]
    report = reconcile(ledger, chain, confirmed_to=6, seen_to=6)
    assert report.differences == []
    assert report.matched == 4


def test_each_kind_of_difference() -> None:
    ledger = [
        LedgerEntry("deposit", 500, TX[0], block=3, ref="deposit:a"),  # amount differs
        LedgerEntry("topup", 70, TX[1], RID, block=4, ref="topup:b"),  # gone: reorged
        LedgerEntry("claim", 90, TX[2], RID, block=5, ref="claim:c"),  # reverted on chain
        LedgerEntry("withdraw", 40, TX[3], status="sent", ref="withdraw:d"),  # not mined
        LedgerEntry("deposit", 60, TX[4], block=7, ref="deposit:e"),  # moved by a reorg
        LedgerEntry("settle", 10, None, RID, status="seen", ref="rental"),  # chain lacks it
    ]
    chain = [
        ChainEntry("deposit", 499, TX[0], 3, 0),
        ChainEntry("deposit", 60, TX[4], 8, 0),
        ChainEntry("deposit", 1_000, TX[5], 8, 1),  # from another wallet, same key
        ChainEntry("open", 800, TX[6], 9, 0, RID),  # the watcher has not read block 9
        ChainEntry("withdraw", 5, TX[7], 12, 0),  # not yet confirmed
    ]
    report = reconcile(ledger, chain, confirmed_to=10, seen_to=8, tx_blocks={TX[2]: 5})
    assert kinds(report) == [
        (AMOUNT_DIFFERS, "deposit", 500, 499),
        (REORGED, "topup", 70, None),
        (MISSING_ON_CHAIN, "claim", 90, None),
        (PENDING, "withdraw", 40, None),
        (REORGED, "deposit", 60, 60),
        (MISSING_ON_CHAIN, "settle", 10, None),
        (MISSING_IN_LEDGER, "deposit", None, 1_000),
        (PENDING, "open", None, 800),
        (PENDING, "withdraw", None, 5),
    ]
    by_what = {(d.kind, d.what): d for d in report.differences}
    assert "chain - ledger = -1" in by_what[(AMOUNT_DIFFERS, "deposit")].detail
    assert by_what[(REORGED, "topup")].block == 4
    assert "emitted no claim (it reverted)" in by_what[(MISSING_ON_CHAIN, "claim")].detail
    assert "has not read yet" in by_what[(PENDING, "open")].detail
    assert "confirmation depth" in by_what[(PENDING, "withdraw")].detail
    assert "another wallet" in by_what[(MISSING_IN_LEDGER, "deposit")].action
    assert report.matched == 2


def test_a_transaction_the_ledger_calls_reverted_but_the_chain_has() -> None:
    ledger = [LedgerEntry("topup", 70, TX[1], RID, status="reverted", ref="topup:x")]
    chain = [ChainEntry("topup", 70, TX[1], 4, 0, RID)]
    report = reconcile(ledger, chain, confirmed_to=10, seen_to=10)
    assert kinds(report) == [(MISSING_IN_LEDGER, "topup", 70, 70)]
    assert "as reverted" in report.differences[0].detail


def test_sent_and_mined_without_a_recorded_outcome_matches() -> None:
    """The node journals the deposit it makes before an open but records no outcome for it:
    once the chain has it at depth, the money moved as sent."""
    ledger = [LedgerEntry("deposit", 500, TX[0], status="sent")]
    chain = [ChainEntry("deposit", 500, TX[0], 3, 0)]
    assert reconcile(ledger, chain, confirmed_to=3).differences == []
    assert kinds(reconcile(ledger, chain, confirmed_to=2)) == [(PENDING, "deposit", 500, 500)]


# -- a ledger on disk against the embedded chain ------------------------------------------------



@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    led = Ledger(tmp_path / "ledger.sqlite3")
    yield led
    led.close()


def mined(ledger: Ledger, outcome: TxOutcome) -> None:
    """Record an outcome as the node does after a mined operation."""
    for tx in ledger.transactions():
        if tx.tx_hash == outcome.tx_hash:
            ledger.tx_outcome(tx.op_id, status="mined", block=outcome.block_number)


def settled_record(ledger: Ledger, rid: bytes, paid: int, refunded: int) -> None:
    """The rental row a node keeps once its engine saw the Settled event (the fields
    reconciliation reads)."""
    ledger.save([RentalWrite(rid[:16], "renter", b"peer", rid, "usage:closed", 0,
                             {"use": {"settled": [paid, refunded]}})])


def signed(ledger: Ledger, who: Party, op_id: str, data: bytes, *, nonce: int | None = None
           ) -> bytes:
    """Sign an escrow call by hand (no pre-flight checks) and journal it as the client does."""
    client = who.client
    tx = {"to": client.w3.to_checksum_address(client.address), "value": 0, "data": data,
          "chainId": client.chain_id, "gas": 200_000, "maxFeePerGas": 10**10,
          "maxPriorityFeePerGas": 1,
          "nonce": client.w3.eth.get_transaction_count(
              client.w3.to_checksum_address(who.key.address)) if nonce is None else nonce}
    raw = bytes(Account.from_key(who.key.secret).sign_transaction(tx).raw_transaction)
    ledger.journal()[op_id] = raw
    return raw


def renter_with_ledger(rentals: Rentals, ledger: Ledger) -> tuple[Party, Party]:
    return rentals.party("r", journal=ledger.journal()), rentals.party("p")


def test_a_clean_ledger_reconciles_to_nothing(rentals: Rentals, ledger: Ledger) -> None:
    renter, provider = renter_with_ledger(rentals, ledger)
    start = renter.client.head() + 1
    terms, _deposited, opened = rentals.open(renter, provider)
    mined(ledger, opened)
    rentals.chain.advance(60)
    rentals.settle(renter, provider, terms, 1, 50)
    settled_record(ledger, terms.rental_id, 50 * PRICE, DEPOSIT - 50 * PRICE)
    withdrawn = renter.client.withdraw(rentals.chain.usd, DEPOSIT - 50 * PRICE, op_id="withdraw:1")
    mined(ledger, withdrawn)
    ledger.advance(renter.client.head(), b"h", [])  # the watcher read everything

    report = reconcile_account(ledger, renter.client, from_block=start)
    assert report.differences == []
    # deposit, open, settle, refund, withdraw
    assert report.matched == 5


def test_differences_on_a_real_chain(rentals: Rentals, ledger: Ledger) -> None:
    chain = rentals.chain
    renter, provider = renter_with_ledger(rentals, ledger)
    start = renter.client.head() + 1
    terms, _, opened = rentals.open(renter, provider)
    mined(ledger, opened)
    chain.advance(60)
    rentals.settle(renter, provider, terms, 1, 50)
    # The ledger's rental record says the refund was 1 unit more than the chain paid back.
    settled_record(ledger, terms.rental_id, 50 * PRICE, DEPOSIT - 50 * PRICE + 1)
    # A deposit from the same key outside the node: no journal.
    outside = chain.client(renter.key)
    outside.deposit(ETH, 12_345)
    ledger.advance(renter.client.head(), b"h", [])
    # Signed and journalled, never broadcast (a nonce far ahead): still pending.
    signed(ledger, renter, "withdraw:never-sent",
           renter.client.abi.fn("withdraw").encode(ETH, 1, renter.key.address), nonce=10_000)

    report = reconcile_account(ledger, renter.client, from_block=start)
    assert kinds(report) == [
        (PENDING, "withdraw", 1, None),
        (AMOUNT_DIFFERS, "refund", DEPOSIT - 50 * PRICE + 1, DEPOSIT - 50 * PRICE),
        (MISSING_IN_LEDGER, "deposit", None, 12_345),
    ]


def test_a_reorganization_is_reported(rentals: Rentals, ledger: Ledger) -> None:
    chain = rentals.chain
    renter, _provider = renter_with_ledger(rentals, ledger)
    start = renter.client.head() + 1
    before = chain.snapshot()
    outcome = renter.client.deposit(ETH, 777, op_id="deposit:x")
    mined(ledger, outcome)
    chain.revert(before)  # the block that held it is gone
    chain.tester.mine_blocks(3)
    report = reconcile_account(ledger, renter.client, from_block=start)
    assert kinds(report) == [(REORGED, "deposit", 777, None)]
    assert report.differences[0].block == outcome.block_number


def test_a_mined_transaction_that_reverted_is_missing_on_chain(rentals: Rentals,
                                                                ledger: Ledger) -> None:
    """The ledger says mined, the chain has the transaction, and it moved nothing."""
    chain = rentals.chain
    renter, provider = renter_with_ledger(rentals, ledger)
    start = renter.client.head() + 1
    terms, _, opened = rentals.open(renter, provider)
    mined(ledger, opened)
    ledger.advance(renter.client.head(), b"h", [])
    # A top-up the renter cannot pay (its free balance is empty), sent without the client's
    # pre-flight checks: mined, reverted, and recorded as mined.
    args = (terms.renter, terms.provider, terms.token, terms.deposit, terms.price_per_second,
            terms.max_seconds, terms.challenge_window, terms.receipt_signer, terms.agreement_id)
    raw = signed(ledger, renter, "topup:bad", renter.client.abi.fn("topUp").encode(args, 5))
    tx_hash = chain.w3.eth.send_raw_transaction(raw)
    receipt = chain.w3.eth.wait_for_transaction_receipt(tx_hash)
    assert receipt["status"] == 0
    ledger.tx_outcome("topup:bad", status="mined", block=int(receipt["blockNumber"]))
    report = reconcile_account(ledger, renter.client, from_block=start)
    assert kinds(report) == [(MISSING_ON_CHAIN, "topup", 5, None)]
    assert "reverted" in report.differences[0].detail
