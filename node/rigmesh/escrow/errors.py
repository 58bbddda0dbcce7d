"""Typed escrow errors: one Python class per Solidity custom error, with the same name.

The executable model (`rigmesh.escrow.model`) raises these, and the chain adapter
(`rigmesh.escrow.client`) raises the very same classes, either before sending a transaction (when
the outcome is already known from chain state) or after decoding a revert's data. A caller
therefore handles `InsufficientBalance` once, whoever detected it.

Each class carries its Solidity signature; the 4-byte selector is derived from it, and
tests/escrow checks that this table matches the compiled contract's ABI, so a renamed or
re-typed error in the contract fails a test instead of decoding as garbage.

Errors a token (OpenZeppelin ERC20 / ERC20Permit / SafeERC20) or the reentrancy guard raise are
here too: they surface as reverts of escrow calls.

Errors that exist only on our side of the RPC (no gas token, wrong chain, a node that does not
answer) derive from `ChainError`, not `EscrowError`: the contract can never raise them.
"""

from __future__ import annotations

from typing import ClassVar

from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_hash.auto import keccak


class EscrowError(Exception):
    """A revert of the escrow contract (or of a token it called), by Solidity error name.

    `args` are the error's ABI arguments in declaration order (addresses and bytes32 as `bytes`,
    integers as `int`), exactly as the contract would encode them.
    """

    #: e.g. "InsufficientBalance(address,address,uint256,uint256)"
    signature: ClassVar[str] = ""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)

    @property
    def name(self) -> str:
        return type(self).__name__

    @classmethod
    def abi_types(cls) -> list[str]:
        inner = cls.signature[cls.signature.index("(") + 1 : -1]
        return inner.split(",") if inner else []

    @classmethod
    def selector(cls) -> bytes:
        return keccak(cls.signature.encode())[:4]

    def encode(self) -> bytes:
        """The revert data the contract would return for this error."""
        return self.selector() + abi_encode(self.abi_types(), list(self.args))

    def __str__(self) -> str:
        shown = ", ".join("0x" + a.hex() if isinstance(a, bytes) else repr(a) for a in self.args)
        return f"{self.name}({shown})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.args == other.args  # type: ignore[union-attr]

    def __hash__(self) -> int:
        return hash((type(self), self.args))


# The escrow's own errors (contracts/src/IRentalEscrow.sol), in the interface's order.
class ZeroAmount(EscrowError):
    """An amount of zero."""

    signature = "ZeroAmount()"


class WrongMsgValue(EscrowError):
    """msg.value is not what the call needs."""

    signature = "WrongMsgValue(uint256,uint256)"


class FeeOnTransferNotSupported(EscrowError):
    """The token delivered less than was transferred."""

    signature = "FeeOnTransferNotSupported(address,uint256,uint256)"


class InsufficientBalance(EscrowError):
    """The account's free balance is below what the call needs."""

    signature = "InsufficientBalance(address,address,uint256,uint256)"


class EthTransferFailed(EscrowError):
    """The ETH recipient refused."""

    signature = "EthTransferFailed(address,uint256)"


class InvalidRecipient(EscrowError):
    """A withdrawal to address 0 or to the escrow itself."""

    signature = "InvalidRecipient(address)"


class AmountTooLarge(EscrowError):
    """A deposit does not fit the packed state."""

    signature = "AmountTooLarge(uint256)"


class InvalidTerms(EscrowError):
    """A zero address, deposit, price or duration in Terms."""

    signature = "InvalidTerms()"


class ChallengeWindowOutOfBounds(EscrowError):
    """terms.challengeWindow is outside the contract's [min, max]."""

    signature = "ChallengeWindowOutOfBounds(uint64,uint64,uint64)"


class RentalExists(EscrowError):
    """A rental with these terms was opened before."""

    signature = "RentalExists(bytes32)"


class UnknownRental(EscrowError):
    """No rental with this id was ever opened."""

    signature = "UnknownRental(bytes32)"


