"""Differential test: the Python model and the Solidity contract (on py-evm) agree.

Seeded random sequences of escrow operations (deposits in ETH, a permit stablecoin and a
fee-on-transfer token; permits; withdrawals to refusing contracts, to the zero address and to the
escrow itself; open/openFor with
good and bad terms, nonces and signatures; top-ups; claims and settles with valid and invalid
receipts: wrong signer, wrong rental, over price, over elapsed time, after the deadline, high-s
and malformed signatures; close requests and finalization around the deadline; wrong callers
everywhere) run against both. After every operation both must agree on the outcome: the same
events, or a revert with the same custom error and the same arguments. After every sequence
they must agree on every free balance, rental state, nonce and token balance, and the model's
conservation invariant must hold.

Speed: the chain is set up once; each sequence starts from an eth-tester snapshot. An operation
is executed with eth_call on the pending block first (which yields the revert data at exactly
the timestamp the next transaction will see) and mined only when it succeeds.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial

import pytest
from eth.vm.message import Message
from eth_hash.auto import keccak
from web3 import EthereumTesterProvider, Web3

from rigmesh.escrow.client import permit_digest
from rigmesh.escrow.contract import (
    NO_RECEIPT,
    Artifact,
    escrow_artifact,
    receipt_arg,
    terms_arg,
    token_artifact,
)
from rigmesh.escrow.errors import EscrowError, decode_revert
from rigmesh.escrow.model import (
    ETH,
    MAX_DEPOSIT,
    UINT256_MAX,
    EscrowModel,
    Event,
    Status,
    Wallets,
)
from rigmesh.wire.eip712 import SECP256K1_N, EthKey, OpenRequest, Receipt, Terms

SEQUENCES = int(os.environ.get("RIGMESH_DIFF_SEQUENCES", "200"))
MIN_WINDOW, MAX_WINDOW = 10, 1000
ZERO = bytes(20)
GAS = 1_000_000
#: RentalEscrow's storage: EIP712's two fallback strings take slots 0 and 1, then _balances.
ESCROW_BALANCES_SLOT = 2

Model = EscrowModel
ModelOp = Callable[[EscrowModel, int], list[Event]]


def _key(name: str) -> EthKey:
    return EthKey(keccak(b"rigmesh differential " + name.encode()))


KEYS = {n: _key(n) for n in ("renterA", "renterB", "providerP", "providerQ", "signerS", "eve")}
ADDR = {n: k.address for n, k in KEYS.items()}
BY_ADDR = {k.address: k for k in KEYS.values()}
RENTERS = [ADDR["renterA"], ADDR["renterB"]]
PROVIDERS = [ADDR["providerP"], ADDR["providerQ"]]
EVERYONE = list(ADDR.values())


def _hex(b: bytes) -> str:
    return "0x" + b.hex()


class Chain:
    """eth-tester with the escrow and the test tokens deployed once, reset by snapshot."""

    def __init__(self) -> None:
        self._state = None
        provider = EthereumTesterProvider()
        self.w3 = Web3(provider)
        self.et = provider.ethereum_tester
        self.chain_id = self.w3.eth.chain_id
        funder = self.et.get_accounts()[0]
        for key in KEYS.values():
            self.et.add_account(_hex(key.secret))
            self.et.send_transaction(
                {"from": funder, "to": _hex(key.address), "value": 10**22, "gas": 21000}
            )
        self.escrow_abi = escrow_artifact()
        self.token_abi = token_artifact("TestStablecoin")
        self.fot_abi = token_artifact("FeeOnTransferToken")
        self.escrow = self._deploy(funder, self.escrow_abi, MIN_WINDOW, MAX_WINDOW)
        self.usd = self._deploy(funder, self.token_abi)
        self.fot = self._deploy(funder, self.fot_abi)
        for account in ADDR.values():
            for token, abi in ((self.usd, self.token_abi), (self.fot, self.fot_abi)):
                self.send(funder, token, abi.fn("mint").encode(account, 10**12))
                approve = abi.fn("approve").encode(self.escrow, UINT256_MAX)
                self.send(_hex(account), token, approve)
        # Renters start with free balances, so most opens need no deposit first.
        deposit = self.escrow_abi.fn("deposit")
        for renter in RENTERS:
            self.send(_hex(renter), self.escrow, deposit.encode(ETH, 10**6), 10**6)
            self.send(_hex(renter), self.escrow, deposit.encode(self.usd, 10**6))
        # renterB then revokes its allowances: it deposits with permits (or fails without one).
        for token, abi in ((self.usd, self.token_abi), (self.fot, self.fot_abi)):
            self.send(_hex(ADDR["renterB"]), token, abi.fn("approve").encode(self.escrow, 0))
        # Run ahead of the wall clock, so every block is exactly one second after its parent
        # and a sequence's timestamps depend only on its seed.
        self.travel(self.pending_time() + 10**6)
        self.snapshot = self.et.take_snapshot()
        self.model = self.initial_model()

    def _deploy(self, sender: str, artifact: Artifact, *args: object) -> bytes:
        tx = {"from": sender, "data": _hex(artifact.initcode(*args)), "gas": 6_000_000}
        receipt = self.et.get_transaction_receipt(self.et.send_transaction(tx))
        assert receipt["status"] == 1
        return bytes.fromhex(receipt["contract_address"][2:])

    def send(self, sender: str, to: bytes, data: bytes, value: int = 0) -> dict:
        self._state = None
        tx = {"from": sender, "to": _hex(to), "data": _hex(data), "value": value, "gas": GAS}
        return self.et.get_transaction_receipt(self.et.send_transaction(tx))

    def call(self, to: bytes, data: bytes, *, sender: bytes | None = None, value: int = 0) -> bytes:
        """Run a call on the pending block's state and discard it; raise the decoded revert.

        Straight through py-evm (eth_call through eth-tester costs four times as much): the
        pending block carries the timestamp the next mined transaction will see.
        """
        sender = sender or ADDR["eve"]
        if self._state is None:
            # One state object per pending block keeps py-evm's trie caches warm across calls.
            self._state = self.et.backend.chain.get_vm().state
        state = self._state
        snapshot = state.snapshot()
        try:
            message = Message(
                gas=GAS, to=to, sender=sender, value=value, data=data, code=state.get_code(to)
            )
            context = state.get_transaction_context_class()(gas_price=0, origin=sender)
            computation = state.computation_class.apply_message(state, message, context)
        finally:
            state.revert(snapshot)
        if computation.is_error:
            raise decode_revert(computation.output)
        return computation.output

    def view(self, artifact: Artifact, to: bytes, name: str, *args: object) -> tuple:
        fn = artifact.fn(name)
        return fn.decode_output(self.call(to, fn.encode(*args)))

    def pending_time(self) -> int:
        return int(self.et.backend.chain.header.timestamp)

    def travel(self, timestamp: int) -> None:
        self._state = None
        self.et.time_travel(timestamp)

    def reset(self) -> None:
        self._state = None
        self.et.revert_to_snapshot(self.snapshot)

    def token_balance(self, token: bytes, account: bytes) -> int:
        if token == ETH:
            return int(self.et.get_balance(_hex(account)))
        return self.view(self.token_abi, token, "balanceOf", account)[0]

    # Reading balances from storage is ~20x cheaper than running the view in the EVM; the
    # layout is checked against the views once per sequence (see _compare_state).
    def _storage(self, address: bytes, slot: bytes) -> int:
        if self._state is None:
            self._state = self.et.backend.chain.get_vm().state
        return self._state.get_storage(address, int.from_bytes(slot, "big"))

    def stored_free_balance(self, token: bytes, account: bytes) -> int:
        inner = keccak(bytes(12) + token + ESCROW_BALANCES_SLOT.to_bytes(32, "big"))
        return self._storage(self.escrow, keccak(bytes(12) + account + inner))

    def stored_token_balance(self, token: bytes, account: bytes) -> int:
        return self._storage(token, keccak(bytes(12) + account + bytes(32)))

    def initial_model(self) -> EscrowModel:
        wallets = Wallets(transfer_fee_bps={self.fot: 100})
        for account in [*EVERYONE, self.escrow]:
            # Gas makes ETH balances of senders drift from the model: give the model plenty and
            # compare only the escrow's ETH.
            wallets.mint(ETH, account, 10**30 if account != self.escrow else 0)
            for token in (self.usd, self.fot):
                wallets.mint(token, account, self.token_balance(token, account))
                allowance = self.view(self.token_abi, token, "allowance", account, self.escrow)[0]
                wallets.approve(token, account, self.escrow, allowance)
        # Contracts without a receive function refuse ETH.
        wallets.rejects_eth |= {self.escrow, self.usd, self.fot}
        wallets.mint(ETH, self.escrow, self.token_balance(ETH, self.escrow))
        model = EscrowModel(
            chain_id=self.chain_id,
            address=self.escrow,
            min_challenge_window=MIN_WINDOW,
            max_challenge_window=MAX_WINDOW,
            wallets=wallets,
        )
        for token in (ETH, self.usd):
            for account in EVERYONE:
                free = self.view(self.escrow_abi, self.escrow, "balanceOf", token, account)[0]
                if free:
                    model.free[(token, account)] = free
        assert not model.conservation_errors()
        return model


@dataclass
class Op:
    label: str
    sender: bytes
    data: bytes
    apply: ModelOp
    value: int = 0
    to: bytes | None = None  # None: the escrow


@dataclass
class Sequence:
    """Generates operations for one seed, looking at the model's state to make them relevant."""

    rng: random.Random
    chain: Chain
    model: EscrowModel
    terms: list[Terms] = field(default_factory=list)

    @property
    def abi(self) -> Artifact:
        return self.chain.escrow_abi

    def pick(self, options: list):  # type: ignore[no-untyped-def]
        return options[self.rng.randrange(len(options))]

    def amount(self, typical: int = 10_000) -> int:
        r = self.rng.random()
        if r < 0.08:
            return 0
        if r < 0.12:
            return MAX_DEPOSIT + self.rng.randrange(1, 3)
        return self.rng.randrange(1, typical)

    def caller(self, right: bytes) -> bytes:
        return right if self.rng.random() < 0.85 else self.pick(EVERYONE)

    # ------------------------------------------------------------------ generation

    def new_terms(self) -> Terms:
        renter = self.pick(RENTERS)
        terms = Terms(
            renter=renter,
            provider=self.pick(PROVIDERS),
            token=self.pick([ETH, ETH, self.chain.usd]),
            deposit=self.rng.randrange(1, 50_000),
            price_per_second=self.rng.randrange(1, 500),
            max_seconds=self.rng.randrange(5, 200),
            challenge_window=self.rng.randrange(MIN_WINDOW, 60),
            receipt_signer=self.pick([ADDR["signerS"], ADDR["signerS"], renter]),
            agreement_id=self.rng.randbytes(32),
        )
        if self.rng.random() < 0.2:
            # One field out of bounds: zero, too large, or a window outside [min, max].
            broken = self.pick([
                ("renter", ZERO), ("provider", ZERO), ("receipt_signer", ZERO), ("deposit", 0),
                ("price_per_second", 0), ("max_seconds", 0), ("deposit", MAX_DEPOSIT + 1),
                ("deposit", MAX_DEPOSIT), ("max_seconds", 2**64 - 1), ("max_seconds", 2**40),
                ("challenge_window", MIN_WINDOW - 1), ("challenge_window", MAX_WINDOW + 1),
                ("challenge_window", MAX_WINDOW), ("challenge_window", 2**64 - 1),
                ("price_per_second", 2**255),
            ])  # fmt: skip
            terms = replace(terms, **{broken[0]: broken[1]})
        return terms

    def some_terms(self, fresh: bool = False) -> Terms:
        if not self.terms or self.rng.random() < (0.7 if fresh else 0.2):
            self.terms.append(self.new_terms())
            return self.terms[-1]
        # Prefer rentals that are open: that is where the interesting checks are.
        open_ = [t for t in self.terms if self.model.rental_state(t.rental_id).status == 1]
        if open_ and self.rng.random() < 0.75:
            return self.pick(open_)
        return self.pick(self.terms)

    def sign(self, key: EthKey, digest: bytes) -> bytes:
        sig = key.sign_digest(digest)
        kind = self.rng.random()
        if kind < 0.9:
            return sig
        mutation = self.pick(["high_s", "short", "v0", "garbage"])
        if mutation == "high_s":
            # Same signer, other half of the curve: ecrecover accepts it, OpenZeppelin does not.
            s = SECP256K1_N - int.from_bytes(sig[32:64], "big")
            return sig[:32] + s.to_bytes(32, "big") + bytes([55 - sig[64]])
        if mutation == "short":
            return sig[:64]
        if mutation == "v0":
            return sig[:64] + bytes([sig[64] - 27])
        return self.rng.randbytes(65)

    def receipt(self, terms: Terms, now: int) -> tuple[Receipt, bytes]:
        state = self.model.rental_state(terms.rental_id)
        elapsed = max(0, now - state.opened_at) if state.status else self.rng.randrange(0, 100)
        uptime = self.rng.randrange(0, elapsed + 1)
        amount = self.rng.randrange(0, terms.price_per_second * uptime + 1)
        rental_id = terms.rental_id
        signer = BY_ADDR.get(terms.receipt_signer, KEYS["eve"])
        r = self.rng.random()
        if r < 0.06:
            rental_id = self.rng.randbytes(32)
        elif r < 0.12:
            amount = terms.price_per_second * uptime + self.rng.randrange(1, 5)
        elif r < 0.18:
            uptime = elapsed + self.rng.randrange(1, 5)
            amount = min(amount, terms.price_per_second * uptime)
        elif r < 0.24:
            signer = KEYS["eve"]
        elif r < 0.34:
            amount = terms.price_per_second * uptime  # the most it may ask, often > deposit
        amount = min(amount, UINT256_MAX)  # huge prices: the receipt still has to encode
        receipt = Receipt(rental_id, self.rng.randrange(0, 2**64), uptime, amount, bytes(32))
        return receipt, self.sign(signer, self.model.receipt_digest(receipt))

    def fund(self, account: bytes, token: bytes, amount: int) -> list[Op]:
        """Usually deposit what an open lacks first, so that most opens get past the balance."""
        missing = amount - self.model.balance_of(token, account)
        if missing <= 0 or missing > 10**9 or account == ZERO or self.rng.random() < 0.1:
            return []
        if account == ADDR["renterB"] and token != ETH:
            # renterB gave no allowance: it funds itself through permits.
            return [self.permit_op(self.chain.pending_time(), account, token, missing)]
        data = self.abi.fn("deposit").encode(token, missing)
        value = missing if token == ETH else 0
        return [
            Op(
                f"deposit({token.hex()[:6]}, {missing})",
                account,
                data,
                lambda m, t: m.deposit(account, token, missing, value=value),
                value=value,
            )
        ]

    def next_op(self) -> Op | list[Op] | int:
        """An operation, or an int: move chain time to that timestamp first."""
        now = self.chain.pending_time()
        kind = self.rng.choices(
            [
                "time", "deposit", "permit", "withdraw", "open", "openFor", "topUp", "claim",
                "settle", "requestClose", "finalize",
            ],
            weights=[14, 8, 4, 6, 8, 4, 4, 20, 8, 7, 5],
        )[0]  # fmt: skip
        fn = self.abi.fn
        if kind == "time":
            open_ = [t for t in self.terms if self.model.rental_state(t.rental_id).status == 1]
            if open_ and self.rng.random() < 0.6:
                deadline = self.model.rental_state(self.pick(open_).rental_id).deadline
                return deadline + self.rng.choice([-1, 0, 1])
            return now + self.rng.randrange(1, 40)
        if kind == "deposit":
            sender = self.pick(EVERYONE)
            token = self.pick([ETH, ETH, self.chain.usd, self.chain.fot])
            amount = self.amount() if self.rng.random() > 0.05 else self.rng.randrange(1, 100)
            value = amount if token == ETH else 0
            if self.rng.random() < 0.08:
                value = self.pick([0, amount + 1, 1])
            if value > 10**20:
                value = 1  # more ETH than anyone has: the node would refuse the transaction
            return Op(
                f"deposit({token.hex()[:6]}, {amount}, value={value})",
                sender,
                fn("deposit").encode(token, amount),
                lambda m, t: m.deposit(sender, token, amount, value=value),
                value=value,
            )
        if kind == "permit":
            return self.permit_op(now)
        if kind == "withdraw":
            sender = self.pick(RENTERS) if self.rng.random() < 0.6 else self.pick(EVERYONE)
            token = self.pick([ETH, ETH, self.chain.usd, self.chain.fot])
            free = self.model.balance_of(token, sender)
            amount = (
                self.rng.randrange(1, free + 1)
                if free and self.rng.random() < 0.8
                else (self.amount())
            )
            to = sender
            if self.rng.random() < 0.4:
                # Refused recipients (zero, the escrow), contracts without receive(), anyone.
                to = self.pick([ZERO, self.chain.escrow, self.chain.usd, self.chain.fot,
                                self.pick(EVERYONE)])  # fmt: skip
            return Op(
                f"withdraw({token.hex()[:6]}, {amount}, to={to.hex()[:6]})",
                sender,
                fn("withdraw").encode(token, amount, to),
                lambda m, t: m.withdraw(sender, token, amount, to),
            )
        terms = self.some_terms(fresh=kind in ("open", "openFor"))
        targ = terms_arg(terms)
        opened = self.model.rental_state(terms.rental_id).status != Status.NONE
        if kind not in ("open", "openFor") and not opened and self.rng.random() < 0.8:
            kind = "open"  # most rental operations should find a rental
        if kind == "open":
            sender = self.caller(terms.renter)
            op = Op(
                "open", sender, fn("open").encode(targ), lambda m, t: m.open(sender, terms, now=t)
            )
            return [*self.fund(terms.renter, terms.token, terms.deposit), op]
        if kind == "openFor":
            sender = self.pick(EVERYONE)
            nonce = self.model.nonce_of(terms.renter)
            if self.rng.random() < 0.1:
                nonce += self.pick([1, -1]) if nonce else 1
            deadline = now + self.rng.randrange(0, 100) if self.rng.random() > 0.1 else now - 1
            digest = self.model.open_request_digest(OpenRequest(terms, nonce, deadline))
            key = BY_ADDR.get(terms.renter, KEYS["eve"])
            if self.rng.random() < 0.08:
                key = KEYS["eve"]
            sig = self.sign(key, digest)
            op = Op(
                f"openFor(nonce={nonce})",
                sender,
                fn("openFor").encode(targ, nonce, deadline, sig),
                lambda m, t: m.open_for(sender, terms, nonce, deadline, sig, now=t),
            )
            return [*self.fund(terms.renter, terms.token, terms.deposit), op]
        if kind == "topUp":
            sender = self.caller(terms.renter)
            amount = self.amount(5_000)
            return Op(
                f"topUp({amount})",
                sender,
                fn("topUp").encode(targ, amount),
                lambda m, t: m.top_up(sender, terms, amount, now=t),
            )
        if kind in ("claim", "settle"):
            sender = self.caller(terms.provider)
            receipt, sig = self.receipt(terms, now)
            if kind == "settle" and self.rng.random() < 0.3:
                receipt, sig = (NO_RECEIPT if self.rng.random() < 0.5 else receipt), b""
            method = Model.claim if kind == "claim" else Model.settle
            return Op(
                f"{kind}(uptime={receipt.uptime_seconds}, amount={receipt.amount}, sig={len(sig)})",
                sender,
                fn(kind).encode(targ, receipt_arg(receipt), sig),
                lambda m, t: method(m, sender, terms, receipt, sig, now=t),
            )
        if kind == "requestClose":
            sender = self.caller(terms.renter)
            return Op(
                "requestClose",
                sender,
                fn("requestClose").encode(targ),
                lambda m, t: m.request_close(sender, terms, now=t),
            )
        sender = self.pick(EVERYONE)
        return Op(
            "finalize",
            sender,
            fn("finalize").encode(targ),
            lambda m, t: m.finalize(sender, terms, now=t),
        )

    def permit_op(
        self, now: int, owner: bytes | None = None, token: bytes | None = None, amount: int = 0
    ) -> Op:
        valid = owner is not None  # funding an open: a permit that works
        owner = owner or self.pick(RENTERS)
        token = token or self.pick([self.chain.usd, self.chain.usd, self.chain.usd, ETH])
        amount = amount or self.amount()
        deadline = now + self.rng.randrange(1, 100)
        signer = KEYS["renterB"] if owner == ADDR["renterB"] else KEYS["renterA"]
        if not valid and self.rng.random() < 0.15:
            deadline = now - 1
        if not valid and self.rng.random() < 0.2:
            signer = KEYS["eve"]
        v, r, s = 27, bytes(32), bytes(32)
        permit_signer = signer.address
        if token != ETH:
            nonce = self.chain.view(self.chain.token_abi, token, "nonces", owner)[0]
            digest = permit_digest(
                self.chain.chain_id, token, "Rigmesh Test USD", owner, self.chain.escrow,
                amount, nonce, deadline,
            )  # fmt: skip
            sig = signer.sign_digest(digest)
            r, s, v = sig[:32], sig[32:64], sig[64]
        sender = self.pick(EVERYONE)
        return Op(
            f"permit(owner={owner.hex()[:6]}, {amount}, signer={signer.address.hex()[:6]})",
            sender,
            self.abi.fn("depositWithPermit").encode(owner, token, amount, deadline, v, r, s),
            lambda m, t: m.deposit_with_permit(
                sender, owner, token, amount, deadline, now=t, permit_signer=permit_signer
            ),
        )


