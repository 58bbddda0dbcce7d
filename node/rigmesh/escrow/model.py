"""An executable model of the RentalEscrow contract, in plain Python.

Pure: no I/O, no clock. Every operation takes the caller (`sender`, the contract's msg.sender)
and the chain time (`now`, the contract's block.timestamp) explicitly and either returns the
events the contract would emit or raises the typed error (`rigmesh.escrow.errors`) the contract
would revert with. Like a transaction, an operation that raises changes nothing: each one runs
all its checks before it touches any state.

Where several checks fail at once, the error raised is the first in the contract's order
(caller role, rental existence/status, deadline, receipt rentalId, signature, amount vs price,
uptime vs elapsed, nothing-to-claim), because the differential test (tests/escrow) compares
error names and arguments with the Solidity contract running on py-evm.

The network simulator runs rentals against this model instead of a chain. `Wallets` stands for
everything outside the escrow: native ETH and ERC-20 balances of accounts (and of the escrow
itself, so conservation can be checked against what the escrow actually holds). Allowances are
not modelled: a deposit is assumed approved, and `deposit_with_permit` assumes a valid permit
signature (only its deadline is checked).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from enum import IntEnum

from rigmesh.escrow.errors import (
    AmountExceedsPrice,
    AmountTooLarge,
    BadNonce,
    ChallengeWindowOutOfBounds,
    CloseAlreadyRequested,
    DeadlineNotReached,
    DeadlinePassed,
    ERC20InsufficientAllowance,
    ERC20InsufficientBalance,
    ERC20InvalidReceiver,
    ERC2612ExpiredSignature,
    ERC2612InvalidSigner,
    EthTransferFailed,
    FeeOnTransferNotSupported,
    InsufficientBalance,
    InsufficientFunds,
    InvalidRecipient,
    InvalidSignature,
    InvalidTerms,
    NothingToClaim,
    NotProvider,
    NotRenter,
    RentalClosed,
    RentalExists,
    SignatureExpired,
    UnknownRental,
    UptimeExceedsElapsed,
    WrongMsgValue,
    WrongRental,
    ZeroAmount,
)
from rigmesh.wire.eip712 import (
    OpenRequest,
    Receipt,
    Terms,
    escrow_domain_separator,
    recover,
    typed_data_digest,
)
from rigmesh.wire.errors import BadSignature

#: The native token (ETH) is token address zero, as in the contract.
ETH = bytes(20)
ZERO_ADDRESS = bytes(20)

#: The contract packs a rental into one storage word: deposit and paid in 87 bits each (a
#: deposit or top-up that would not fit reverts with AmountTooLarge), openedAt and the deadline
#: in 40 bits each (a later hard deadline is stored as MAX_TIMESTAMP, year 36812).
MAX_DEPOSIT = 2**87 - 1
MAX_TIMESTAMP = 2**40 - 1
UINT256_MAX = 2**256 - 1

BPS = 10_000


class Status(IntEnum):
    NONE = 0
    OPEN = 1
    CLOSED = 2


@dataclass(frozen=True, slots=True)
class Event:
    """An emitted event: its Solidity name and its arguments in declaration order."""

    name: str
    args: tuple[object, ...]


@dataclass(frozen=True, slots=True)
class RentalState:
    """What the contract's `rentalState(id)` view returns."""

    status: Status
    deposit: int
    paid: int
    opened_at: int
    deadline: int


@dataclass(slots=True)
class _Rental:
    status: Status
    token: bytes  # not stored by the contract (it is in the terms); kept for the invariant
    deposit: int
    paid: int
    opened_at: int
    deadline: int
    close_requested: bool = False


