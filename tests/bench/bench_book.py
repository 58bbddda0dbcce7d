"""Offer book benchmark: indexed queries against the naive scan, insert and ingest rates.

    .venv/bin/python tests/bench/bench_book.py [--offers 100000] [--queries 300] [--seed 1]

Builds a realistic book (about 20 GPU models, 12 countries, 1/2/4/8-GPU listings, a quarter of
them interruptible, several listings per provider, some CPU-only offers, two tokens, a few
hundred providers with a non-default reputation) and runs varied queries through
`OfferBook.query` and through `naive_query` (list comprehension + sort), checking that both give
identical results for every query.

The 100,000 offers are *not* signed: they are wrapped as `SignedOffer` with a zero signature and
inserted with `OfferBook.insert`, which does not verify (only queries and the index's insert cost
are measured on them). The ingest rate (decode + checks + Ed25519 verify + insert) is measured
separately on a smaller set of really signed offers, next to the raw Ed25519 verify rate.

Every time is this process's CPU time (`time.process_time`), not wall time: the development
machines are shared, and wall time there measures the neighbours.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import statistics
import sys
import time

import nacl.bindings

from rigmesh.escrow.contract import default_escrow_address
from rigmesh.market.book import OfferBook
from rigmesh.market.listing import Hardware, Listing, Market, OfferBuilder
from rigmesh.market.offer import Gpu, Region, SignedOffer
from rigmesh.market.query import OfferQuery, Sort, naive_query
from rigmesh.market.reputation import Reputation
from rigmesh.market.vram import estimate_vram
from rigmesh.wire.eip712 import EthKey
from rigmesh.wire.identity import PeerKey

NOW = 1_800_000_000
CHAIN = 8453
USDC = bytes.fromhex("833589fcd6edb6e08f4c7c32d4f71b54bda02913")
ETH = bytes(20)

# (NVML name, VRAM MiB, typical $/h per GPU, weight in the market)
MODELS = [
    ("NVIDIA H100 80GB HBM3", 81559, 2.5, 12),
    ("NVIDIA H100 PCIe", 81559, 2.1, 5),
    ("NVIDIA H200", 143771, 3.5, 4),
    ("NVIDIA A100-SXM4-80GB", 81920, 1.6, 8),
    ("NVIDIA A100-SXM4-40GB", 40960, 1.2, 6),
    ("NVIDIA A100 80GB PCIe", 81920, 1.4, 4),
    ("NVIDIA L40S", 46068, 1.0, 6),
    ("NVIDIA L40", 46068, 0.9, 3),
    ("NVIDIA L4", 23034, 0.45, 6),
    ("NVIDIA A10G", 23028, 0.6, 4),
    ("NVIDIA A10", 23028, 0.55, 3),
    ("NVIDIA RTX A6000", 49140, 0.8, 4),
    ("NVIDIA RTX 6000 Ada Generation", 49140, 1.0, 3),
    ("NVIDIA GeForce RTX 4090", 24564, 0.4, 14),
    ("NVIDIA GeForce RTX 4080", 16376, 0.3, 5),
    ("NVIDIA GeForce RTX 3090", 24576, 0.25, 10),
    ("NVIDIA GeForce RTX 3080", 10240, 0.18, 4),
    ("NVIDIA Tesla V100-SXM2-32GB", 32768, 0.5, 3),
    ("NVIDIA Tesla T4", 15360, 0.15, 5),
    ("NVIDIA B200", 183359, 5.0, 2),
]
COUNTRIES = [("US", 25), ("DE", 12), ("FR", 6), ("NL", 6), ("GB", 8), ("CA", 6), ("FI", 4),
             ("SE", 4), ("JP", 5), ("SG", 5), ("IN", 4), ("BR", 3)]
ZONES = ["a", "b", "c"]
HOST = Hardware(gpu=None, cpu_cores=16, ram_mib=131072, disk_gib=1000)
MARKET = Market(CHAIN, default_escrow_address(), USDC)  # the escrow books trust by default
NEEDLES = ["h100", "a100", "4090", "rtx", "l40s", "l4", "h200", "3090", "a10", "nvidia", "t4",
           "b200", "80gb", "v100", "geforce"]


def usd_per_hour_to_units(usd: float, rng: random.Random) -> int:
    # The benchmark's *inputs* are made with floats; every price the book sees is an integer.
    return max(1, int(usd * 1_000_000 / 3600 * rng.lognormvariate(0, 0.25)))


def build_offers(n: int, rng: random.Random) -> tuple[list[SignedOffer], Reputation]:
    per_provider = 4
    # Every offer through the one offer builder (real keys and payee bindings, unsigned offers).
    providers = [
        OfferBuilder(PeerKey(hashlib.sha256(b"p%d" % i).digest()),
                     EthKey(hashlib.sha256(b"e%d" % i).digest()), HOST, MARKET)
        for i in range(n // per_provider + 1)
    ]
    weights = [m[3] for m in MODELS]
    cweights = [c[1] for c in COUNTRIES]
    offers: list[SignedOffer] = []
    for i in range(n):
        provider = providers[i // per_provider]
        country = rng.choices(COUNTRIES, cweights)[0][0]
        cpu_only = rng.random() < 0.05
        if cpu_only:
            gpu = None
            price = usd_per_hour_to_units(0.02 * 16, rng)
        else:
            name, vram, usd, _ = rng.choices(MODELS, weights)[0]
            count = rng.choice((1, 1, 1, 2, 4, 8, 8))
            gpu = Gpu(name, vram, count, "9.0", "550.54.15", "12.4")
            price = usd_per_hour_to_units(usd * count, rng)
        token = USDC if rng.random() < 0.9 else ETH
        if token == ETH:
            price *= 300_000_000  # 18 decimals at about $3,300 per ETH
        listing = Listing(
            price_per_second=price, region=Region(country, rng.choice(ZONES)),
            listing=i % per_provider, interruptible=rng.random() < 0.25,
            ttl=100 + rng.randrange(600, 86000),
        )
        offer = provider.offer(listing, seq=1, now=NOW - 100, hardware=HOST.but(gpu=gpu))
        if token != USDC:
            offer = offer._replace(token=token)
        offers.append(SignedOffer(offer=offer, sig=bytes(64), encoded=b""))
    reputation = Reputation()
    for provider in rng.sample(providers, len(providers) // 10):
        reputation.set(provider, rng.randrange(0, 1001))
    return offers, reputation


def random_query(rng: random.Random) -> OfferQuery:
    kw: dict[str, object] = {}
    if rng.random() < 0.05:
        kw["cpu_only"] = True
    else:
        if rng.random() < 0.8:
            kw["gpu_model"] = rng.choice(NEEDLES)
        if rng.random() < 0.3:
            kw["min_gpus"] = rng.choice((2, 4, 8))
        if rng.random() < 0.15:
            kw["min_vram_mib"] = rng.choice((24000, 40000, 80000))
        if rng.random() < 0.15:
            kw["min_total_vram_mib"] = estimate_vram(
                rng.choice(("8b", "70b", "mixtral-8x7b")), context=rng.choice((8192, 32000))
            ).total_mib
    if rng.random() < 0.5:
        kw["country"] = rng.choices(COUNTRIES, [c[1] for c in COUNTRIES])[0][0]
    if rng.random() < 0.3:
        kw["max_price_per_second"] = rng.randrange(100, 3000)
    if rng.random() < 0.3:
        kw["interruptible"] = rng.random() < 0.5
    if rng.random() < 0.15:
        kw["min_reputation"] = rng.choice((300, 500, 600))
    if rng.random() < 0.9:
        kw["token"] = USDC
    kw["sort"] = rng.choice(list(Sort))
    kw["limit"] = rng.choice((10, 20, 20, 50))
    return OfferQuery(**kw)  # type: ignore[arg-type]


def warm(book: OfferBook) -> float:
    """Make every index current (the first query of a partition and ranking pays this)."""
    t = time.process_time()
    for country in [None, *(c for c, _ in COUNTRIES)]:
        for sort in Sort:
            book.query(OfferQuery(country=country, gpu_required=False, sort=sort, limit=1), NOW)
    return time.process_time() - t


def percentile(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def bench_ingest(count: int) -> tuple[float, float]:
    """Really signed offers: ingest rate (decode + verify + insert) and raw verify rate."""
    eight = HOST.but(gpu=Gpu("NVIDIA H100 80GB HBM3", 81559, 8, "9.0", "550", "12.4"))
    builders = [
        OfferBuilder(PeerKey(hashlib.sha256(b"k%d" % i).digest()),
                     EthKey(hashlib.sha256(b"e%d" % i).digest()), eight, MARKET)
        for i in range(count // 4 + 1)
    ]
    encoded = []
    for i in range(count):
        b = builders[i // 4]
        listing = Listing(price_per_second=5000 + i, region=Region("DE", "a"), listing=i % 4)
        offer = b.offer(listing, seq=1, now=NOW - 100)
        encoded.append((b.peer.public_key, offer.sign(b.peer)))
    book = OfferBook(chain_id=CHAIN)
    # Warm the payee-binding cache as a running node has it (one recovery per provider).
    for _, s in encoded[::4]:
        book.bindings.check(s.offer.provider, s.offer.payee, s.offer.payee_sig)
    t = time.process_time()
    for _, s in encoded:
        book.ingest(s.encoded, NOW)
    ingest_rate = count / (time.process_time() - t)
    # Raw verify of the same signatures over the same signed bytes (64-byte sig || message).
    from rigmesh.wire.message import signing_input

    raw = [(pk, s.sig + signing_input(s.offer.unsigned_wire())) for pk, s in encoded]
    t = time.process_time()
    for pk, sm in raw:
        nacl.bindings.crypto_sign_open(sm, pk)
    verify_rate = count / (time.process_time() - t)
    return ingest_rate, verify_rate


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--offers", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--signed", type=int, default=2000, help="offers for the ingest rate")
    ap.add_argument("--slowest", type=int, default=0, help="print the N slowest queries")
    args = ap.parse_args()
    rng = random.Random(args.seed)

    t = time.process_time()
    offers, reputation = build_offers(args.offers, rng)
    print(f"built {len(offers)} offers in {time.process_time() - t:.1f} s (unsigned, see doc)")

    book = OfferBook(chain_id=CHAIN, max_offers=args.offers + 10, reputation=reputation)
    t = time.process_time()
    for s in offers:
        book.insert(s, NOW)
    dt = time.process_time() - t
    print(f"insert: {len(offers) / dt:,.0f} offers/s ({dt / len(offers) * 1e6:.2f} us each, "
          "index merge deferred to the first query)")
    dt = warm(book)
    print(f"deferred index build (sorting every queued entry, all rankings): {dt * 1e3:.0f} ms, "
          f"{dt / len(offers) * 1e6:.2f} us per offer")

    # Steady state: republished offers (seq + 1, new price) replace held ones between queries.
    replacements = [
        SignedOffer(offer=s.offer._replace(seq=2, price_per_second=s.offer.price_per_second + 1),
                    sig=s.sig, encoded=b"")
        for s in rng.sample(offers, 20_000)
    ]
    t = time.process_time()
    for s in replacements:
        book.insert(s, NOW)
    dt = time.process_time() - t
    print(f"replace: {len(replacements) / dt:,.0f} offers/s ({dt / len(replacements) * 1e6:.2f} us"
          " each)")
    dt2 = warm(book)
    print(f"  + deferred index update: {dt2 * 1e3:.0f} ms; replace amortized "
          f"{(dt + dt2) / len(replacements) * 1e6:.2f} us per offer, all rankings indexed")
    current = {s.offer.key: s for s in offers}
    current.update((s.offer.key, s) for s in replacements)
    flat = list(current.values())

    now = NOW + 300  # some offers have expired, no expire() has run: queries must skip them
    idx_times: list[float] = []
    naive_times: list[float] = []
    hits = 0
    slow: list[tuple[float, int, OfferQuery]] = []
    for i in range(args.queries):
        q = random_query(rng)
        t0 = time.process_time_ns()
        got = book.query(q, now)
        t1 = time.process_time_ns()
        want = naive_query(flat, q, now, reputation)
        t2 = time.process_time_ns()
        if got != want:
            print(f"MISMATCH on query {i}: {q}", file=sys.stderr)
            return 1
        hits += len(got)
        idx_times.append((t1 - t0) / 1e6)
        slow.append(((t1 - t0) / 1e6, len(got), q))
        naive_times.append((t2 - t1) / 1e6)

    im, ip = statistics.median(idx_times), percentile(idx_times, 0.99)
    nm, np_ = statistics.median(naive_times), percentile(naive_times, 0.99)
    print(f"{args.queries} queries over {len(book)} offers, identical results, "
          f"{hits / args.queries:.1f} hits per query on average")
    print(f"{'':12}{'median ms':>12}{'p99 ms':>12}")
    print(f"{'indexed':12}{im:12.3f}{ip:12.3f}")
    print(f"{'naive scan':12}{nm:12.3f}{np_:12.3f}")
    print(f"speedup: {nm / im:.0f}x median, {np_ / ip:.0f}x p99")
    for ms, n, q in sorted(slow, key=lambda x: -x[0])[: args.slowest]:
        print(f"  {ms:8.3f} ms {n:3} hits {q}")

    t = time.process_time()
    gone = book.expire(NOW + 43_000)
    print(f"expire: {len(gone)} offers in {(time.process_time() - t) * 1e3:.0f} ms")

    ingest_rate, verify_rate = bench_ingest(args.signed)
    print(f"ingest (decode + verify + insert, real signatures): {ingest_rate:,.0f} offers/s; raw "
          f"Ed25519 verify {verify_rate:,.0f}/s; ratio {ingest_rate / verify_rate:.0%}")
    ok = im <= 1.0 and nm / im >= 20
    print("targets (median <= 1 ms, >= 20x naive):", "met" if ok else "NOT met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