def _run_op(
    chain: Chain, model: EscrowModel, op: Op, trace: list[str], *, check_conservation: bool = True
) -> None:
    now = chain.pending_time()
    to = op.to or chain.escrow
    trace.append(f"t={now} {op.sender.hex()[:6]}: {op.label}")
    # The model is transactional: on an error it has changed nothing.
    expected: list[Event] | EscrowError
    try:
        expected = op.apply(model, now)
    except EscrowError as e:
        expected = e
    try:
        chain.call(to, op.data, sender=op.sender, value=op.value)
        actual: EscrowError | None = None
    except EscrowError as e:
        actual = e
    if isinstance(expected, EscrowError) or actual is not None:
        assert actual == expected, f"model: {expected}, contract: {actual}"
        trace.append(f"  -> {actual}")
        return
    receipt = chain.send(_hex(op.sender), to, op.data, op.value)
    assert receipt["status"] == 1, "eth_call succeeded but the transaction reverted"
    assert int(chain.et.get_block_by_number(receipt["block_number"])["timestamp"]) == now
    events = []
    for log in receipt["logs"]:
        if bytes.fromhex(log["address"][2:]) != chain.escrow:
            continue  # token Transfer/Approval logs
        topics = [bytes.fromhex(t[2:]) for t in log["topics"]]
        event = chain.escrow_abi.decode_log(topics, bytes.fromhex(log["data"][2:]))
        events.append(event)
    assert events == expected
    trace.append(f"  -> {', '.join(e.name for e in events)}")
    if check_conservation:
        assert not model.conservation_errors(), model.conservation_errors()