@dataclass
class Wallets:
    """Balances outside the escrow: ETH (token address 0) and ERC-20 tokens, per account.

    Token transfers follow OpenZeppelin's ERC20 (its checks, their order and its errors).
    `transfer_fee_bps` marks fee-on-transfer tokens (the fee is burnt first, as the test token
    does); `rejects_eth` holds addresses whose code refuses plain ETH (contracts without
    `receive`). An allowance of 2**256 - 1 is infinite (never spent), as in OpenZeppelin.
    """

    balances: dict[tuple[bytes, bytes], int] = field(default_factory=dict)
    allowances: dict[tuple[bytes, bytes, bytes], int] = field(default_factory=dict)
    transfer_fee_bps: dict[bytes, int] = field(default_factory=dict)
    rejects_eth: set[bytes] = field(default_factory=set)

    def balance(self, token: bytes, account: bytes) -> int:
        return self.balances.get((token, account), 0)

    def allowance(self, token: bytes, owner: bytes, spender: bytes) -> int:
        return self.allowances.get((token, owner, spender), 0)

    def mint(self, token: bytes, account: bytes, amount: int) -> None:
        self.balances[(token, account)] = self.balance(token, account) + amount

    def approve(self, token: bytes, owner: bytes, spender: bytes, amount: int) -> None:
        self.allowances[(token, owner, spender)] = amount

    def fee(self, token: bytes, amount: int) -> int:
        return amount * self.transfer_fee_bps.get(token, 0) // BPS

    def check_transfer(self, token: bytes, sender: bytes, to: bytes, amount: int) -> None:
        """Raise what the transfer would revert with; change nothing."""
        have = self.balance(token, sender)
        if token == ETH:
            if have < amount:
                raise InsufficientFunds(sender, amount, have)
            if to in self.rejects_eth:
                raise EthTransferFailed(to, amount)
            return
        if to == ZERO_ADDRESS:
            raise ERC20InvalidReceiver(to)
        # A fee-on-transfer token burns the fee first, then moves the rest: two balance checks.
        fee = self.fee(token, amount)
        if fee and have < fee:
            raise ERC20InsufficientBalance(sender, have, fee)
        if have - fee < amount - fee:
            raise ERC20InsufficientBalance(sender, have - fee, amount - fee)

    def check_transfer_from(
        self, token: bytes, spender: bytes, owner: bytes, to: bytes, amount: int
    ) -> None:
        allowed = self.allowance(token, owner, spender)
        if allowed < amount:
            raise ERC20InsufficientAllowance(spender, allowed, amount)
        self.check_transfer(token, owner, to, amount)

    def transfer(self, token: bytes, sender: bytes, to: bytes, amount: int) -> None:
        self.check_transfer(token, sender, to, amount)
        self.move(token, sender, to, amount)

    def move(self, token: bytes, sender: bytes, to: bytes, amount: int) -> None:
        """Move funds with no checks (a call's ETH value, which a payable function accepts)."""
        self.balances[(token, sender)] = self.balance(token, sender) - amount
        self.balances[(token, to)] = self.balance(token, to) + amount - self.fee(token, amount)

    def transfer_from(
        self, token: bytes, spender: bytes, owner: bytes, to: bytes, amount: int
    ) -> None:
        self.check_transfer_from(token, spender, owner, to, amount)
        allowed = self.allowance(token, owner, spender)
        if allowed != UINT256_MAX:
            self.allowances[(token, owner, spender)] = allowed - amount
        self.transfer(token, owner, to, amount)


