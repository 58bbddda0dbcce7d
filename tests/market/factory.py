"""Offer factory for the market tests: many providers, any hardware, through the one offer
builder (rigmesh.market.listing)."""

from __future__ import annotations

import hashlib
from functools import cache

from rigmesh.escrow.contract import default_escrow_address
from rigmesh.market.listing import Hardware, Listing, Market, OfferBuilder
from rigmesh.market.offer import Gpu, Offer, Region, SignedOffer
from rigmesh.wire.eip712 import EthKey
from rigmesh.wire.identity import PeerKey

NOW = 1_800_000_000
CHAIN_ID = 31337
USDC = bytes.fromhex("a0b86991c6218b36c1d19d4a2e9eb0ce3606eb48")
ESCROW = default_escrow_address()  # what a book trusts by default

H100 = ("NVIDIA H100 80GB HBM3", 81559)
A100 = ("NVIDIA A100-SXM4-40GB", 40960)
RTX4090 = ("NVIDIA GeForce RTX 4090", 24564)
L4 = ("NVIDIA L4", 23034)


@cache
def peer(n: int) -> PeerKey:
    return PeerKey(hashlib.sha256(b"rigmesh-test-peer-%d" % n).digest())


@cache
def payee(n: int) -> EthKey:
    return EthKey(hashlib.sha256(b"rigmesh-test-payee-%d" % n).digest())


@cache
def builder(n: int, chain_id: int, token: bytes) -> OfferBuilder:
    """Provider `n`'s builder (its payee binding is signed once)."""
    return OfferBuilder(peer(n), payee(n), Hardware(None, 16, 65536, 500),
                        Market(chain_id, ESCROW, token))


def make_offer(
    n: int = 0,
    listing: int = 0,
    *,
    seq: int = 1,
    gpu: tuple[str, int] | None = H100,
    count: int = 1,
    price: int = 1000,
    country: str = "DE",
    zone: str = "fra-1",
    interruptible: bool = False,
    capacity: int = 1,
    issued: int = NOW - 60,
    expires: int = NOW + 3600,
    chain_id: int = CHAIN_ID,
    token: bytes = USDC,
    cpu_cores: int = 16,
    ram_mib: int = 65536,
    isolation: str = "none",
) -> Offer:
    hardware = Hardware(
        gpu=None if gpu is None else Gpu(gpu[0], gpu[1], count, "9.0", "550.54.15", "12.4"),
        cpu_cores=cpu_cores, ram_mib=ram_mib, disk_gib=500,
    )
    listing_ = Listing(
        price_per_second=price, region=Region(country, zone), listing=listing,
        interruptible=interruptible, capacity=capacity, ttl=expires - issued, isolation=isolation,
    )
    return builder(n, chain_id, token).offer(listing_, seq=seq, now=issued, hardware=hardware)


def signed(n: int = 0, listing: int = 0, **kw: object) -> SignedOffer:
    """A really signed offer (Ed25519 over the canonical encoding)."""
    return make_offer(n, listing, **kw).sign(peer(n))  # type: ignore[arg-type]


def unsigned(offer: Offer) -> SignedOffer:
    """An offer wrapped without signing, for `OfferBook.insert` (which does not verify): index
    tests build thousands of these in the time signing a hundred would take."""
    return SignedOffer(offer=offer, sig=bytes(64), encoded=b"")
