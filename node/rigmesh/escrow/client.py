"""The chain adapter: the escrow contract over web3, synchronous, with a trio face.

`EscrowClient` sends the transactions of one account (signed locally, so the node needs no
unlocked accounts: eth-tester and anvil behave the same) and reads state and events.

- Errors before sending. Everything the chain can already tell is checked first and raised as
  the typed error of `rigmesh.escrow.errors`, with no transaction sent: the node's chain id
  (`WrongChain`), no native token to pay gas (`NoGasToken`), free balances
  (`InsufficientBalance`), unknown or closed rentals, a passed deadline. Then the call is
  simulated with eth_call on the pending block, whose revert data decodes to the contract's own
  error (`NotProvider`, `InvalidSignature`, ...). A transaction is only signed when all of that
  passes.
- Idempotent submission. Each transaction belongs to a logical operation (`op_id`). The signed
  raw transaction is recorded in `journal` (a mapping the caller may persist) before it is
  broadcast; submitting the same op_id again re-broadcasts that same transaction, so a retry
  after a timeout, a crash or a lost reply can never pay twice. Nonces are handed out locally
  under a lock and re-read from the node after any failed broadcast.
- Events are read at a confirmation depth, decoded to the model's `Event` values.

web3 is synchronous; the node is trio. `AsyncEscrowClient` runs each call in a worker thread
behind a `trio.CapacityLimiter` shared per chain (one slot for py-evm, which is not
thread-safe).
"""

from __future__ import annotations

import ast
import threading
import time
import weakref
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from functools import partial
from typing import Any, ParamSpec, TypeVar

import trio
from eth_account import Account
from eth_hash.auto import keccak
from web3 import EthereumTesterProvider, Web3

from rigmesh.escrow.contract import (
    CREATE2_DEPLOYER,
    CREATE2_DEPLOYER_FUNDING,
    CREATE2_FACTORY,
    CREATE2_FACTORY_TX,
    ESCROW_SALT,
    NO_RECEIPT,
    Artifact,
    create2_address,
    escrow_artifact,
    receipt_arg,
    terms_arg,
    token_artifact,
)
from rigmesh.escrow.errors import (
    BadNonce,
    ChainError,
    DeadlinePassed,
    EscrowError,
    InsufficientBalance,
    InsufficientFunds,
    NoGasToken,
    NotDeployed,
    NotProvider,
    NotRenter,
    RentalClosed,
    SignatureExpired,
    TransactionDropped,
    TransactionReverted,
    UnknownRental,
    WrongChain,
    decode_revert,
)
from rigmesh.escrow.model import ETH, Event, RentalState, Status
from rigmesh.wire.eip712 import (
    DOMAIN_TYPEHASH,
    EthKey,
    OpenRequest,
    Receipt,
    Terms,
    escrow_domain_separator,
    typed_data_digest,
)

P = ParamSpec("P")
T = TypeVar("T")

PERMIT_TYPEHASH = keccak(
    b"Permit(address owner,address spender,uint256 value,uint256 nonce,uint256 deadline)"
)
#: Gas for a transaction whose estimate failed although eth_call on the pending block passed
#: (estimates run on the latest block, one timestamp earlier).
FALLBACK_GAS = 400_000
PRIORITY_FEE = 10**9  # 1 gwei


def permit_digest(
    chain_id: int,
    token: bytes,
    token_name: str,
    owner: bytes,
    spender: bytes,
    value: int,
    nonce: int,
    deadline: int,
    version: str = "1",
) -> bytes:
    """The EIP-2612 digest an ERC20Permit token's `owner` signs."""
    domain = keccak(
        DOMAIN_TYPEHASH
        + keccak(token_name.encode())
        + keccak(version.encode())
        + chain_id.to_bytes(32, "big")
        + bytes(12)
        + token
    )
    struct = keccak(
        PERMIT_TYPEHASH
        + bytes(12)
        + owner
        + bytes(12)
        + spender
        + value.to_bytes(32, "big")
        + nonce.to_bytes(32, "big")
        + deadline.to_bytes(32, "big")
    )
    return typed_data_digest(domain, struct)