class RentalClosed(EscrowError):
    """The rental was settled or finalized."""

    signature = "RentalClosed(bytes32)"


class NotRenter(EscrowError):
    """Only the renter may call this."""

    signature = "NotRenter(address)"


class NotProvider(EscrowError):
    """Only the provider may call this."""

    signature = "NotProvider(address)"


class WrongRental(EscrowError):
    """The receipt is for another rental."""

    signature = "WrongRental(bytes32,bytes32)"


class InvalidSignature(EscrowError):
    """Malformed, high-s, or signed by someone else."""

    signature = "InvalidSignature()"


class AmountExceedsPrice(EscrowError):
    """The receipt asks more than price times uptime."""

    signature = "AmountExceedsPrice(uint256,uint256)"


class UptimeExceedsElapsed(EscrowError):
    """The receipt claims more seconds than have passed."""

    signature = "UptimeExceedsElapsed(uint64,uint256)"


class NothingToClaim(EscrowError):
    """The receipt adds nothing to paid."""

    signature = "NothingToClaim(uint256,uint256)"


class DeadlinePassed(EscrowError):
    """block.timestamp is after the deadline."""

    signature = "DeadlinePassed(uint256)"


class DeadlineNotReached(EscrowError):
    """The deadline has not passed yet."""

    signature = "DeadlineNotReached(uint256)"


class CloseAlreadyRequested(EscrowError):
    """requestClose was called before."""

    signature = "CloseAlreadyRequested(bytes32)"


class SignatureExpired(EscrowError):
    """The OpenRequest's deadline has passed."""

    signature = "SignatureExpired(uint256)"


class BadNonce(EscrowError):
    """The OpenRequest's nonce is not the renter's next."""

    signature = "BadNonce(uint256,uint256)"


# Raised by OpenZeppelin code the escrow runs (tokens, SafeERC20, the reentrancy guard).
class ERC20InsufficientBalance(EscrowError):
    """The token sender holds too little."""

    signature = "ERC20InsufficientBalance(address,uint256,uint256)"


class ERC20InsufficientAllowance(EscrowError):
    """The escrow's allowance is too low."""

    signature = "ERC20InsufficientAllowance(address,uint256,uint256)"


class ERC20InvalidReceiver(EscrowError):
    """A token transfer to address 0."""

    signature = "ERC20InvalidReceiver(address)"


class ERC20InvalidSender(EscrowError):
    """A token transfer from address 0."""

    signature = "ERC20InvalidSender(address)"


class ERC2612ExpiredSignature(EscrowError):
    """The permit has expired."""

    signature = "ERC2612ExpiredSignature(uint256)"


class ERC2612InvalidSigner(EscrowError):
    """The permit was not signed by its owner."""

    signature = "ERC2612InvalidSigner(address,address)"


class SafeERC20FailedOperation(EscrowError):
    """The token returned false or is not a contract."""

    signature = "SafeERC20FailedOperation(address)"


class ReentrancyGuardReentrantCall(EscrowError):
    """A re-entrant call."""

    signature = "ReentrancyGuardReentrantCall()"


ESCROW_ERRORS: tuple[type[EscrowError], ...] = (
    ZeroAmount, WrongMsgValue, FeeOnTransferNotSupported, InsufficientBalance, EthTransferFailed,
    InvalidRecipient, AmountTooLarge, InvalidTerms, ChallengeWindowOutOfBounds, RentalExists,
    UnknownRental, RentalClosed, NotRenter, NotProvider, WrongRental, InvalidSignature,
    AmountExceedsPrice, UptimeExceedsElapsed, NothingToClaim, DeadlinePassed, DeadlineNotReached,
    CloseAlreadyRequested, SignatureExpired, BadNonce,
)  # fmt: skip
LIBRARY_ERRORS: tuple[type[EscrowError], ...] = (
    ERC20InsufficientBalance, ERC20InsufficientAllowance, ERC20InvalidReceiver,
    ERC20InvalidSender, ERC2612ExpiredSignature, ERC2612InvalidSigner, SafeERC20FailedOperation,
    ReentrancyGuardReentrantCall,
)  # fmt: skip

