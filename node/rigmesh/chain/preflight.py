"""Checks before money moves: is this the configured chain, is the escrow there, can the account
pay for the rental and its gas, does the rental fit the budget.

Each check returns None or a `Problem` (what is wrong, what to do, and its kind: "chain",
"funds", "budget"), so a caller decides how to report it (the CLI maps kinds to exit codes).
Synchronous web3: call it from a worker thread inside trio.
"""

from __future__ import annotations

from dataclasses import dataclass

from web3 import Web3

from rigmesh.escrow.client import EscrowClient
from rigmesh.escrow.contract import token_artifact
from rigmesh.escrow.model import ETH
from rigmesh.wire.eip712 import EthKey


@dataclass(frozen=True)
class Problem:
    kind: str
    message: str
    hint: str


@dataclass(frozen=True)
class Token:
    address: bytes
    decimals: int
    symbol: str


def _hex(address: bytes) -> str:
    return Web3.to_checksum_address(address)


def check_chain(w3: Web3, chain_id: int, escrow: bytes) -> Problem | None:
    """The RPC answers, reports `chain_id`, and has code at `escrow`."""
    try:
        actual = int(w3.eth.chain_id)
    except Exception as exc:
        return Problem("chain", f"the chain at {getattr(w3.provider, 'endpoint_uri', '?')} does "
                       f"not answer ({type(exc).__name__})",
                       "start it (`rigmesh devnet` for a local one) or fix chain.rpc")
    if actual != chain_id:
        return Problem("chain", f"wrong chain: the RPC reports chain id {actual}, the config "
                       f"says {chain_id}",
                       f"point chain.rpc at chain {chain_id}, or set chain.chain_id = {actual} "
                       "if that is the chain you mean")
    if not w3.eth.get_code(_hex(escrow)):
        return Problem("chain", f"no escrow deployed at {_hex(escrow)} on chain {actual}",
                       "fix chain.escrow, or deploy it (`rigmesh devnet` deploys one on anvil)")
    return None


def token_info(w3: Web3, token: bytes) -> Token:
    """The token's decimals and symbol (the native token: 18, "ETH")."""
    if token == ETH:
        return Token(token, 18, "ETH")
    art = token_artifact()

    def view(name: str) -> object:
        fn = art.fn(name)
        return fn.decode_output(bytes(w3.eth.call({"to": _hex(token), "data": fn.encode()})))[0]

    try:
        decimals, symbol = int(view("decimals")), str(view("symbol"))  # type: ignore[call-overload]
    except Exception as exc:
        raise ValueError(f"{_hex(token)} is not an ERC-20 token on this chain: {exc}") from None
    return Token(token, decimals, symbol)


def check_funds(w3: Web3, escrow: bytes, token: Token, account: EthKey, deposit: int, *,
                gasless: bool, chain_id: int) -> Problem | None:
    """The account can lock `deposit`: its free escrow balance plus its wallet's tokens cover
    it, and it holds native gas token to send the transactions (unless `gasless`: the provider
    submits openFor with an EIP-2612 permit the renter signs)."""
    client = EscrowClient(w3, escrow, account, chain_id=chain_id)
    who = _hex(account.address)
    if not gasless and token.address != ETH and client.native_balance() == 0:
        return Problem("funds", f"{who} has no native gas token to send the open transaction",
                       "fund it with gas, or pass --gasless: the provider then submits openFor "
                       "with a permit you sign, which needs no gas")
    free = client.balance_of(token.address)
    wallet = client.token_balance(token.address)
    if free + wallet < deposit:
        return Problem("funds", f"insufficient {token.symbol}: the rental locks {deposit} base "
                       f"units, {who} holds {wallet} in its wallet and {free} free in the escrow",
                       f"get at least {deposit - free - wallet} more {token.symbol} base units "
                       "to that account, or rent for less time")
    return None


def check_budget(deposit: int, *, per_rental: int | None, per_month: int | None,
                 locked_this_month: int) -> Problem | None:
    if per_rental is not None and deposit > per_rental:
        return Problem("budget", f"budget exceeded: the rental would lock {deposit}, "
                       f"budget.per_rental is {per_rental}",
                       "rent for less time or a cheaper offer, or raise budget.per_rental")
    if per_month is not None and locked_this_month + deposit > per_month:
        return Problem("budget", f"budget exceeded: this month's rentals locked "
                       f"{locked_this_month}, this one would add {deposit}, budget.per_month is "
                       f"{per_month}",
                       "wait for next month, rent for less, or raise budget.per_month")
    return None
