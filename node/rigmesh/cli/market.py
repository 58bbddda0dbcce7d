"""What `offers` and `rent` share: the query flags, joining the network and waiting for the
offer book, and the offer table."""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING, Any

from rigmesh.cli.common import progress, units
from rigmesh.cli.exits import USAGE, CliError

if TYPE_CHECKING:
    from rigmesh.chain.preflight import Token
    from rigmesh.market.filter import OfferFilter
    from rigmesh.market.offer import SignedOffer
    from rigmesh.node import Node

QUERY_HELP = (
    "conditions, vastai style, quoted as one argument: gpu_name=H100 vram>=80 dph<3 "
    "'country in [DE,NL]' num_gpus>=2 reputation>=600 cpu_cores>=8 (vram and RAM in GB as "
    "marketed, dph in tokens per hour; num_gpus=0 for CPU-only offers, num_gpus>=0 for any)")


def add_query_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("query", nargs="*", metavar="CONDITION", help=QUERY_HELP)
    p.add_argument("--model", metavar="SIZE",
                   help="only offers whose total VRAM fits this model: 70b, 8b, llama-3-70b, ...")
    p.add_argument("--context", default="4k", metavar="TOKENS",
                   help="context length for --model: 32k, 8192 (default 4k)")
    p.add_argument("--precision", default="bf16",
                   help="weights' precision for --model: bf16, fp8, int8, int4 (default bf16)")
    p.add_argument("--sort", default="price", choices=("price", "dph", "vram", "score"),
                   help="price/dph: cheapest first; vram: cheapest per GiB of VRAM; score: "
                   "price weighed by reputation")
    p.add_argument("--wait", type=float, default=10.0, metavar="SECONDS",
                   help="longest to wait for the offer book to sync (default 10)")


def build_filter(args: argparse.Namespace, token: Token, *, limit: int | None) -> OfferFilter:
    """The query text and flags as an `OfferFilter` (a bad one: CliError pointing at it)."""
    from rigmesh.market.filter import SORTS, FilterError, parse_context, parse_filter
    from rigmesh.market.vram import min_total_vram_mib
    from rigmesh.wire.errors import InvalidField

    text = " ".join(args.query)
    try:
        f = parse_filter(text, decimals=token.decimals)
    except FilterError as exc:
        pointer = exc.pointer(text).replace("\n", "\n  ")
        raise CliError(f"bad query: {exc.message}\n  {pointer}",
                       "see `rigmesh offers --help` for the fields and operators", USAGE) from None
    base: dict[str, Any] = {"token": token.address, "sort": SORTS[args.sort], "limit": limit}
    if args.model:
        try:
            base["min_total_vram_mib"] = min_total_vram_mib(
                args.model, context=parse_context(args.context), precision=args.precision)
        except InvalidField as exc:
            raise CliError(f"--model/--context/--precision: {exc.detail}",
                           "for example --model 70b --context 32k --precision int4",
                           USAGE) from None
    f = f.but(**base)
    try:
        f.queries()
    except FilterError as exc:
        raise CliError(f"bad query: {exc.message}", "drop one of the conflicting conditions",
                       USAGE) from None
    return f


async def sync_book(node: Node, wait: float) -> int:
    """Ask the peers for their offers until the book stops growing (or `wait` seconds);
    progress on stderr. Returns the number of offers held."""
    import trio

    if not node.config.bootstrap:
        progress("no bootstrap peers (set node.bootstrap or pass --bootstrap): showing the "
                 "offers already in the local book")
    deadline = time.monotonic() + wait
    last, steady = -1, 0
    with trio.move_on_after(wait):
        while time.monotonic() < deadline:
            await node.gossip.anti_entropy()
            held = len(node.book)
            progress(f"syncing offers: {len(node.net.peers())} peer(s), {held} offer(s)")
            steady = steady + 1 if held == last and held else 0
            if steady >= 2 or (not node.config.bootstrap):
                break
            last = held
            await trio.sleep(0.3)
    return len(node.book)


def describe_gpu(s: SignedOffer) -> str:
    o = s.offer
    if o.gpu is None:
        return f"{o.cpu_cores} CPU cores (no GPU)"
    return f"{o.gpu.count}x {o.gpu.model}"


def offer_row(s: SignedOffer, token: Token, reputation: int) -> dict[str, Any]:
    """One offer as `offers --json` prints it (amounts in base units, exact)."""
    from rigmesh.wire.identity import peer_id_to_text

    o = s.offer
    return {
        "cid": s.cid, "provider": peer_id_to_text(o.provider), "listing": o.listing,
        "gpu": None if o.gpu is None else {"model": o.gpu.model, "count": o.gpu.count,
                                           "vram_mib": o.gpu.vram_mib},
        "cpu_cores": o.cpu_cores, "ram_mib": o.ram_mib,
        "price_per_second": o.price_per_second,
        "price_per_hour": units(o.price_per_second * 3600, token.decimals),
        "token": "0x" + token.address.hex(), "symbol": token.symbol,
        "region": {"country": o.region.country, "zone": o.region.zone},
        "reputation": reputation, "min_seconds": o.min_seconds, "max_seconds": o.max_seconds,
        "heartbeat_seconds": o.heartbeat_seconds, "capacity": o.capacity,
        "isolation": o.isolation, "expires": o.expires,
    }


def offer_table(offers: list[SignedOffer], token: Token, score: Any) -> Any:
    from rich.table import Table

    table = Table()
    for name, justify in (("GPU", "left"), ("VRAM", "right"), (f"{token.symbol}/h", "right"),
                          ("region", "left"), ("reputation", "right"), ("provider", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for s in offers:
        o = s.offer
        vram = "-" if o.gpu is None else f"{o.gpu.vram_mib * o.gpu.count // 1024} GiB"
        row = offer_row(s, token, score(o.provider))
        table.add_row(describe_gpu(s), vram, row["price_per_hour"],
                      f"{o.region.country}/{o.region.zone}" if o.region.zone else o.region.country,
                      str(row["reputation"]), row["provider"][:16] + "…")
    return table
