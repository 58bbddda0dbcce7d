"""`rigmesh offers`: join the network, sync the offer book, list what matches."""

from __future__ import annotations

import argparse
from typing import Any

from rigmesh.cli import settings
from rigmesh.cli.common import connect, print_json, progress
from rigmesh.cli.exits import NO_OFFER, CliError
from rigmesh.cli.market import add_query_flags, build_filter, offer_row, offer_table, sync_book


def no_match(f: Any, node: Any) -> CliError:
    """No offer matched: say which single dropped condition would find some."""
    held = len(node.book)
    hint = "relax the query, or wait for more providers (--wait)"
    suggestion = f.suggest(node.book, node.now())
    if suggestion is not None:
        text, count = suggestion
        hint = f"dropping `{text}` would find {count} offer(s)"
    elif held:
        hint = f"none of the {held} offer(s) in the book match even with one condition dropped"
    return CliError(f"no offer matches ({held} offer(s) in the book)", hint, NO_OFFER)


def cmd_offers(args: argparse.Namespace) -> int:
    import secrets

    import trio

    from rigmesh.chain.preflight import token_info
    from rigmesh.node import open_node
    from rigmesh.store.keys import NodeKeys
    from rigmesh.wire.eip712 import EthKey
    from rigmesh.wire.identity import PeerKey

    s = settings.load(args)
    chain = s.chain()
    token = token_info(connect(s), chain.token)
    f = build_filter(args, token, limit=args.limit)
    # Browsing needs no account: a throwaway identity, so no password is asked.
    keys = NodeKeys(PeerKey.generate(), EthKey(secrets.token_bytes(32)))

    async def run() -> int:
        async with open_node(s.node_config(keys)) as node:
            await sync_book(node, args.wait)
            found = f.run(node.book, node.now())
            if not found:
                raise no_match(f, node)
            score = node.book.reputation.score
            if args.json:
                print_json([offer_row(o, token, score(o.offer.provider)) for o in found])
            else:
                from rich.console import Console

                Console(width=160).print(offer_table(found, token, score))
            progress(f"{len(found)} offer(s) of {len(node.book)} in the book")
        return 0

    return trio.run(run)


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "offers", parents=[common], help="list GPU offers on the network",
        description="Join the network through the bootstrap peers, wait for the offer book to "
        "sync, and list the offers that match, best first. Prices are per hour in whole "
        "tokens; --json prints exact base units per second too.",
        epilog="example: rigmesh offers 'gpu_name=H100 vram>=80 dph<3 country in [DE,NL]' "
        "--model 70b --context 32k --sort score")
    add_query_flags(p)
    p.add_argument("--limit", type=int, default=20, help="at most this many (default 20)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_offers)