def revert_data(exc: BaseException) -> bytes | None:
    """The revert data inside a web3 / eth-tester exception, or None if it has none."""
    data = getattr(exc, "data", None)
    if isinstance(data, str) and data.startswith("0x"):
        return bytes.fromhex(data[2:])
    if isinstance(data, bytes):
        return data
    if isinstance(data, dict):  # some providers nest {"data": "0x..."}
        inner = data.get("data")
        if isinstance(inner, str) and inner.startswith("0x"):
            return bytes.fromhex(inner[2:])
    # eth-tester reports revert data as the repr of a bytes object in the message.
    text = str(exc.args[0]) if exc.args else ""
    text = text.removeprefix("execution reverted: ")
    if text.startswith(("b'", 'b"')):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return None
        return value if isinstance(value, bytes) else None
    return None


def _is_revert(exc: BaseException) -> bool:
    return revert_data(exc) is not None or "revert" in str(exc).lower()


@dataclass(frozen=True)
class TxOutcome:
    """A mined transaction of ours: where it landed and what the escrow emitted."""

    tx_hash: bytes
    block_number: int
    block_time: int
    gas_used: int
    events: list[Event]


@dataclass(frozen=True)
class ChainEvent:
    block_number: int
    log_index: int
    tx_hash: bytes
    event: Event


def _checksum(address: bytes) -> str:
    return Web3.to_checksum_address(address)


