"""`rigmesh provide` (rent this machine out until stopped) and `rigmesh status` (what it serves,
who rents it, what it earned)."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from rigmesh.cli import settings
from rigmesh.cli.common import connect, load_keys, print_json, progress, units
from rigmesh.cli.exits import USAGE, CliError

#: Written by a running provider in its home (removed when it stops): what `status` reads.
STATUS_FILE = "provider.json"

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str, flag: str) -> int:
    """Seconds from "90", "90s", "30m", "2h", "1d"."""
    t = text.strip().lower()
    unit = _DURATION_UNITS.get(t[-1:])
    digits = t[:-1] if unit else t
    if not digits.isdigit() or int(digits) == 0:
        raise CliError(f"{flag}: {text!r} is not a duration", f"for example {flag} 2h, 30m or 90s",
                       USAGE)
    return int(digits) * (unit or 1)


def _price(text: str, decimals: int, flag: str) -> int:
    from rigmesh.market.price import per_second_exact
    from rigmesh.wire.errors import InvalidField

    try:
        return per_second_exact(text, decimals=decimals)
    except InvalidField as exc:
        raise CliError(f"{flag}: {exc.detail}", f"pass one of the valid prices to {flag}",
                       USAGE) from None


def _region(text: str) -> Any:
    from rigmesh.market.offer import Region

    country, _, zone = text.partition("/")
    if len(country) != 2 or not country.isalpha() or not country.isascii():
        raise CliError(f"--region: {text!r} does not start with a two-letter country code",
                       "for example --region DE or --region DE/fra-1", USAGE)
    return Region(country.upper(), zone)


def cmd_provide(args: argparse.Namespace) -> int:
    import trio

    from rigmesh.chain.preflight import token_info
    from rigmesh.market.listing import Listing
    from rigmesh.node import ProviderSettings
    from rigmesh.rental.policy import ProviderPolicy

    s = settings.load(args)
    region = _region(args.region)
    max_seconds = parse_duration(args.max_rental, "--max-rental")
    min_seconds = parse_duration(args.min_rental, "--min-rental")
    if min_seconds > max_seconds:
        raise CliError("--min-rental is longer than --max-rental", "make the minimum shorter",
                       USAGE)
    chain = s.chain()
    token = token_info(connect(s), chain.token)
    price = _price(args.price_per_hour, token.decimals, "--price-per-hour")
    floor = None if args.min_price_per_hour is None else _price(
        args.min_price_per_hour, token.decimals, "--min-price-per-hour")
    if floor is not None and floor > price:
        raise CliError("--min-price-per-hour is above --price-per-hour",
                       "the minimum is what you accept when haggled down: set it lower", USAGE)
    keys = load_keys(s)
    listing = Listing(price_per_second=price, region=region, min_seconds=min_seconds,
                      max_seconds=max_seconds, heartbeat_seconds=s["node.heartbeat_seconds"],
                      capacity=args.capacity)
    policy = ProviderPolicy(
        min_price=floor, max_seconds=max_seconds, allow_network=args.allow_network,
        allowed_programs=frozenset(args.allow_program) if args.allow_program else None,
    )
    provider = ProviderSettings(listings=(listing,), policy=policy, gpu_source=args.gpu,
                                runner=args.runner, allow_unconfined=args.allow_unconfined)
    config = s.node_config(keys, provider=provider)
    try:
        return trio.run(_serve, config, token, price)
    except RuntimeError as exc:  # choose_runner: this host cannot confine jobs
        raise CliError(f"cannot start the job runner: {exc}",
                       "install bubblewrap, or pass --allow-unconfined to run strangers' jobs "
                       "as plain processes of this user (only on a machine you can lose)",
                       USAGE) from None


async def _serve(config: Any, token: Any, price: int) -> int:
    import signal

    import trio

    from rigmesh.node import open_node
    from rigmesh.wire.identity import peer_id_to_text

    status_path = config.home / STATUS_FILE
    async with open_node(config) as node:
        peer = peer_id_to_text(node.peer_id)
        addrs = node.addrs()
        listing = config.provider.listings[0]
        offers = [{"listing": x.listing, "price_per_second": x.price_per_second,
                   "price_per_hour": units(x.price_per_second * 3600, token.decimals),
                   "symbol": token.symbol, "region": f"{x.region.country}/{x.region.zone}",
                   "capacity": x.capacity, "isolation": x.isolation} for x in node.listings]
        status_path.write_text(json.dumps({
            "pid": os.getpid(), "peer_id": peer, "addrs": addrs, "started": int(time.time()),
            "account": "0x" + node.keys.account.address.hex(), "offers": offers,
        }, indent=2))
        print(f"peer id   {peer}")
        for a in addrs:
            print(f"listening {a}")
        print(f"offering  {units(price * 3600, token.decimals)} {token.symbol}/h "
              f"({price} base units/s), region {listing.region.country}, "
              f"isolation {node.listings[0].isolation}")
        print(f"renters join with: --bootstrap {addrs[0]}", flush=True)
        try:
            async with (node.events() as events,
                        trio.open_nursery() as nursery):
                async def report() -> None:
                    async for e in events:
                        if e.kind != "output":
                            print(f"rental {e.rental.hex()[:8]} {e.kind}: {e.text}", flush=True)

                nursery.start_soon(report)
                with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for signum in signals:
                        progress(f"{signal.Signals(signum).name}: withdrawing offers, stopping")
                        break
                nursery.cancel_scope.cancel()
        finally:
            status_path.unlink(missing_ok=True)
    print("stopped", flush=True)
    return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cmd_status(args: argparse.Namespace) -> int:
    from rigmesh.store.ledger import Ledger
    from rigmesh.store.report import summaries

    s = settings.load(args)
    home: Path = s.home
    status: dict[str, Any] | None = None
    path = home / STATUS_FILE
    if path.exists():
        status = json.loads(path.read_text())
        if not _alive(int(status["pid"])):
            status = None  # a provider that was killed left it behind
    rentals = []
    if (home / "ledger.sqlite3").exists():
        ledger = Ledger(home / "ledger.sqlite3")
        try:
            rentals = summaries(ledger, "provider")
        finally:
            ledger.close()
    earned = sum(r.paid if r.paid is not None else r.signed for r in rentals)
    active = [r for r in rentals if not r.closed]
    doc = {"running": status is not None, "provider": status,
           "rentals": [r.to_json() for r in rentals], "active": len(active), "earned": earned}
    if args.json:
        print_json(doc)
        return 0
    if status is None:
        print(f"no provider running in {home}")
    else:
        print(f"provider {status['peer_id']} (pid {status['pid']}), paid to {status['account']}")
        for a in status["addrs"]:
            print(f"  listening {a}")
        for o in status["offers"]:
            print(f"  offer {o['listing']}: {o['price_per_hour']} {o['symbol']}/h, "
                  f"{o['region']}, capacity {o['capacity']}")
    from rich.console import Console
    from rich.table import Table

    from rigmesh.wire.identity import peer_id_to_text

    table = Table(title="rentals", title_justify="left")
    for column in ("rental", "renter", "state", "seconds", "earned (base units)"):
        table.add_column(column)
    for r in rentals:
        table.add_row("-" if r.rental_id is None else "0x" + r.rental_id.hex()[:12],
                      peer_id_to_text(r.peer)[:16] + "…", r.state.split(":")[-1],
                      str(r.uptime), str(r.paid if r.paid is not None else r.signed))
    Console(width=140).print(table)
    print(f"{len(active)} active, earned so far {earned} base units "
          "(settled, or signed by the renter and not yet settled)")
    return 0


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "provide", parents=[common], help="rent this machine's GPUs out, until stopped",
        description="Probe the GPUs, sign and gossip an offer at the given price, take "
        "rentals, run their jobs and get paid through the escrow. Prints the peer id and the "
        "address renters bootstrap with, then one line per rental event. Ctrl-C or SIGTERM "
        "withdraws the offer and stops cleanly (exit 0).",
        epilog="example: rigmesh provide --price-per-hour 3.60 --region DE/fra-1 "
        "--max-rental 8h")
    p.add_argument("--price-per-hour", required=True, metavar="TOKENS",
                   help="price in whole tokens per hour (3.60 = 3.60 tUSD/h); it must come to a "
                   "whole number of base units per second (the error names the nearest)")
    p.add_argument("--region", required=True, metavar="CC[/ZONE]",
                   help="two-letter country code, optionally a zone: DE, DE/fra-1")
    p.add_argument("--gpu", default="probe", choices=("probe", "recorded-h100", "none"),
                   help="probe: NVML, then nvidia-smi (default); recorded-h100: replay a "
                   "recorded H100 (demos without a GPU); none: offer CPU capacity")
    p.add_argument("--min-price-per-hour", metavar="TOKENS",
                   help="lowest price a renter may haggle down to (default: the offer's)")
    p.add_argument("--allow-program", action="append", default=[], metavar="NAME",
                   help="only run jobs whose program is this (repeat; default: any)")
    p.add_argument("--allow-network", action="store_true", help="let jobs reach the network")
    p.add_argument("--max-rental", default="24h", metavar="DURATION",
                   help="longest rental taken: 90m, 8h, 1d (default 24h)")
    p.add_argument("--min-rental", default="1m", metavar="DURATION",
                   help="shortest rental taken (default 1m)")
    p.add_argument("--capacity", type=int, default=1, help="rentals at once (default 1)")
    p.add_argument("--runner", default="auto", choices=("auto", "subprocess"),
                   help="auto: confine jobs if the host can; subprocess: plain processes")
    p.add_argument("--allow-unconfined", action="store_true",
                   help="run jobs unconfined where the host cannot confine them")
    p.set_defaults(func=cmd_provide)

    st = sub.add_parser(
        "status", parents=[common], help="what the provider in this home serves and earned",
        description="Read a provider's status file and ledger in its home (works while it "
        "runs, from another terminal): its offers, its rentals and renters, earnings so far.")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.set_defaults(func=cmd_status)
