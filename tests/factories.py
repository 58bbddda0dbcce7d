"""Builders for valid protocol objects, shared by the test suite and the benchmarks."""

from __future__ import annotations

from typing import Any

from rigmesh.market.offer import Offer, SignedOffer
from rigmesh.p2p.demo import DEMO_ESCROW, H100, DemoProvider
from rigmesh.wire import identity

NOW = 1_767_225_600
CHAIN_ID = 31337
ESCROW = DEMO_ESCROW

__all__ = ["CHAIN_ID", "ESCROW", "H100", "NOW", "Provider"]


class Provider(DemoProvider):
    """The demo peers' provider (one offer template for tests, simulator and peer process) with
    a numbered key, the suite's fixed clock, and any field changed by keyword."""

    def __init__(self, n: int) -> None:
        super().__init__(identity.PeerKey(n.to_bytes(32, "big")))

    @property
    def peer_id(self) -> bytes:
        return self.peer.peer_id

    def offer(self, **changes: Any) -> Offer:  # type: ignore[override]
        base = super().offer(chain_id=CHAIN_ID, listing=0, seq=1, now=NOW - 60, ttl=3600)
        return base._replace(**changes)

    def signed(self, **changes: Any) -> SignedOffer:
        return self.offer(**changes).sign(self.peer)
