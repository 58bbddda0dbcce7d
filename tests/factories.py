"""Builders for valid protocol objects, shared by the test suite and the benchmarks: a numbered
provider whose offers come from the one offer builder (rigmesh.market.listing), on the suite's
fixed clock."""

from __future__ import annotations

import hashlib
from typing import Any

from rigmesh.escrow.contract import default_escrow_address
from rigmesh.market.listing import Hardware, Listing, Market, OfferBuilder
from rigmesh.market.offer import Gpu, Offer, Region, SignedOffer
from rigmesh.wire import eip712, identity

NOW = 1_767_225_600
CHAIN_ID = 31337
#: The canonical escrow deployment, which offer books trust by default.
ESCROW = default_escrow_address()
#: The recorded H100's NVML figures (rigmesh.exec.gpu.RECORDED_H100).
H100 = Gpu("NVIDIA H100 80GB HBM3", 81559, 1, "9.0", "570.133.20", "12.8")
HARDWARE = Hardware(gpu=H100, cpu_cores=16, ram_mib=196608, disk_gib=1000, bandwidth_mbps=10000)
LISTING = Listing(price_per_second=555, region=Region("DE", "fra-1"), min_seconds=600,
                  max_seconds=7 * 86400, heartbeat_seconds=30)
MARKET = Market(CHAIN_ID, ESCROW, bytes(20))

__all__ = ["CHAIN_ID", "ESCROW", "H100", "HARDWARE", "LISTING", "MARKET", "NOW", "Provider"]


def test_payee(peer: identity.PeerKey) -> eip712.EthKey:
    """A payee key derived from the peer key: tests only (a real node keeps its own account)."""
    return eip712.EthKey(hashlib.sha256(b"rigmesh-test-payee" + peer.seed).digest())


class Provider:
    """A provider of the suite: key number `n` (or a given key), H100 hardware, one listing."""

    def __init__(self, n: int | identity.PeerKey) -> None:
        key = n if isinstance(n, identity.PeerKey) else identity.PeerKey(n.to_bytes(32, "big"))
        self.peer = key
        self.payee = test_payee(self.peer)
        self.builder = OfferBuilder(self.peer, self.payee, HARDWARE, MARKET)

    @property
    def peer_id(self) -> bytes:
        return self.peer.peer_id

    @property
    def binding(self) -> bytes:
        """The payee's signature vouching for the peer (what every offer carries)."""
        return self.builder.binding

    def at(self, *, seq: int, now: int, listing: int = 0, ttl: int = 3600, price: int = 555,
           capacity: int = 1, chain_id: int = CHAIN_ID) -> Offer:
        """The listing's offer issued at `now` (what a running peer publishes)."""
        offer = self.builder.offer(LISTING.but(listing=listing, ttl=ttl, price_per_second=price,
                                               capacity=capacity), seq=seq, now=now)
        return offer if chain_id == CHAIN_ID else offer._replace(chain_id=chain_id)

    def offer(self, **changes: Any) -> Offer:
        """The suite's offer (issued a minute before NOW), any field changed by keyword."""
        return self.at(seq=1, now=NOW - 60)._replace(**changes)

    def signed(self, **changes: Any) -> SignedOffer:
        return self.offer(**changes).sign(self.peer)
