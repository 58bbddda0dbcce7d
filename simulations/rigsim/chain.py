"""The chain behind a simulation: the executable escrow model (the default) or the real contract
on an embedded py-evm chain (`ContractChain`, for agreement with reality on small runs).

Both take the same operations the rental machines submit (`rigmesh.rental.actions`), at a given
chain time, and return the escrow's events or raise the typed error the contract reverts with,
so the machines cannot tell them apart.
"""

from __future__ import annotations

from typing import Any, Protocol

from rigmesh.escrow.errors import EscrowError
from rigmesh.escrow.model import EscrowModel, Event, RentalState, Status
from rigmesh.rental.actions import (
    ChainOp,
    Claim,
    Finalize,
    Open,
    OpenFor,
    RequestClose,
    Settle,
    TopUp,
)
from rigmesh.wire import eip712

NO_RECEIPT = eip712.Receipt(bytes(32), 0, 0, 0, bytes(32))
#: The escrow's bounds on challenge windows, as the reference deployment sets them.
MIN_WINDOW, MAX_WINDOW = 60, 7 * 86_400


class Chain(Protocol):
    chain_id: int
    escrow: bytes
    token: bytes

    def fund(self, account: eip712.EthKey, amount: int, now: int) -> None:
        """Give `account` `amount` of the token, free in the escrow (and gas, where it costs)."""
        ...

    def execute(self, sender: eip712.EthKey, op: ChainOp, now: int) -> tuple[int, list[Event]]:
        """Run `op` from `sender` at chain time `now`: (block time, events), or the
        `EscrowError` it reverts with."""
        ...

    def balance_of(self, account: bytes) -> int:
        ...

    def rental_state(self, rental_id: bytes) -> RentalState:
        ...

    def nonce_of(self, renter: bytes) -> int:
        ...

    def conservation_errors(self) -> dict[bytes, tuple[int, int]]:
        ...

    def holdings(self) -> tuple[int, int]:
        """(tokens the escrow holds, what it owes: free balances plus open rentals)."""
        ...


class ModelChain:
    """`rigmesh.escrow.model.EscrowModel` as the chain: every rule of the contract, no EVM.
    `check_signatures=False` (the default in simulations) accepts any signature; every other
    rule holds."""

    def __init__(self, chain_id: int, escrow: bytes, token: bytes, *,
                 check_signatures: bool) -> None:
        self.chain_id, self.escrow, self.token = chain_id, escrow, token
        self.model = EscrowModel(chain_id, escrow, MIN_WINDOW, MAX_WINDOW,
                                 check_signatures=check_signatures)

    def fund(self, account: eip712.EthKey, amount: int, now: int) -> None:
        if amount <= 0:
            return
        m, a = self.model, account.address
        m.wallets.mint(self.token, a, amount)
        m.wallets.approve(self.token, a, self.escrow, amount)
        m.deposit(a, self.token, amount)

    def execute(self, sender: eip712.EthKey, op: ChainOp, now: int) -> tuple[int, list[Event]]:
        m, me = self.model, sender.address
        if isinstance(op, Open):
            return now, m.open(me, op.terms, now=now)
        if isinstance(op, OpenFor):
            return now, m.open_for(me, op.terms, op.nonce, op.deadline, op.signature, now=now)
        if isinstance(op, TopUp):
            return now, m.top_up(me, op.terms, op.amount, now=now)
        if isinstance(op, Claim):
            return now, m.claim(me, op.terms, op.receipt, op.signature, now=now)
        if isinstance(op, Settle):
            return now, m.settle(me, op.terms, op.receipt or NO_RECEIPT, op.signature, now=now)
        if isinstance(op, RequestClose):
            return now, m.request_close(me, op.terms, now=now)
        assert isinstance(op, Finalize)
        return now, m.finalize(me, op.terms, now=now)

    def balance_of(self, account: bytes) -> int:
        return self.model.balance_of(self.token, account)

    def rental_state(self, rental_id: bytes) -> RentalState:
        return self.model.rental_state(rental_id)

    def nonce_of(self, renter: bytes) -> int:
        return self.model.nonce_of(renter)

    def conservation_errors(self) -> dict[bytes, tuple[int, int]]:
        return self.model.conservation_errors()

    def holdings(self) -> tuple[int, int]:
        m = self.model
        return m.wallets.balance(self.token, self.escrow), m.liabilities().get(self.token, 0)

    def open_rentals(self) -> int:
        return sum(1 for r in self.model.rentals.values() if r.status is Status.OPEN)


