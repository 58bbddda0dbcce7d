"""Offers a demo or test peer publishes (`python -m rigmesh.p2p.peer`, the simulator, the bench).

Real providers build offers from their GPU probe (rigmesh.exec); these are fixed, plausible
values so that networks of peers have something valid and distinct to gossip.
"""

from __future__ import annotations

import hashlib

from rigmesh.market.offer import Gpu, Offer, Region, bind_payee
from rigmesh.wire import eip712, identity

H100 = Gpu("NVIDIA H100 80GB HBM3", 81559, 1, "9.0", "570.133.20", "12.8")
DEMO_ESCROW = bytes.fromhex("5fbdb2315678afecb367f032d93f642f64180aa3")


class DemoProvider:
    """A peer key plus a payee key derived from it (demo only: real payee keys are separate)."""

    def __init__(self, peer_key: identity.PeerKey) -> None:
        self.peer = peer_key
        self.payee = eip712.EthKey(hashlib.sha256(b"rigmesh-demo-payee" + peer_key.seed).digest())
        self.binding = bind_payee(peer_key.peer_id, self.payee)

    def offer(self, *, chain_id: int, listing: int, seq: int, now: int, ttl: int = 3600,
              price: int = 555, capacity: int = 1) -> Offer:
        return Offer(
            provider=self.peer.peer_id, listing=listing, payee=self.payee.address,
            payee_sig=self.binding, gpu=H100, cpu_cores=16, ram_mib=196608, disk_gib=1000,
            bandwidth_mbps=10000, region=Region("DE", "fra-1"), price_per_second=price,
            chain_id=chain_id, token=bytes(20), escrow=DEMO_ESCROW, min_seconds=600,
            max_seconds=7 * 86400, interruptible=False, heartbeat_seconds=30,
            capacity=capacity, seq=seq, issued=now, expires=now + ttl,
        )