def _compare_state(
    chain: Chain, model: EscrowModel, terms: list[Terms], rng: random.Random
) -> None:
    escrow = chain.escrow
    # The storage shortcut below must read what the views return.
    token, account = rng.choice([ETH, chain.usd]), rng.choice(EVERYONE)
    view = chain.view(chain.escrow_abi, escrow, "balanceOf", token, account)[0]
    assert view == chain.stored_free_balance(token, account), "escrow storage layout changed"
    token = rng.choice([chain.usd, chain.fot])
    view = chain.token_balance(token, account)
    assert view == chain.stored_token_balance(token, account), "token storage layout changed"
    for token in (ETH, chain.usd, chain.fot):
        for account in EVERYONE:
            on_chain = chain.stored_free_balance(token, account)
            assert on_chain == model.balance_of(token, account), (token.hex(), account.hex())
            if token != ETH:
                held = chain.stored_token_balance(token, account)
                assert held == model.wallets.balance(token, account), (token.hex(), account.hex())
        # What the escrow holds, checked against the model's books (conservation on chain).
        held = chain.token_balance(token, escrow)
        assert held == model.wallets.balance(token, escrow)
        assert held == model.liabilities().get(token, 0)
    for t in terms:
        on_chain = chain.view(chain.escrow_abi, escrow, "rentalState", t.rental_id)
        s = model.rental_state(t.rental_id)
        assert on_chain == (int(s.status), s.deposit, s.paid, s.opened_at, s.deadline)
    for renter in RENTERS:
        assert chain.view(chain.escrow_abi, escrow, "nonces", renter)[0] == model.nonce_of(renter)


