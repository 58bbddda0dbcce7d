"""What several commands share: the password prompt, opening the key store, the chain's token,
and output helpers (stdout for results, stderr for progress)."""

from __future__ import annotations

import getpass
import json
import os
import sys
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from rigmesh.cli.exits import CHAIN, KEYS, USAGE, CliError
from rigmesh.cli.settings import Settings

if TYPE_CHECKING:
    from rigmesh.store.keys import KeyStore, NodeKeys

PASSWORD_ENV = "RIGMESH_PASSWORD"


def secret(env: str, prompt: str) -> str:
    """A password from `env`, else asked on the terminal; refused without either."""
    value = os.environ.get(env)
    if value is not None:
        return value
    if not sys.stdin.isatty():
        raise CliError(f"no {prompt} given and no terminal to ask on",
                       f"set {env}, or run from a terminal", USAGE)
    return getpass.getpass(f"{prompt}: ")


def password() -> str:
    return secret(PASSWORD_ENV, "key store password")


def key_store(settings: Settings) -> KeyStore:
    from rigmesh.store.keys import KeyStore

    return KeyStore(settings.home / "keys")


def load_keys(settings: Settings) -> NodeKeys:
    from rigmesh.store.keys import KeyStoreError

    store = key_store(settings)
    if not store.exists():
        raise CliError(f"no keys in {store.directory}",
                       "run `rigmesh init` first (or pass --home of an initialised node)", KEYS)
    try:
        return store.load(password())
    except KeyStoreError as exc:
        raise CliError(str(exc), f"check {PASSWORD_ENV} or the password you typed", KEYS) from None


def progress(text: str) -> None:
    """A progress line on stderr (stdout carries results, so it can be piped or parsed)."""
    print(text, file=sys.stderr, flush=True)


def print_json(doc: Any) -> None:
    print(json.dumps(doc, indent=2, sort_keys=True))


def units(amount: int, decimals: int) -> str:
    """Base units as a decimal token amount, exactly (display only)."""
    return format(Decimal(amount).scaleb(-decimals).normalize(), "f")


def parse_amount(text: str, decimals: int, flag: str) -> int:
    """Whole tokens as people write them ("1000", "0.5") -> base units, exactly."""
    try:
        value = Decimal(text).scaleb(decimals)
    except InvalidOperation:
        value = Decimal("NaN")
    if not value.is_finite() or value < 0 or value != value.to_integral_value():
        raise CliError(f"{flag}: {text!r} is not an amount with at most {decimals} decimals",
                       f"for example {flag} 1000", USAGE)
    return int(value)


def connect(settings: Settings) -> Any:
    """A web3 connection to the configured chain, its chain id checked."""
    from web3 import Web3

    from rigmesh.chain.preflight import check_chain

    rpc = settings.require("chain.rpc", "the chain's JSON-RPC URL")
    w3 = Web3(Web3.HTTPProvider(rpc, request_kwargs={"timeout": 10}))
    problem = check_chain(w3, settings["chain.chain_id"], settings["chain.escrow"])
    if problem is not None:
        raise CliError(problem.message, problem.hint, CHAIN)
    return w3