class ContractChain:
    """The real `RentalEscrow` contract and a test stablecoin on web3's embedded py-evm chain,
    driven through `EscrowClient` (real transactions, real signatures checked by the EVM).

    Chain time follows the simulation: before each transaction the chain travels to the
    operation's time. py-evm mines one block per transaction, each at least a second after the
    last, so operations that share a simulated block land a second or two apart; scenarios
    checked against it keep their transactions apart."""

    def __init__(self, start: int) -> None:
        # Imported here: web3 and py-evm are slow to import and only this chain needs them.
        from web3 import EthereumTesterProvider, Web3

        from rigmesh.escrow.client import deploy_contract, deploy_escrow
        from rigmesh.escrow.contract import token_artifact

        provider = EthereumTesterProvider()
        self.w3 = Web3(provider)
        self.tester: Any = provider.ethereum_tester
        self.chain_id = int(self.w3.eth.chain_id)
        self.funder = eip712.EthKey(provider.ethereum_tester.backend.account_keys[0].to_bytes())
        latest = self._latest()
        if start <= latest + 600:
            raise ValueError(f"start the simulation after the chain's clock ({latest})")
        self._travel(start - 600)  # set-up transactions happen before t = 0
        self.escrow = deploy_escrow(self.w3, self.funder, chain_id=self.chain_id,
                                    min_challenge_window=MIN_WINDOW,
                                    max_challenge_window=MAX_WINDOW)
        self.token = deploy_contract(self.w3, self.funder, self.chain_id, token_artifact())
        self._token_artifact = token_artifact()
        self._clients: dict[bytes, Any] = {}
        self._accounts: dict[bytes, None] = {}
        self._rentals: dict[bytes, None] = {}

    def _latest(self) -> int:
        return int(self.w3.eth.get_block("latest")["timestamp"])

    def _travel(self, t: int) -> None:
        # py-evm mines the next transaction at the pending block's time, latest + 1 at least.
        if t > self._latest() + 1:
            self.tester.time_travel(t)

    def client(self, key: eip712.EthKey) -> Any:
        from rigmesh.escrow.client import EscrowClient

        c = self._clients.get(key.address)
        if c is None:
            funder = self._clients.get(self.funder.address) or EscrowClient(
                self.w3, self.escrow, self.funder, chain_id=self.chain_id)
            self._clients[self.funder.address] = funder
            if key.address != self.funder.address:
                funder.send_transaction(b"", value=10**19, to=key.address)  # gas money
            c = self._clients[key.address] = EscrowClient(
                self.w3, self.escrow, key, chain_id=self.chain_id)
        self._accounts[key.address] = None
        return c

    def fund(self, account: eip712.EthKey, amount: int, now: int) -> None:
        c = self.client(account)
        if amount <= 0:
            return
        self._travel(now)
        funder = self.client(self.funder)
        funder.send_transaction(self._token_artifact.fn("mint").encode(account.address, amount),
                                to=self.token)
        c.approve(self.token, amount)
        c.deposit(self.token, amount)

    def execute(self, sender: eip712.EthKey, op: ChainOp, now: int) -> tuple[int, list[Event]]:
        c = self.client(sender)
        self._rentals[op.terms.rental_id] = None
        self._accounts[op.terms.renter] = self._accounts[op.terms.provider] = None
        self._travel(now)
        if isinstance(op, Open):
            out = c.open(op.terms)
        elif isinstance(op, OpenFor):
            out = c.open_for(op.terms, op.nonce, op.deadline, op.signature)
        elif isinstance(op, TopUp):
            out = c.top_up(op.terms, op.amount)
        elif isinstance(op, Claim):
            out = c.claim(op.terms, op.receipt, op.signature)
        elif isinstance(op, Settle):
            out = c.settle(op.terms, op.receipt, op.signature)
        elif isinstance(op, RequestClose):
            out = c.request_close(op.terms)
        else:
            assert isinstance(op, Finalize)
            out = c.finalize(op.terms)
        return out.block_time, out.events

    def balance_of(self, account: bytes) -> int:
        return int(self.client(self.funder).balance_of(self.token, account))

    def rental_state(self, rental_id: bytes) -> RentalState:
        return self.client(self.funder).rental_state(rental_id)  # type: ignore[no-any-return]

    def nonce_of(self, renter: bytes) -> int:
        return int(self.client(self.funder).nonce_of(renter))

    def holdings(self) -> tuple[int, int]:
        """The escrow's token balance, and the free balances of every account it has seen
        plus what its open rentals still hold."""
        held = int(self.client(self.funder).token_balance(self.token, self.escrow))
        owed = sum(self.balance_of(a) for a in self._accounts)
        for rid in self._rentals:
            s = self.rental_state(rid)
            if s.status is Status.OPEN:
                owed += s.deposit - s.paid
        return held, owed

    def conservation_errors(self) -> dict[bytes, tuple[int, int]]:
        held, owed = self.holdings()
        return {} if held == owed else {self.token: (held, owed)}

    def open_rentals(self) -> int:
        return sum(1 for rid in self._rentals if self.rental_state(rid).status is Status.OPEN)


__all__ = ["Chain", "ContractChain", "EscrowError", "ModelChain"]