def _run_sequence(chain: Chain, seed: int) -> tuple[list[str], EscrowModel]:
    chain.reset()
    rng = random.Random(seed)
    model = chain.model.clone()
    seq = Sequence(rng, chain, model)
    trace: list[str] = []
    try:
        for _ in range(rng.randrange(5, 13)):
            op = seq.next_op()
            if isinstance(op, int):
                # (Deadlines capped at MAX_TIMESTAMP are out of eth-tester's reach.)
                if chain.pending_time() < op < chain.pending_time() + 10**6:
                    chain.travel(op)
                    trace.append(f"time -> {op}")
                continue
            for one in op if isinstance(op, list) else [op]:
                _run_op(chain, model, one, trace)
        _compare_state(chain, model, seq.terms, rng)
    except AssertionError as e:
        raise AssertionError(f"seed {seed}:\n" + "\n".join(trace) + f"\n{e}") from e
    return trace, model


# The sequences run in chunks (each its own test, so a slow machine never hits a timeout with
# one huge test); the last test checks what they reached together.
CHUNKS = 8
_OUTCOMES: Counter[str] = Counter()
_STATUSES: set[int] = set()
_CHUNKS_RUN: set[int] = set()


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_model_matches_contract(diff_chain: Chain, chunk: int) -> None:
    for seed in range(chunk, SEQUENCES, CHUNKS):
        trace, model = _run_sequence(diff_chain, seed)
        _OUTCOMES.update(line[5:].split("(")[0] for line in trace if line.startswith("  -> "))
        _STATUSES.update(int(r.status) for r in model.rentals.values())
    _CHUNKS_RUN.add(chunk)