class EscrowClient:
    """One account's view of, and transactions to, the escrow at `address`."""

    def __init__(
        self,
        w3: Web3,
        address: bytes,
        key: EthKey,
        *,
        chain_id: int,
        journal: MutableMapping[str, bytes] | None = None,
        receipt_timeout: float = 30.0,
        poll_interval: float = 0.05,
    ) -> None:
        self.w3 = w3
        self.address = address
        self.key = key
        self.sender = key.address
        self.chain_id = chain_id
        #: op_id -> signed raw transaction; persist it to survive restarts.
        self.journal: MutableMapping[str, bytes] = {} if journal is None else journal
        self.receipt_timeout = receipt_timeout
        self.poll_interval = poll_interval
        self.abi = escrow_artifact()
        self._account = Account.from_key(key.secret)
        self._nonce: int | None = None
        self._lock = threading.Lock()
        self._domain = escrow_domain_separator(chain_id, address)

    # ------------------------------------------------------------------ chain facts

    def check_chain(self) -> None:
        actual = self.w3.eth.chain_id
        if actual != self.chain_id:
            raise WrongChain(self.chain_id, actual)

    def check_deployed(self) -> None:
        self.check_chain()
        if not self.w3.eth.get_code(_checksum(self.address)):
            raise NotDeployed(self.address)

    def chain_time(self) -> int:
        """Timestamp of the latest block; the next transaction runs strictly later."""
        return int(self.w3.eth.get_block("latest")["timestamp"])

    def head(self) -> int:
        """The latest block's number."""
        return int(self.w3.eth.block_number)

    def block(self, number: int) -> tuple[bytes, int]:
        """(hash, timestamp) of block `number` (what the chain watcher anchors to)."""
        b = self.w3.eth.get_block(number)
        return bytes(b["hash"]), int(b["timestamp"])

    def native_balance(self, account: bytes | None = None) -> int:
        return int(self.w3.eth.get_balance(_checksum(account or self.sender)))

    # ------------------------------------------------------------------ views

    def _view(self, artifact: Artifact, to: bytes, name: str, *args: object) -> tuple[Any, ...]:
        fn = artifact.fn(name)
        out = self.w3.eth.call({"to": _checksum(to), "data": fn.encode(*args)})
        return fn.decode_output(bytes(out))

    def balance_of(self, token: bytes, account: bytes | None = None) -> int:
        return int(
            self._view(self.abi, self.address, "balanceOf", token, account or self.sender)[0]
        )

    def nonce_of(self, renter: bytes) -> int:
        return int(self._view(self.abi, self.address, "nonces", renter)[0])

    def rental_state(self, rental_id: bytes) -> RentalState:
        status, deposit, paid, opened_at, deadline = self._view(
            self.abi, self.address, "rentalState", rental_id
        )
        return RentalState(Status(status), deposit, paid, opened_at, deadline)

    def token_balance(self, token: bytes, account: bytes | None = None) -> int:
        if token == ETH:
            return self.native_balance(account)
        return int(self._view(token_artifact(), token, "balanceOf", account or self.sender)[0])

    def receipt_digest(self, receipt: Receipt) -> bytes:
        return typed_data_digest(self._domain, receipt.struct_hash())

    def sign_open_request(
        self, renter: EthKey, terms: Terms, deadline: int, nonce: int | None = None
    ) -> tuple[int, bytes]:
        """The renter's OpenRequest signature (no transaction); returns (nonce, signature)."""
        if nonce is None:
            nonce = self.nonce_of(terms.renter)
        digest = typed_data_digest(self._domain, OpenRequest(terms, nonce, deadline).struct_hash())
        return nonce, renter.sign_digest(digest)

    def sign_permit(
        self, owner: EthKey, token: bytes, amount: int, deadline: int
    ) -> tuple[int, bytes, bytes]:
        """The owner's EIP-2612 permit for the escrow (no transaction); returns (v, r, s)."""
        art = token_artifact()
        name = self._view(art, token, "name")[0]
        nonce = int(self._view(art, token, "nonces", owner.address)[0])
        digest = permit_digest(
            self.chain_id, token, name, owner.address, self.address, amount, nonce, deadline
        )
        sig = owner.sign_digest(digest)
        return sig[64], sig[:32], sig[32:64]

    # ------------------------------------------------------------------ events

    def events(
        self, from_block: int = 0, to_block: int | None = None, *, confirmations: int = 0
    ) -> list[ChainEvent]:
        """Escrow events in [from_block, to_block], only from blocks `confirmations` deep."""
        head = int(self.w3.eth.block_number) - confirmations
        last = head if to_block is None else min(to_block, head)
        if last < from_block:
            return []
        logs = self.w3.eth.get_logs(
            {"address": _checksum(self.address), "fromBlock": from_block, "toBlock": last}
        )
        out = []
        for log in logs:
            event = self.abi.decode_log([bytes(t) for t in log["topics"]], bytes(log["data"]))
            if event is not None:
                out.append(
                    ChainEvent(
                        int(log["blockNumber"]),
                        int(log["logIndex"]),
                        bytes(log["transactionHash"]),
                        event,
                    )
                )
        return out

    # ------------------------------------------------------------------ balances

    def approve(self, token: bytes, amount: int, *, op_id: str | None = None) -> TxOutcome:
        """ERC-20 approve of the escrow (a token transaction, not an escrow one)."""
        data = token_artifact().fn("approve").encode(self.address, amount)
        return self.send_transaction(data, op_id=op_id, to=token)

    def deposit(self, token: bytes, amount: int, *, op_id: str | None = None) -> TxOutcome:
        value = amount if token == ETH else 0
        return self.send_transaction(
            self.abi.fn("deposit").encode(token, amount), value=value, op_id=op_id
        )

    def deposit_with_permit(
        self,
        owner: bytes,
        token: bytes,
        amount: int,
        deadline: int,
        v: int,
        r: bytes,
        s: bytes,
        *,
        op_id: str | None = None,
    ) -> TxOutcome:
        """Submit `owner`'s permit and deposit for it: the owner needs no native token."""
        data = self.abi.fn("depositWithPermit").encode(owner, token, amount, deadline, v, r, s)
        return self.send_transaction(data, op_id=op_id)

    def withdraw(
        self, token: bytes, amount: int, to: bytes | None = None, *, op_id: str | None = None
    ) -> TxOutcome:
        if op_id not in self.journal and amount > 0:
            self._require_free(token, self.sender, amount)
        data = self.abi.fn("withdraw").encode(token, amount, to or self.sender)
        return self.send_transaction(data, op_id=op_id)

    # ------------------------------------------------------------------ rentals
    #
    # Pre-flight checks from chain state follow the contract's own check order and stop where
    # the next check needs more than a view can tell; the pending-block simulation in
    # send_transaction then yields the contract's exact first error for the rest.

    def open(self, terms: Terms, *, op_id: str | None = None) -> TxOutcome:
        if op_id not in self.journal:
            self._require_role(terms.renter, NotRenter)
        return self.send_transaction(self.abi.fn("open").encode(terms_arg(terms)), op_id=op_id)

    def open_for(
        self,
        terms: Terms,
        nonce: int,
        deadline: int,
        signature: bytes,
        *,
        op_id: str | None = None,
    ) -> TxOutcome:
        """Open for a renter who signed OpenRequest(terms, nonce, deadline); anyone submits."""
        if op_id not in self.journal:
            self.check_chain()
            if self.chain_time() >= deadline:
                raise SignatureExpired(deadline)
            expected = self.nonce_of(terms.renter)
            if nonce != expected:
                raise BadNonce(expected, nonce)
        data = self.abi.fn("openFor").encode(terms_arg(terms), nonce, deadline, signature)
        return self.send_transaction(data, op_id=op_id)

    def top_up(self, terms: Terms, amount: int, *, op_id: str | None = None) -> TxOutcome:
        if op_id not in self.journal:
            self._require_role(terms.renter, NotRenter)
            self._require_open(terms)
        return self.send_transaction(
            self.abi.fn("topUp").encode(terms_arg(terms), amount), op_id=op_id
        )

    def claim(
        self, terms: Terms, receipt: Receipt, signature: bytes, *, op_id: str | None = None
    ) -> TxOutcome:
        if op_id not in self.journal:
            self._require_role(terms.provider, NotProvider)
            self._require_before_deadline(terms)
        data = self.abi.fn("claim").encode(terms_arg(terms), receipt_arg(receipt), signature)
        return self.send_transaction(data, op_id=op_id)

    def settle(
        self,
        terms: Terms,
        receipt: Receipt | None = None,
        signature: bytes = b"",
        *,
        op_id: str | None = None,
    ) -> TxOutcome:
        """Close with the best receipt, or (no receipt) with what was claimed so far."""
        if receipt is None or not signature:
            receipt, signature = NO_RECEIPT, b""
        if op_id not in self.journal:
            self._require_role(terms.provider, NotProvider)
            if signature:
                self._require_before_deadline(terms)
            else:
                self._require_open(terms)
        data = self.abi.fn("settle").encode(terms_arg(terms), receipt_arg(receipt), signature)
        return self.send_transaction(data, op_id=op_id)

    def request_close(self, terms: Terms, *, op_id: str | None = None) -> TxOutcome:
        if op_id not in self.journal:
            self._require_role(terms.renter, NotRenter)
            self._require_open(terms)
        return self.send_transaction(
            self.abi.fn("requestClose").encode(terms_arg(terms)), op_id=op_id
        )

    def finalize(self, terms: Terms, *, op_id: str | None = None) -> TxOutcome:
        if op_id not in self.journal:
            self._require_open(terms)
        return self.send_transaction(self.abi.fn("finalize").encode(terms_arg(terms)), op_id=op_id)

    # ------------------------------------------------------------------ pre-flight checks

    def _require_role(self, expected: bytes, error: type[EscrowError]) -> None:
        if self.sender != expected:
            raise error(self.sender)

    def _require_free(self, token: bytes, account: bytes, amount: int) -> None:
        self.check_chain()
        available = self.balance_of(token, account)
        if available < amount:
            raise InsufficientBalance(token, account, amount, available)

    def _require_open(self, terms: Terms) -> RentalState:
        self.check_chain()
        rental_id = terms.rental_id
        state = self.rental_state(rental_id)
        if state.status is Status.NONE:
            raise UnknownRental(rental_id)
        if state.status is Status.CLOSED:
            raise RentalClosed(rental_id)
        return state

    def _require_before_deadline(self, terms: Terms) -> RentalState:
        state = self._require_open(terms)
        # The next block's timestamp is above the latest one's: at latest >= deadline the
        # transaction is certain to run after the deadline.
        if self.chain_time() >= state.deadline:
            raise DeadlinePassed(state.deadline)
        return state

    # ------------------------------------------------------------------ submission

    def send_transaction(
        self, data: bytes, *, value: int = 0, op_id: str | None = None, to: bytes | None = None
    ) -> TxOutcome:
        """Simulate, sign, journal, broadcast and wait for one transaction (to the escrow
        unless `to` says otherwise). Raises typed errors before sending where it can."""
        to = self.address if to is None else to
        self.check_chain()
        if op_id is not None and op_id in self.journal:
            return self._wait(self._rebroadcast(self.journal[op_id]))
        balance = self.native_balance()
        if balance == 0:
            raise NoGasToken(self.sender)
        tx: dict[str, Any] = {
            "from": _checksum(self.sender),
            "to": _checksum(to),
            "value": value,
            "data": data,
        }
        self._simulate(tx)
        gas = self._estimate(tx)
        base_fee = int(self.w3.eth.get_block("latest").get("baseFeePerGas", 0))
        max_fee = 2 * base_fee + PRIORITY_FEE
        if balance < value + gas * max_fee:
            raise InsufficientFunds(self.sender, value + gas * max_fee, balance)
        with self._lock:
            nonce = self._next_nonce()
            signed = self._account.sign_transaction(
                {
                    **{k: v for k, v in tx.items() if k != "from"},
                    "chainId": self.chain_id,
                    "nonce": nonce,
                    "gas": gas,
                    "maxFeePerGas": max_fee,
                    "maxPriorityFeePerGas": PRIORITY_FEE,
                    "type": 2,
                }
            )
            raw = bytes(signed.raw_transaction)
            # Recorded before broadcast: if we crash between the two, the retry re-sends it.
            if op_id is not None:
                self.journal[op_id] = raw
            try:
                self.w3.eth.send_raw_transaction(raw)
            except Exception as e:
                self._nonce = None  # resync from the node next time
                if not _already_known(e):
                    raise
            self._nonce = nonce + 1
        return self._wait(bytes(signed.hash))

    def _next_nonce(self) -> int:
        if self._nonce is None:
            self._nonce = int(self.w3.eth.get_transaction_count(_checksum(self.sender), "pending"))
        return self._nonce

    def _simulate(self, tx: dict[str, Any]) -> None:
        """eth_call on the pending block (the next block's timestamp); raise the revert."""
        try:
            self.w3.eth.call(tx, "pending")
        except Exception as e:
            data = revert_data(e)
            if data is None:
                if _is_revert(e):
                    raise TransactionReverted(b"") from e
                raise
            raise decode_revert(data) from None

    def _estimate(self, tx: dict[str, Any]) -> int:
        try:
            estimate = int(self.w3.eth.estimate_gas(tx))
        except Exception as e:
            if not _is_revert(e):
                raise
            # The estimate ran on the latest block, one timestamp earlier than the pending
            # block where the simulation passed (e.g. a finalize right at the deadline).
            return FALLBACK_GAS
        return estimate * 6 // 5 + 10_000

    def _rebroadcast(self, raw: bytes) -> bytes:
        tx_hash = keccak(raw)
        if self._receipt_or_none(tx_hash) is not None:
            return tx_hash
        try:
            self.w3.eth.send_raw_transaction(raw)
        except Exception as e:
            if not _already_known(e) and self._receipt_or_none(tx_hash) is None:
                self._nonce = None
                raise TransactionDropped(
                    f"0x{tx_hash.hex()} was neither mined nor accepted again: {e}"
                ) from e
        return tx_hash

    def _receipt_or_none(self, tx_hash: bytes) -> Any:
        try:
            return self.w3.eth.get_transaction_receipt(tx_hash)
        except Exception:  # web3 raises TransactionNotFound, eth-tester its own lookups
            return None

    def _wait(self, tx_hash: bytes) -> TxOutcome:
        deadline = time.monotonic() + self.receipt_timeout
        while (receipt := self._receipt_or_none(tx_hash)) is None:
            if time.monotonic() > deadline:
                raise TransactionDropped(f"no receipt for 0x{tx_hash.hex()} in time")
            time.sleep(self.poll_interval)
        block = self.w3.eth.get_block(receipt["blockNumber"])
        if receipt["status"] != 1:
            raise self._reverted(tx_hash, receipt)
        events = []
        for log in receipt["logs"]:
            if bytes.fromhex(str(log["address"])[2:].lower()) != self.address:
                continue
            event = self.abi.decode_log([bytes(t) for t in log["topics"]], bytes(log["data"]))
            if event is not None:
                events.append(event)
        return TxOutcome(
            tx_hash,
            int(receipt["blockNumber"]),
            int(block["timestamp"]),
            int(receipt["gasUsed"]),
            events,
        )

    def _reverted(self, tx_hash: bytes, receipt: Any) -> Exception:
        """Replay a failed transaction on its parent block to recover the revert reason."""
        tx = self.w3.eth.get_transaction(tx_hash)
        call = {"from": tx["from"], "to": tx["to"], "value": tx["value"], "data": tx["input"]}
        try:
            self.w3.eth.call(call, int(receipt["blockNumber"]) - 1)
        except Exception as e:
            data = revert_data(e)
            if data is not None:
                return decode_revert(data)
        return TransactionReverted(tx_hash)


