"""Nodes in this process on the embedded chain (one chain, several nodes), with short timers."""

from __future__ import annotations

import secrets
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from rigmesh.chain.devnet import EmbeddedChain
from rigmesh.market.listing import Listing
from rigmesh.market.offer import Region, SignedOffer
from rigmesh.market.query import OfferQuery
from rigmesh.node import ChainSettings, NodeConfig, ProviderSettings, open_node
from rigmesh.node.node import Node
from rigmesh.rental.money import Budget
from rigmesh.rental.policy import ProviderPolicy, RenterWants
from rigmesh.rental.timers import Timers
from rigmesh.rental.workload import Workload
from rigmesh.store.keys import NodeKeys
from rigmesh.wire.eip712 import EthKey
from rigmesh.wire.identity import PeerKey

PRICE = 1000
INTERVAL = 2
TIMERS = Timers(grace_seconds=2, retry_seconds=1, challenge_window=60, settle_wait=5,
                start_seconds=20, tx_retry_seconds=2)


def new_keys() -> NodeKeys:
    return NodeKeys(PeerKey.generate(), EthKey(secrets.token_bytes(32)))


@dataclass
class Net:
    chain: EmbeddedChain
    settings: ChainSettings
    root: Path

    def config(self, name: str, keys: NodeKeys, *, provider: ProviderSettings | None = None,
               bootstrap: tuple[str, ...] = (), faults: tuple[str, ...] = (),
               chain: ChainSettings | None = None) -> NodeConfig:
        return NodeConfig(home=self.root / name, keys=keys, chain=chain or self.settings,
                          provider=provider, bootstrap=bootstrap, faults=faults, target_peers=0)

    def provider_settings(self, **policy: object) -> ProviderSettings:
        listing = Listing(price_per_second=PRICE, region=Region("DE", "test"), min_seconds=1,
                          heartbeat_seconds=INTERVAL)
        return ProviderSettings(
            listings=(listing,), runner="subprocess", gpu_source="none",
            policy=ProviderPolicy(timers=TIMERS, min_grace=1, min_challenge_window=60,
                                  **policy),  # type: ignore[arg-type]
            telemetry_seconds=1,
        )

    @asynccontextmanager
    async def pair(self, **policy: object) -> AsyncIterator[tuple[Node, Node]]:
        pkeys, rkeys = new_keys(), new_keys()
        self.chain.fund(pkeys.account.address, wei=10**18)
        self.chain.fund(rkeys.account.address, wei=10**18, tokens=10**12)
        provider = self.config("provider", pkeys, provider=self.provider_settings(**policy))
        async with open_node(provider, chain=self.chain) as p:
            renter = self.config("renter", rkeys, bootstrap=tuple(p.addrs()))
            async with open_node(renter, chain=self.chain) as r:
                yield p, r


def job(code: str, seconds: int = 30) -> Workload:
    return Workload("command", (sys.executable, "-c", code), 0)


def wants(workload: Workload, seconds: int = 30, **kw: object) -> RenterWants:
    return RenterWants(workload=workload, seconds=seconds, max_price=PRICE,
                       budget=Budget(cap=PRICE * seconds), timers=TIMERS, **kw)  # type: ignore[arg-type]


async def an_offer(node: Node) -> SignedOffer:
    """The first offer in the node's book, waiting for gossip or sync to bring it."""
    import trio

    with trio.fail_after(20):
        while True:
            found = node.book.query(OfferQuery(gpu_required=False), node.now())
            if found:
                return found[0]
            await node.gossip.anti_entropy()
            await trio.sleep(0.1)


@pytest.fixture(scope="module")
def embedded() -> EmbeddedChain:
    return EmbeddedChain()


@pytest.fixture
def net(embedded: EmbeddedChain, tmp_path: Path) -> Net:
    d = embedded.deployment
    return Net(embedded, ChainSettings(None, d.chain_id, d.escrow, d.token, poll=0.2), tmp_path)