def test_sequences_reach_every_outcome() -> None:
    """The generator must reach the interesting outcomes, or the comparison proves little."""
    if len(_CHUNKS_RUN) < CHUNKS:
        pytest.skip("needs every chunk of test_model_matches_contract in the same run")
    outcomes = _OUTCOMES
    for name in (
        "Deposited", "Withdrawn", "Opened", "Claimed", "Settled", "CloseRequested", "ToppedUp",
        "InsufficientBalance", "NotProvider", "NotRenter", "InvalidSignature", "WrongRental",
        "AmountExceedsPrice", "UptimeExceedsElapsed", "DeadlinePassed", "DeadlineNotReached",
        "NothingToClaim", "InvalidTerms", "ChallengeWindowOutOfBounds", "AmountTooLarge",
        "RentalClosed", "UnknownRental", "ZeroAmount", "WrongMsgValue", "BadNonce",
        "SignatureExpired", "FeeOnTransferNotSupported", "EthTransferFailed",
        "ERC2612ExpiredSignature", "ERC2612InvalidSigner", "InvalidRecipient",
        "CloseAlreadyRequested",
    ):  # fmt: skip
        assert outcomes[name] > 0, f"no sequence reached {name}: {sorted(outcomes)}"
    assert {Status.OPEN, Status.CLOSED} <= _STATUSES


