"""How a provider's offers are made: its hardware, its listing settings and where it is paid, into
an `Offer`. The one builder every offer comes from (the node, the demo, the peer process, the
simulator, the tests and the vector generator), so an offer's fields are decided in one place.

Pure: the probe's findings come in as `Hardware` (the node's shell reads NVML and the host), the
clock as an argument.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from rigmesh.market.offer import ISOLATION_LEVELS, Gpu, Offer, Region, bind_payee
from rigmesh.wire import eip712, identity


@dataclass(frozen=True)
class Hardware:
    """What a provider rents out: its GPUs (one homogeneous group, or none) and the slice of the
    host that goes with them."""

    gpu: Gpu | None
    cpu_cores: int
    ram_mib: int
    disk_gib: int
    bandwidth_mbps: int = 1000

    def but(self, **changes: Any) -> Hardware:
        return replace(self, **changes)


@dataclass(frozen=True)
class Listing:
    """One listing's settings: the price per second of the whole listing, where it is, the rental
    length it takes, how often it sends heartbeats, how many rentals it takes at once, how long
    an offer lives before it is republished, and how jobs are confined."""

    price_per_second: int
    region: Region
    listing: int = 0
    min_seconds: int = 60
    max_seconds: int = 86_400
    heartbeat_seconds: int = 30
    capacity: int = 1
    interruptible: bool = False
    ttl: int = 3600
    isolation: str = "none"

    def __post_init__(self) -> None:
        if self.price_per_second <= 0:
            raise ValueError("a listing's price must be positive")
        if self.isolation not in ISOLATION_LEVELS:
            raise ValueError(f"isolation: one of {ISOLATION_LEVELS}")

    def but(self, **changes: Any) -> Listing:
        return replace(self, **changes)


@dataclass(frozen=True)
class Market:
    """Where rentals of these offers are paid: chain, escrow, token."""

    chain_id: int
    escrow: bytes
    token: bytes


class OfferBuilder:
    """A provider's offers: its peer key signs them, its payee account is paid (its binding
    signature is made once, here)."""

    def __init__(self, peer: identity.PeerKey, payee: eip712.EthKey, hardware: Hardware,
                 market: Market) -> None:
        self.peer = peer
        self.payee = payee.address
        self.binding = bind_payee(peer.peer_id, payee)
        self.hardware = hardware
        self.market = market

    def offer(self, listing: Listing, *, seq: int, now: int, capacity: int | None = None,
              hardware: Hardware | None = None) -> Offer:
        """The listing's offer issued at `now` (``capacity``: what is free now, the listing's
        capacity by default, 0 withdraws it; ``hardware``: a listing of other hardware than
        the provider's whole, e.g. one GPU of eight)."""
        h, m = hardware or self.hardware, self.market
        return Offer(
            provider=self.peer.peer_id, listing=listing.listing, payee=self.payee,
            payee_sig=self.binding, gpu=h.gpu, cpu_cores=h.cpu_cores, ram_mib=h.ram_mib,
            disk_gib=h.disk_gib, bandwidth_mbps=h.bandwidth_mbps, region=listing.region,
            price_per_second=listing.price_per_second, chain_id=m.chain_id, token=m.token,
            escrow=m.escrow, min_seconds=listing.min_seconds, max_seconds=listing.max_seconds,
            interruptible=listing.interruptible, heartbeat_seconds=listing.heartbeat_seconds,
            capacity=listing.capacity if capacity is None else capacity, seq=seq, issued=now,
            expires=now + listing.ttl, isolation=listing.isolation,
        )