def _already_known(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "already known" in text or "already imported" in text or "known transaction" in text


# ---------------------------------------------------------------------- deployment


def ensure_create2_factory(w3: Web3, funder: EthKey, chain_id: int) -> None:
    """Publish the CREATE2 proxy from its pre-signed transaction if the chain lacks it."""
    if w3.eth.get_code(_checksum(CREATE2_FACTORY)):
        return
    account = Account.from_key(funder.secret)
    missing = CREATE2_DEPLOYER_FUNDING - int(w3.eth.get_balance(_checksum(CREATE2_DEPLOYER)))
    if missing > 0:
        _send_plain(w3, account, chain_id, {"to": _checksum(CREATE2_DEPLOYER), "value": missing})
    tx_hash = w3.eth.send_raw_transaction(CREATE2_FACTORY_TX)
    w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30, poll_latency=0.05)
    if not w3.eth.get_code(_checksum(CREATE2_FACTORY)):
        raise ChainError("the CREATE2 proxy did not deploy (does the chain take pre-EIP-155 txs?)")


def deploy_escrow(
    w3: Web3,
    deployer: EthKey,
    *,
    chain_id: int,
    min_challenge_window: int,
    max_challenge_window: int,
    salt: bytes = ESCROW_SALT,
) -> bytes:
    """Deploy the escrow through CREATE2 and return its address (idempotent).

    The address depends only on the bytecode, the two windows and the salt, so every chain gets
    the same one, and deploying again finds the existing contract instead of a second copy.
    """
    if w3.eth.chain_id != chain_id:
        raise WrongChain(chain_id, w3.eth.chain_id)
    initcode = escrow_artifact().initcode(min_challenge_window, max_challenge_window)
    address = create2_address(salt, initcode)
    if w3.eth.get_code(_checksum(address)):
        return address
    ensure_create2_factory(w3, deployer, chain_id)
    account = Account.from_key(deployer.secret)
    _send_plain(w3, account, chain_id, {"to": _checksum(CREATE2_FACTORY), "data": salt + initcode})
    if not w3.eth.get_code(_checksum(address)):
        raise NotDeployed(address)
    return address