BY_NAME: dict[str, type[EscrowError]] = {c.__name__: c for c in ESCROW_ERRORS + LIBRARY_ERRORS}
BY_SELECTOR: dict[bytes, type[EscrowError]] = {c.selector(): c for c in BY_NAME.values()}


class UnknownRevert(EscrowError):
    """Revert data that matches no known error (a Panic, an Error(string), or a bare revert)."""

    signature = ""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.data = data

    @property
    def name(self) -> str:
        if self.data[:4] == _PANIC_SELECTOR and len(self.data) == 36:
            return f"Panic(0x{int.from_bytes(self.data[4:], 'big'):02x})"
        if self.data[:4] == _ERROR_STRING_SELECTOR:
            try:
                (reason,) = abi_decode(["string"], self.data[4:])
            except Exception:  # malformed reason: fall through to the raw form
                return f"Error(0x{self.data.hex()})"
            return f"Error({reason!r})"
        return "Revert()" if not self.data else f"Revert(0x{self.data.hex()})"

    def __str__(self) -> str:
        return self.name


_PANIC_SELECTOR = keccak(b"Panic(uint256)")[:4]
_ERROR_STRING_SELECTOR = keccak(b"Error(string)")[:4]


def decode_revert(data: bytes) -> EscrowError:
    """The typed error for revert data; `UnknownRevert` when the selector is not ours."""
    cls = BY_SELECTOR.get(data[:4]) if len(data) >= 4 else None
    if cls is None:
        return UnknownRevert(data)
    try:
        values = abi_decode(cls.abi_types(), data[4:])
    except Exception:  # selector collision with different arguments: show the raw data
        return UnknownRevert(data)
    return cls(*(_normalize(t, v) for t, v in zip(cls.abi_types(), values, strict=True)))


def _normalize(abi_type: str, value: object) -> object:
    # eth_abi returns checksummed hex strings for addresses; the model uses 20 raw bytes.
    if abi_type == "address" and isinstance(value, str):
        return bytes.fromhex(value[2:])
    return value


class ChainError(Exception):
    """Something on our side of the RPC stopped the call before or instead of the contract."""


class NoGasToken(ChainError):
    """The sending account holds none of the chain's native token, so it cannot pay for gas."""

    def __init__(self, account: bytes) -> None:
        super().__init__(f"account 0x{account.hex()} holds no native token to pay gas")
        self.account = account


class WrongChain(ChainError):
    """The node serves another chain than the one the escrow address and signatures are for."""

    def __init__(self, expected: int, actual: int) -> None:
        super().__init__(f"expected chain id {expected}, the node reports {actual}")
        self.expected = expected
        self.actual = actual


class NotDeployed(ChainError):
    """No contract code at the escrow address on this chain."""

    def __init__(self, address: bytes) -> None:
        super().__init__(f"no contract code at 0x{address.hex()}")
        self.address = address


class TransactionDropped(ChainError):
    """A sent transaction was neither mined nor is it still known to the node."""


class TransactionReverted(ChainError):
    """A mined transaction failed and its revert reason could not be recovered."""

    def __init__(self, tx_hash: bytes) -> None:
        super().__init__(f"transaction 0x{tx_hash.hex()} reverted")
        self.tx_hash = tx_hash


class InsufficientFunds(ChainError):
    """The sender cannot pay the transaction's value (the node would refuse it outright)."""

    def __init__(self, account: bytes, needed: int, available: int) -> None:
        super().__init__(
            f"account 0x{account.hex()} holds {available} wei of native token, needs {needed}"
        )
        self.account = account
        self.needed = needed
        self.available = available