def test_withdrawals_to_zero_or_the_escrow_itself_are_refused(diff_chain: Chain) -> None:
    """Both sides refuse them with InvalidRecipient (ETH would be burned, tokens held for nobody)
    after the amount and balance checks, and nothing moves: the books still balance."""
    chain = diff_chain
    chain.reset()
    model = chain.model.clone()
    a = ADDR["renterA"]
    fn = chain.escrow_abi.fn
    trace: list[str] = []
    deposit = Op("deposit", a, fn("deposit").encode(chain.usd, 500),
                 lambda m, t: m.deposit(a, chain.usd, 500))  # fmt: skip
    _run_op(chain, model, deposit, trace)
    before = model.clone()
    for token in (ETH, chain.usd):
        free = model.balance_of(token, a)
        for to in (ZERO, chain.escrow):
            # _run_op checks that model and contract agree on the error and its arguments.
            for amount, error in ((0, "ZeroAmount"), (free + 1, "InsufficientBalance"),
                                  (free, f"InvalidRecipient(0x{to.hex()})")):  # fmt: skip
                op = Op(f"withdraw({amount}, to={to.hex()[:6]})", a,
                        fn("withdraw").encode(token, amount, to),
                        partial(_withdraw, a, token, amount, to))  # fmt: skip
                _run_op(chain, model, op, trace)
                assert trace[-1].startswith(f"  -> {error}"), trace[-1]
    assert model == before and not model.conservation_errors()
    _compare_state(chain, model, [], random.Random(0))


def _withdraw(
    sender: bytes, token: bytes, amount: int, to: bytes, model: EscrowModel, _now: int
) -> list[Event]:
    return model.withdraw(sender, token, amount, to)