def deploy_contract(w3: Web3, deployer: EthKey, chain_id: int, artifact: Artifact) -> bytes:
    """Plain CREATE (test tokens): the address follows from the deployer and its nonce."""
    account = Account.from_key(deployer.secret)
    receipt = _send_plain(w3, account, chain_id, {"data": artifact.initcode()})
    return bytes.fromhex(str(receipt["contractAddress"])[2:])


def _send_plain(w3: Web3, account: Any, chain_id: int, tx: dict[str, Any]) -> Any:
    """Sign and send one transaction for setup work, and wait for it to succeed."""
    tx = {"value": 0, **tx, "from": account.address, "chainId": chain_id}
    tx["nonce"] = w3.eth.get_transaction_count(account.address, "pending")
    tx["gas"] = int(w3.eth.estimate_gas(tx)) * 6 // 5 + 10_000
    base_fee = int(w3.eth.get_block("latest").get("baseFeePerGas", 0))
    tx["maxFeePerGas"] = 2 * base_fee + PRIORITY_FEE
    tx["maxPriorityFeePerGas"] = PRIORITY_FEE
    del tx["from"]
    signed = account.sign_transaction(tx)
    tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30, poll_latency=0.05)
    if receipt["status"] != 1:
        raise TransactionReverted(bytes(tx_hash))
    return receipt


