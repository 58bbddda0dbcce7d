"""`rigmesh devnet`: a local chain for trying Rigmesh (anvil, the escrow and a test stablecoin,
accounts funded), running until Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import sys

from rigmesh.cli import settings
from rigmesh.cli.common import key_store, parse_amount, progress
from rigmesh.cli.exits import CHAIN, FAILURE, USAGE, CliError


def _address(text: str) -> bytes:
    raw = settings.hex_bytes(text, 20)
    if raw is None:
        raise CliError(f"--fund: {text!r} is not an address (0x and 40 hex digits)",
                       "pass the account to fund, e.g. the one `rigmesh keys show` prints", USAGE)
    return raw


def cmd_devnet(args: argparse.Namespace) -> int:
    from web3 import Web3

    from rigmesh.chain.anvil import ANVIL_DEV_KEY, Anvil, AnvilError, find_anvil
    from rigmesh.chain.devnet import fund, prepare
    from rigmesh.chain.preflight import token_info
    from rigmesh.store.keys import KeyStoreError
    from rigmesh.wire.eip712 import EthKey

    s = settings.load(args)
    binary = find_anvil()
    if binary is None:
        raise CliError("anvil is not installed",
                       "run `make setup` in the rigmesh checkout (it installs anvil under "
                       "contracts/node_modules), or put Foundry's anvil on PATH, or set "
                       "RIGMESH_ANVIL to its path", FAILURE)
    accounts = [_address(a) for a in args.fund]
    if not accounts:
        try:
            accounts = [key_store(s).address()]
        except KeyStoreError:
            progress("no --fund given and no keys in this node's home: funding no account")
    # Block the signals before anvil starts: it inherits the mask, and a Ctrl-C then reaches
    # anvil only through our shutdown (its process group gets it from the terminal anyway).
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        anvil = Anvil.start(binary, chain_id=s["chain.chain_id"], port=args.port)
    except AnvilError as exc:
        raise CliError(f"anvil did not start: {exc}",
                       "is the port taken? pass another --port", CHAIN) from None
    try:
        w3 = Web3(Web3.HTTPProvider(anvil.url))
        funder = EthKey(ANVIL_DEV_KEY)
        deployment = prepare(w3, funder)
        token = token_info(w3, deployment.token)
        tokens = parse_amount(args.tokens, token.decimals, "--tokens")
        wei = parse_amount(args.eth, 18, "--eth")
        for account in accounts:
            fund(w3, funder, deployment, account, wei=wei, tokens=tokens)
            progress(f"funded 0x{account.hex()}: {args.eth} ETH, {args.tokens} {token.symbol}")
        values = {"chain.rpc": anvil.url, "chain.chain_id": str(deployment.chain_id),
                  "chain.escrow": "0x" + deployment.escrow.hex(),
                  "chain.token": "0x" + deployment.token.hex()}
        print("[chain]")
        for dotted, value in values.items():
            name = dotted.split(".")[1]
            print(f"{name} = {value}" if name == "chain_id" else f'{name} = "{value}"')
        sys.stdout.flush()
        if args.write_config:
            settings.write(s.path, values)
            progress(f"written to {s.path}")
        progress(f"devnet ready: {anvil.url}, chain {deployment.chain_id}, token {token.symbol} "
                 f"({token.decimals} decimals). Ctrl-C stops it.")
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
        progress("stopping the devnet")
    finally:
        anvil.stop()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    return 0


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "devnet", parents=[common], help="a local chain to try Rigmesh on (anvil)",
        description="Start anvil on loopback, deploy the escrow and a test stablecoin (tUSD, 6 "
        "decimals), fund accounts with ETH for gas and tUSD, print the [chain] config lines to "
        "use it, and keep running until Ctrl-C. Other processes (`rigmesh provide`, `rigmesh "
        "rent`) reach it through chain.rpc.")
    p.add_argument("--port", type=int, default=None, help="port to listen on (default: a free one)")
    p.add_argument("--fund", action="append", default=[], metavar="ADDRESS",
                   help="an account to fund (repeat; default: this node's account)")
    p.add_argument("--eth", default="10", metavar="AMOUNT", help="ETH per account (default 10)")
    p.add_argument("--tokens", default="1000", metavar="AMOUNT",
                   help="test stablecoins per account (default 1000)")
    p.add_argument("--write-config", action="store_true",
                   help="also write the [chain] lines into the config file")
    p.set_defaults(func=cmd_devnet)
