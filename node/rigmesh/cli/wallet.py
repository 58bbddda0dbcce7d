"""`rigmesh balance`, `rigmesh deposit AMOUNT`, `rigmesh withdraw AMOUNT`: the account's money.

Amounts are written as people write them ("12.5" tokens) and converted exactly to base units
with the token's decimals; an amount with more decimals than the token has is refused, never
rounded. Every transaction is journalled in the node's ledger (so `rigmesh rentals reconcile`
matches it) and asked for first (`--yes` skips the question; without a terminal it is needed).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any

from rigmesh.cli import settings
from rigmesh.cli.common import connect, load_keys, parse_amount, print_json, units
from rigmesh.cli.exits import CHAIN, FUNDS, USAGE, CliError
from rigmesh.cli.rentals import account_address, reader

if TYPE_CHECKING:
    from rigmesh.chain.preflight import Token
    from rigmesh.escrow.client import EscrowClient


def _token(s: settings.Settings, w3: Any) -> Token:
    from rigmesh.chain.preflight import token_info

    address = s.require("chain.token", "the token rentals are paid in")
    try:
        return token_info(w3, address)
    except ValueError as exc:
        raise CliError(str(exc), "fix chain.token (`rigmesh devnet` prints it)", CHAIN) from None


def locked(client: EscrowClient, s: settings.Settings, account: bytes) -> int:
    """What this account's open rentals (as renter) still hold in the escrow, from the chain;
    the rentals are the ones its ledger knows."""
    from rigmesh.escrow.model import Status
    from rigmesh.store.ledger import Ledger

    path = s.home / "ledger.sqlite3"
    if not path.exists():
        return 0
    ledger = Ledger(path)
    try:
        ids = [r.rental_id for r in ledger.rentals(role="renter") if r.rental_id is not None]
    finally:
        ledger.close()
    total = 0
    for rid in ids:
        state = client.rental_state(rid)
        if state.status is Status.OPEN:
            total += state.deposit - state.paid
    return total


def cmd_balance(args: argparse.Namespace) -> int:
    s = settings.load(args)
    w3 = connect(s)
    token = _token(s, w3)
    account = account_address(s)
    client = reader(s, w3)
    gas = client.native_balance(account)
    wallet = client.token_balance(token.address, account)
    free = client.balance_of(token.address, account)
    held = locked(client, s, account)
    doc = {"account": "0x" + account.hex(), "token": "0x" + token.address.hex(),
           "symbol": token.symbol, "decimals": token.decimals,
           # Exact integers as strings: JSON readers that use doubles lose above 2**53.
           "gas_wei": str(gas), "wallet": str(wallet), "escrow_free": str(free),
           "locked": str(held)}
    if args.json:
        print_json(doc)
        return 0
    sym, d = token.symbol, token.decimals
    print(f"account          0x{account.hex()}")
    print(f"gas token        {units(gas, 18)} ETH")
    print(f"{sym} in wallet   {units(wallet, d)} {sym}")
    print(f"free in escrow   {units(free, d)} {sym}")
    print(f"locked rentals   {units(held, d)} {sym}")
    return 0


def _confirm(args: argparse.Namespace, question: str) -> None:
    if args.yes:
        return
    if not sys.stdin.isatty():
        raise CliError("no terminal to confirm on", "pass --yes to go ahead without asking",
                       USAGE)
    if input(f"{question} [y/N] ").strip().lower() not in ("y", "yes"):
        raise CliError("cancelled", "", USAGE)


def _money_command(args: argparse.Namespace, verb: str) -> tuple[Any, ...]:
    from rigmesh.escrow.client import EscrowClient
    from rigmesh.store.ledger import Ledger

    s = settings.load(args)
    w3 = connect(s)  # the chain id and the escrow's code are checked here
    token = _token(s, w3)
    amount = parse_amount(args.amount, token.decimals, "AMOUNT")
    if amount == 0:
        raise CliError(f"{verb}: the amount must be more than zero", "", USAGE)
    keys = load_keys(s)
    ledger = Ledger(s.home / "ledger.sqlite3")
    client = EscrowClient(w3, s["chain.escrow"], keys.account, chain_id=s["chain.chain_id"],
                          journal=ledger.journal())
    if client.native_balance() == 0:
        ledger.close()
        raise CliError(f"0x{keys.account.address.hex()} has no native gas token to pay for the "
                       "transaction", "send the account some ETH (on a devnet: `rigmesh devnet "
                       "--fund ADDRESS`)", FUNDS)
    return s, token, amount, ledger, client


def _done(args: argparse.Namespace, verb: str, token: Token, amount: int, client: EscrowClient,
          hashes: list[bytes]) -> int:
    free = client.balance_of(token.address)
    doc = {verb: str(amount), "symbol": token.symbol, "escrow_free": str(free),
           "tx_hashes": ["0x" + h.hex() for h in hashes]}
    if args.json:
        print_json(doc)
    else:
        for h in hashes:
            print(f"tx               0x{h.hex()}")
        print(f"free in escrow   {units(free, token.decimals)} {token.symbol}")
    return 0


def cmd_deposit(args: argparse.Namespace) -> int:
    from rigmesh.escrow.errors import EscrowError
    from rigmesh.escrow.model import ETH

    _s, token, amount, ledger, client = _money_command(args, "deposit")
    try:
        wallet = client.token_balance(token.address)
        if wallet < amount:
            raise CliError(
                f"insufficient {token.symbol} in the wallet: the deposit needs {amount} base "
                f"units, the wallet holds {wallet}",
                f"get {amount - wallet} more base units of {token.symbol} to "
                f"0x{client.sender.hex()}, or deposit less", FUNDS)
        _confirm(args, f"deposit {units(amount, token.decimals)} {token.symbol} from "
                       f"0x{client.sender.hex()} into the escrow?")
        op = f"cli:{time.time_ns()}"  # one operation id per command: a retry re-sends it
        hashes = []
        try:
            if token.address != ETH:  # the native token needs no approval
                approved = client.approve(token.address, amount, op_id=f"approve:{op}")
                hashes.append(approved.tx_hash)
            done = client.deposit(token.address, amount, op_id=f"deposit:{op}")
        except EscrowError as exc:
            raise CliError(f"the deposit was refused: {exc}", "check `rigmesh balance`",
                           FUNDS) from None
        ledger.tx_outcome(f"deposit:{op}", status="mined", block=done.block_number)
        hashes.append(done.tx_hash)
        return _done(args, "deposited", token, amount, client, hashes)
    finally:
        ledger.close()


def cmd_withdraw(args: argparse.Namespace) -> int:
    from rigmesh.escrow.errors import EscrowError, InsufficientBalance

    s, token, amount, ledger, client = _money_command(args, "withdraw")
    try:
        free = client.balance_of(token.address)
        if free < amount:
            held = locked(client, s, client.sender)
            raise CliError(
                f"insufficient free balance in the escrow: withdrawing {amount} base units, "
                f"{free} are free" + (f" and {held} locked in open rentals" if held else ""),
                f"withdraw at most {units(free, token.decimals)}"
                + ("; locked money is free again once its rentals settle" if held else ""),
                FUNDS)
        _confirm(args, f"withdraw {units(amount, token.decimals)} {token.symbol} from the "
                       f"escrow to 0x{client.sender.hex()}?")
        op = f"withdraw:cli:{time.time_ns()}"
        try:
            done = client.withdraw(token.address, amount, op_id=op)
        except InsufficientBalance as exc:  # spent between the check and the send
            raise CliError(str(exc), "check `rigmesh balance`", FUNDS) from None
        except EscrowError as exc:
            raise CliError(f"the withdrawal was refused: {exc}", "check `rigmesh balance`",
                           FUNDS) from None
        ledger.tx_outcome(op, status="mined", block=done.block_number)
        return _done(args, "withdrawn", token, amount, client, [done.tx_hash])
    finally:
        ledger.close()


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    b = sub.add_parser("balance", parents=[common], help="gas, tokens, escrow balance, locked",
                       description="The account's native gas token, the rental token in its "
                       "wallet, its free balance in the escrow and what its open rentals lock.")
    b.add_argument("--json", action="store_true", help="machine-readable output")
    b.set_defaults(func=cmd_balance)
    for name, func, text in (
        ("deposit", cmd_deposit, "move tokens from the wallet into the escrow (approve, then "
         "deposit)"),
        ("withdraw", cmd_withdraw, "move free tokens from the escrow back to the wallet"),
    ):
        p = sub.add_parser(name, parents=[common], help=text, description=text + ". AMOUNT is "
                           "in whole tokens as you write them (12.5); at most the token's "
                           "decimals.")
        p.add_argument("amount", metavar="AMOUNT")
        p.add_argument("--yes", "-y", action="store_true",
                       help="go ahead without asking (needed without a terminal)")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(func=func)