# ---------------------------------------------------------------------- trio face

_LIMITERS: weakref.WeakKeyDictionary[Any, trio.CapacityLimiter] = weakref.WeakKeyDictionary()
_LIMITERS_LOCK = threading.Lock()


def limiter_for(w3: Web3, threads: int = 4) -> trio.CapacityLimiter:
    """The limiter all clients of this chain connection share (1 thread for py-evm)."""
    provider = w3.provider
    with _LIMITERS_LOCK:
        limiter = _LIMITERS.get(provider)
        if limiter is None:
            single = isinstance(provider, EthereumTesterProvider)
            limiter = trio.CapacityLimiter(1 if single else threads)
            _LIMITERS[provider] = limiter
        return limiter


class AsyncEscrowClient:
    """`EscrowClient` for trio code: every call runs in a worker thread behind the limiter.

    A cancelled call abandons nothing half-way: the thread finishes its web3 call (a sent
    transaction stays in the journal, so re-submitting the op_id later is safe).
    """

    def __init__(self, client: EscrowClient, limiter: trio.CapacityLimiter | None = None):
        self.sync = client
        self.limiter = limiter or limiter_for(client.w3)

    async def _run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await trio.to_thread.run_sync(partial(fn, *args, **kwargs), limiter=self.limiter)

    async def chain_time(self) -> int:
        return await self._run(self.sync.chain_time)

    async def head(self) -> int:
        return await self._run(self.sync.head)

    async def block(self, number: int) -> tuple[bytes, int]:
        return await self._run(self.sync.block, number)

    async def balance_of(self, token: bytes, account: bytes | None = None) -> int:
        return await self._run(self.sync.balance_of, token, account)

    async def rental_state(self, rental_id: bytes) -> RentalState:
        return await self._run(self.sync.rental_state, rental_id)

    async def nonce_of(self, renter: bytes) -> int:
        return await self._run(self.sync.nonce_of, renter)

    async def events(
        self, from_block: int = 0, to_block: int | None = None, *, confirmations: int = 0
    ) -> list[ChainEvent]:
        return await self._run(self.sync.events, from_block, to_block, confirmations=confirmations)

    async def approve(self, token: bytes, amount: int, *, op_id: str | None = None) -> TxOutcome:
        return await self._run(self.sync.approve, token, amount, op_id=op_id)

    async def deposit(self, token: bytes, amount: int, *, op_id: str | None = None) -> TxOutcome:
        return await self._run(self.sync.deposit, token, amount, op_id=op_id)

    async def deposit_with_permit(
        self,
        owner: bytes,
        token: bytes,
        amount: int,
        deadline: int,
        v: int,
        r: bytes,
        s: bytes,
        *,
        op_id: str | None = None,
    ) -> TxOutcome:
        return await self._run(
            self.sync.deposit_with_permit, owner, token, amount, deadline, v, r, s, op_id=op_id
        )

    async def withdraw(
        self, token: bytes, amount: int, to: bytes | None = None, *, op_id: str | None = None
    ) -> TxOutcome:
        return await self._run(self.sync.withdraw, token, amount, to, op_id=op_id)

    async def open(self, terms: Terms, *, op_id: str | None = None) -> TxOutcome:
        return await self._run(self.sync.open, terms, op_id=op_id)

    async def open_for(
        self,
        terms: Terms,
        nonce: int,
        deadline: int,
        signature: bytes,
        *,
        op_id: str | None = None,
    ) -> TxOutcome:
        return await self._run(self.sync.open_for, terms, nonce, deadline, signature, op_id=op_id)

    async def top_up(self, terms: Terms, amount: int, *, op_id: str | None = None) -> TxOutcome:
        return await self._run(self.sync.top_up, terms, amount, op_id=op_id)

    async def claim(
        self, terms: Terms, receipt: Receipt, signature: bytes, *, op_id: str | None = None
    ) -> TxOutcome:
        return await self._run(self.sync.claim, terms, receipt, signature, op_id=op_id)

    async def settle(
        self,
        terms: Terms,
        receipt: Receipt | None = None,
        signature: bytes = b"",
        *,
        op_id: str | None = None,
    ) -> TxOutcome:
        return await self._run(self.sync.settle, terms, receipt, signature, op_id=op_id)

    async def request_close(self, terms: Terms, *, op_id: str | None = None) -> TxOutcome:
        return await self._run(self.sync.request_close, terms, op_id=op_id)

    async def finalize(self, terms: Terms, *, op_id: str | None = None) -> TxOutcome:
        return await self._run(self.sync.finalize, terms, op_id=op_id)


__all__ = [
    "AsyncEscrowClient",
    "ChainEvent",
    "EscrowClient",
    "EscrowError",
    "TxOutcome",
    "deploy_contract",
    "deploy_escrow",
    "ensure_create2_factory",
    "limiter_for",
    "permit_digest",
    "revert_data",
]