@dataclass
class EscrowModel:
    """The state of one deployed escrow and the operations that change it."""

    chain_id: int
    address: bytes
    min_challenge_window: int
    max_challenge_window: int
    wallets: Wallets = field(default_factory=Wallets)
    free: dict[tuple[bytes, bytes], int] = field(default_factory=dict)
    rentals: dict[bytes, _Rental] = field(default_factory=dict)
    nonces: dict[bytes, int] = field(default_factory=dict)
    #: False only in simulations whose peers sign nothing (rigmesh.rental.crypto.UNSIGNED):
    #: then any signature passes, and every other rule still holds.
    check_signatures: bool = True

    def __post_init__(self) -> None:
        self._domain = escrow_domain_separator(self.chain_id, self.address)

    def clone(self) -> EscrowModel:
        return copy.deepcopy(self)

    # ------------------------------------------------------------------ views

    def balance_of(self, token: bytes, account: bytes) -> int:
        return self.free.get((token, account), 0)

    def nonce_of(self, renter: bytes) -> int:
        return self.nonces.get(renter, 0)

    def rental_state(self, rental_id: bytes) -> RentalState:
        r = self.rentals.get(rental_id)
        if r is None:
            return RentalState(Status.NONE, 0, 0, 0, 0)
        return RentalState(r.status, r.deposit, r.paid, r.opened_at, r.deadline)

    def receipt_digest(self, receipt: Receipt) -> bytes:
        return typed_data_digest(self._domain, receipt.struct_hash())

    def open_request_digest(self, request: OpenRequest) -> bytes:
        return typed_data_digest(self._domain, request.struct_hash())

    # ------------------------------------------------------------- balances

    def deposit(self, sender: bytes, token: bytes, amount: int, *, value: int = 0) -> list[Event]:
        """Credit `sender`'s free balance; ETH comes as `value`, a token is pulled (approved)."""
        if value:
            # The value moves with the transaction before any code runs; a sender that cannot
            # pay it never gets a transaction mined.
            have = self.wallets.balance(ETH, sender)
            if have < value:
                raise InsufficientFunds(sender, value, have)
        if amount == 0:
            raise ZeroAmount()
        if token == ETH:
            if value != amount:
                raise WrongMsgValue(amount, value)
            self.wallets.move(ETH, sender, self.address, value)
        else:
            if value != 0:
                raise WrongMsgValue(0, value)
            self._pull(token, sender, amount)
        return [self._credit_deposit(token, sender, amount)]

    def deposit_with_permit(
        self,
        sender: bytes,
        owner: bytes,
        token: bytes,
        amount: int,
        deadline: int,
        *,
        now: int,
        permit_signer: bytes | None = None,
    ) -> list[Event]:
        """EIP-2612 `permit` then pull `amount` from `owner`, credit `owner` (anyone submits).

        The model does not check the permit's signature: `permit_signer` says who signed it
        (None: the owner, correctly). As in the contract, a failing permit is tolerated only
        when `sender` is the owner and the allowance is already enough (a plain deposit of
        tokens it approved); else its error stands.
        """
        if amount == 0:
            raise ZeroAmount()
        if token == ETH:
            raise InvalidTerms()
        permit_error: Exception | None = None
        if now > deadline:
            permit_error = ERC2612ExpiredSignature(deadline)
        elif permit_signer is not None and permit_signer != owner:
            permit_error = ERC2612InvalidSigner(permit_signer, owner)
        if permit_error is not None:
            if sender != owner or self.wallets.allowance(token, owner, self.address) < amount:
                raise permit_error
            self._pull(token, owner, amount)
        else:
            before = self.wallets.allowance(token, owner, self.address)
            self.wallets.approve(token, owner, self.address, amount)
            try:
                self._pull(token, owner, amount)
            except Exception:
                self.wallets.approve(token, owner, self.address, before)
                raise
        return [self._credit_deposit(token, owner, amount)]

    def withdraw(self, sender: bytes, token: bytes, amount: int, to: bytes) -> list[Event]:
        if amount == 0:
            raise ZeroAmount()
        available = self.balance_of(token, sender)
        if available < amount:
            raise InsufficientBalance(token, sender, amount, available)
        if to in (ZERO_ADDRESS, self.address):
            raise InvalidRecipient(to)
        self.wallets.check_transfer(token, self.address, to, amount)
        self.free[(token, sender)] = available - amount
        self.wallets.transfer(token, self.address, to, amount)
        return [Event("Withdrawn", (token, sender, to, amount))]

    def _pull(self, token: bytes, owner: bytes, amount: int) -> None:
        """transferFrom exactly `amount` into the escrow, or raise and change nothing."""
        self.wallets.check_transfer_from(token, self.address, owner, self.address, amount)
        received = amount - self.wallets.fee(token, amount)
        if received != amount:
            raise FeeOnTransferNotSupported(token, amount, received)
        self.wallets.transfer_from(token, self.address, owner, self.address, amount)

    def _credit_deposit(self, token: bytes, account: bytes, amount: int) -> Event:
        self._credit(token, account, amount)
        return Event("Deposited", (token, account, amount))

    def _credit(self, token: bytes, account: bytes, amount: int) -> None:
        if amount:
            self.free[(token, account)] = self.balance_of(token, account) + amount

    # -------------------------------------------------------------- rentals

    def open(self, sender: bytes, terms: Terms, *, now: int) -> list[Event]:
        """The renter locks terms.deposit from its free balance."""
        if sender != terms.renter:
            raise NotRenter(sender)
        return self._open(terms, now)

    def open_for(
        self,
        sender: bytes,
        terms: Terms,
        nonce: int,
        deadline: int,
        signature: bytes,
        *,
        now: int,
    ) -> list[Event]:
        """Anyone opens for a renter that signed OpenRequest(terms, nonce, deadline)."""
        del sender
        if now > deadline:
            raise SignatureExpired(deadline)
        expected = self.nonce_of(terms.renter)
        if nonce != expected:
            raise BadNonce(expected, nonce)
        digest = self.open_request_digest(OpenRequest(terms, nonce, deadline))
        if self.check_signatures and not _signed_by(digest, signature, terms.renter):
            raise InvalidSignature()
        # _open raises before it changes anything, so the nonce is spent only on success.
        events = self._open(terms, now)
        self.nonces[terms.renter] = expected + 1
        return events

    def _open(self, terms: Terms, now: int) -> list[Event]:
        if (
            terms.renter == ZERO_ADDRESS
            or terms.provider == ZERO_ADDRESS
            or terms.receipt_signer == ZERO_ADDRESS
            or terms.deposit == 0
            or terms.price_per_second == 0
            or terms.max_seconds == 0
        ):
            raise InvalidTerms()
        if not self.min_challenge_window <= terms.challenge_window <= self.max_challenge_window:
            raise ChallengeWindowOutOfBounds(
                terms.challenge_window, self.min_challenge_window, self.max_challenge_window
            )
        if terms.deposit > MAX_DEPOSIT:
            raise AmountTooLarge(terms.deposit)
        rental_id = terms.rental_id
        if rental_id in self.rentals:
            raise RentalExists(rental_id)
        available = self.balance_of(terms.token, terms.renter)
        if available < terms.deposit:
            raise InsufficientBalance(terms.token, terms.renter, terms.deposit, available)
        event = Event(
            "Opened",
            (
                rental_id, terms.renter, terms.provider, terms.token, terms.deposit,
                terms.price_per_second, terms.max_seconds, terms.challenge_window,
                terms.receipt_signer, terms.agreement_id,
            ),
        )  # fmt: skip
        self.free[(terms.token, terms.renter)] = available - terms.deposit
        self.rentals[rental_id] = _Rental(
            status=Status.OPEN,
            token=terms.token,
            deposit=terms.deposit,
            paid=0,
            opened_at=now,
            deadline=min(now + terms.max_seconds + terms.challenge_window, MAX_TIMESTAMP),
        )
        return [event]

    def top_up(self, sender: bytes, terms: Terms, amount: int, *, now: int) -> list[Event]:
        if sender != terms.renter:
            raise NotRenter(sender)
        rental_id, r = self._open_rental(terms)
        if r.close_requested:
            raise CloseAlreadyRequested(rental_id)
        if now > r.deadline:
            raise DeadlinePassed(r.deadline)
        if amount == 0:
            raise ZeroAmount()
        new_deposit = r.deposit + amount
        if new_deposit > MAX_DEPOSIT:
            raise AmountTooLarge(amount)
        available = self.balance_of(terms.token, terms.renter)
        if available < amount:
            raise InsufficientBalance(terms.token, terms.renter, amount, available)
        self.free[(terms.token, terms.renter)] = available - amount
        r.deposit = new_deposit
        return [Event("ToppedUp", (rental_id, amount, new_deposit))]

    def claim(
        self, sender: bytes, terms: Terms, receipt: Receipt, signature: bytes, *, now: int
    ) -> list[Event]:
        """The provider takes what the receipt adds over what it was paid; the rental stays open."""
        if sender != terms.provider:
            raise NotProvider(sender)
        rental_id, r = self._open_rental(terms)
        payable = self._payable(terms, rental_id, r, receipt, signature, now)
        if payable <= r.paid:
            raise NothingToClaim(payable, r.paid)
        self._credit(terms.token, terms.provider, payable - r.paid)
        r.paid = payable
        return [
            Event(
                "Claimed", (rental_id, receipt.seq, receipt.uptime_seconds, receipt.amount, payable)
            )
        ]

    def settle(
        self, sender: bytes, terms: Terms, receipt: Receipt, signature: bytes, *, now: int
    ) -> list[Event]:
        """The provider closes, with a receipt or (empty signature) with what it claimed."""
        if sender != terms.provider:
            raise NotProvider(sender)
        rental_id, r = self._open_rental(terms)
        new_paid = r.paid
        uptime = 0
        if signature:
            new_paid = max(r.paid, self._payable(terms, rental_id, r, receipt, signature, now))
            uptime = receipt.uptime_seconds
        return [self._close(terms, rental_id, r, new_paid, uptime, sender)]

    def request_close(self, sender: bytes, terms: Terms, *, now: int) -> list[Event]:
        """The renter starts the challenge window; the deadline never moves later."""
        if sender != terms.renter:
            raise NotRenter(sender)
        rental_id, r = self._open_rental(terms)
        if r.close_requested:
            raise CloseAlreadyRequested(rental_id)
        if now > r.deadline:
            raise DeadlinePassed(r.deadline)
        r.deadline = min(now + terms.challenge_window, r.deadline)
        r.close_requested = True
        return [Event("CloseRequested", (rental_id, r.deadline))]

    def finalize(self, sender: bytes, terms: Terms, *, now: int) -> list[Event]:
        """Anyone, once the deadline has passed: the provider keeps what it claimed."""
        rental_id, r = self._open_rental(terms)
        if now <= r.deadline:
            raise DeadlineNotReached(r.deadline)
        return [self._close(terms, rental_id, r, r.paid, 0, sender)]

    def _open_rental(self, terms: Terms) -> tuple[bytes, _Rental]:
        rental_id = terms.rental_id
        r = self.rentals.get(rental_id)
        if r is None:
            raise UnknownRental(rental_id)
        if r.status is Status.CLOSED:
            raise RentalClosed(rental_id)
        return rental_id, r

    def _payable(
        self,
        terms: Terms,
        rental_id: bytes,
        r: _Rental,
        receipt: Receipt,
        signature: bytes,
        now: int,
    ) -> int:
        """Check a receipt in the contract's order; what it makes payable (capped by deposit)."""
        if now > r.deadline:
            raise DeadlinePassed(r.deadline)
        if receipt.rental_id != rental_id:
            raise WrongRental(rental_id, receipt.rental_id)
        if self.check_signatures and not _signed_by(
            self.receipt_digest(receipt), signature, terms.receipt_signer
        ):
            raise InvalidSignature()
        max_amount = terms.price_per_second * receipt.uptime_seconds
        if receipt.amount > max_amount:
            raise AmountExceedsPrice(receipt.amount, max_amount)
        elapsed = now - r.opened_at
        if receipt.uptime_seconds > elapsed:
            raise UptimeExceedsElapsed(receipt.uptime_seconds, elapsed)
        return min(receipt.amount, r.deposit)

    def _close(
        self, terms: Terms, rental_id: bytes, r: _Rental, paid: int, uptime: int, closer: bytes
    ) -> Event:
        self._credit(terms.token, terms.provider, paid - r.paid)
        self._credit(terms.token, terms.renter, r.deposit - paid)
        event = Event("Settled", (rental_id, paid, r.deposit - paid, uptime, closer))
        r.paid = paid
        r.status = Status.CLOSED
        return event

    # ---------------------------------------------------------- invariants

    def locked(self, token: bytes) -> int:
        """What open rentals still hold in `token`."""
        return sum(
            r.deposit - r.paid
            for r in self.rentals.values()
            if r.status is Status.OPEN and r.token == token
        )

    def liabilities(self) -> dict[bytes, int]:
        """Per token: free balances plus what open rentals still hold."""
        out: dict[bytes, int] = {}
        for (token, _account), amount in self.free.items():
            out[token] = out.get(token, 0) + amount
        for r in self.rentals.values():
            if r.status is Status.OPEN:
                out[r.token] = out.get(r.token, 0) + r.deposit - r.paid
        return out

    def conservation_errors(self) -> dict[bytes, tuple[int, int]]:
        """Tokens whose escrow holdings differ from its liabilities: token -> (held, owed).

        Empty when the invariant holds: for every token, what the escrow holds equals the sum of
        free balances plus what open rentals still hold.
        """
        owed = self.liabilities()
        tokens = set(owed) | {t for t, a in self.wallets.balances if a == self.address}
        out = {}
        for token in tokens:
            held = self.wallets.balance(token, self.address)
            if held != owed.get(token, 0):
                out[token] = (held, owed.get(token, 0))
        return out


def _signed_by(digest: bytes, signature: bytes, expected: bytes) -> bool:
    """OpenZeppelin ECDSA.tryRecover semantics: 65 bytes, low s, v in {27, 28}."""
    try:
        return recover(digest, signature) == expected
    except BadSignature:
        return False
