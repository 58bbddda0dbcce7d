"""Builders for valid protocol objects, shared by the test suite and the benchmarks."""

from __future__ import annotations

from typing import Any

from rigmesh.market.offer import Gpu, Offer, Region, SignedOffer, bind_payee
from rigmesh.wire import eip712, identity

NOW = 1_767_225_600
CHAIN_ID = 31337
ESCROW = bytes.fromhex("5fbdb2315678afecb367f032d93f642f64180aa3")
H100 = Gpu("NVIDIA H100 80GB HBM3", 81559, 1, "9.0", "570.133.20", "12.8")


class Provider:
    """A provider identity (libp2p key + payee key) that can sign offers."""

    def __init__(self, n: int) -> None:
        self.peer = identity.PeerKey(n.to_bytes(32, "big"))
        self.payee = eip712.EthKey((n + 1).to_bytes(32, "big"))
        self.binding = bind_payee(self.peer.peer_id, self.payee)

    @property
    def peer_id(self) -> bytes:
        return self.peer.peer_id

    def offer(self, **changes: Any) -> Offer:
        base = Offer(
            provider=self.peer.peer_id, listing=0, payee=self.payee.address,
            payee_sig=self.binding, gpu=H100, cpu_cores=16, ram_mib=196608, disk_gib=1000,
            bandwidth_mbps=10000, region=Region("DE", "fra-1"), price_per_second=555,
            chain_id=CHAIN_ID, token=bytes(20), escrow=ESCROW, min_seconds=600,
            max_seconds=7 * 86400, interruptible=False, heartbeat_seconds=30, capacity=1, seq=1,
            issued=NOW - 60, expires=NOW + 3540,
        )
        return base._replace(**changes)

    def signed(self, **changes: Any) -> SignedOffer:
        return self.offer(**changes).sign(self.peer)
