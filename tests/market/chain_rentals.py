"""Real rentals on the embedded chain through the escrow client, for history and reconciliation.

Test modules import the fixtures `chain_module` and `rentals` from here.

Each helper sends the transactions the nodes would (deposit, open, claim, settle, request close,
finalize) from the real accounts, so the escrow's events are the contract's own.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field

import pytest

from rigmesh.escrow.client import EscrowClient, TxOutcome
from rigmesh.wire.eip712 import EthKey, Receipt, Terms
from tests.escrow.chains import MIN_WINDOW, TestChain, key, pyevm_chain

PRICE = 1_000  # base units per second
DEPOSIT = 1_000_000
MAX_SECONDS = 600

_agreements = itertools.count(1)


@dataclass
class Party:
    key: EthKey
    client: EscrowClient


@dataclass
class Rentals:
    chain: TestChain
    journals: dict[bytes, MutableMapping[str, bytes]] = field(default_factory=dict)

    def party(self, name: str, journal: MutableMapping[str, bytes] | None = None) -> Party:
        who = self.chain.fund(key(name))
        return Party(who, self.chain.client(who, journal=journal))

    def open(self, renter: Party, provider: Party, *, deposit: int = DEPOSIT,
             max_seconds: int = MAX_SECONDS) -> tuple[Terms, TxOutcome, TxOutcome]:
        """Approve, deposit and open; returns the terms and the deposit and open outcomes."""
        usd = self.chain.usd
        terms = Terms(
            renter=renter.key.address, provider=provider.key.address, token=usd,
            deposit=deposit, price_per_second=PRICE, max_seconds=max_seconds,
            challenge_window=MIN_WINDOW, receipt_signer=renter.key.address,
            agreement_id=next(_agreements).to_bytes(32, "big"),
        )  # fmt: skip
        rid = terms.rental_id.hex()
        renter.client.approve(usd, deposit, op_id=f"approve:open:{rid}")
        deposited = renter.client.deposit(usd, deposit, op_id=f"deposit:open:{rid}")
        opened = renter.client.open(terms, op_id=f"open:{rid}")
        return terms, deposited, opened

    def receipt(self, renter: Party, terms: Terms, seq: int, uptime: int) -> tuple[Receipt, bytes]:
        receipt = Receipt(terms.rental_id, seq, uptime, uptime * PRICE, bytes(32))
        return receipt, renter.key.sign_digest(renter.client.receipt_digest(receipt))

    def claim(self, renter: Party, provider: Party, terms: Terms, seq: int,
              uptime: int) -> TxOutcome:
        receipt, sig = self.receipt(renter, terms, seq, uptime)
        return provider.client.claim(terms, receipt, sig,
                                     op_id=f"claim:{terms.rental_id.hex()}:{seq}")

    def settle(self, renter: Party, provider: Party, terms: Terms, seq: int,
               uptime: int) -> TxOutcome:
        receipt, sig = self.receipt(renter, terms, seq, uptime)
        return provider.client.settle(terms, receipt, sig,
                                      op_id=f"settle:{terms.rental_id.hex()}")

    def request_close(self, renter: Party, terms: Terms) -> TxOutcome:
        return renter.client.request_close(terms, op_id=f"requestclose:{terms.rental_id.hex()}")

    def finalize(self, who: Party, terms: Terms) -> TxOutcome:
        """Move past the deadline and finalize."""
        state = who.client.rental_state(terms.rental_id)
        self.chain.advance(state.deadline - who.client.chain_time() + 1)
        return who.client.finalize(terms, op_id=f"finalize:{terms.rental_id.hex()}")


@pytest.fixture(scope="module")
def chain_module() -> TestChain:
    return pyevm_chain()


@pytest.fixture
def rentals(chain_module: TestChain) -> Iterator[Rentals]:
    """A fresh start for each test: the chain is reverted to a snapshot afterwards."""
    snap = chain_module.snapshot()
    try:
        yield Rentals(chain_module)
    finally:
        chain_module.revert(snap)
