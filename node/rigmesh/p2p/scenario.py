"""Gossip scenarios on the in-memory network, in virtual time (the p2p tests and the bench).

`Sim` builds nodes (in-memory network + offer book + gossip) with keys derived from the seed,
wires them as a random graph and logs every gossip event with its virtual time. `run_sim` runs
an async scenario under ``MockClock(autojump_threshold=0)`` with trio's scheduling made
deterministic for the seed, so one seed gives one event log.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import trio
import trio.testing

from rigmesh.escrow.contract import default_escrow_address
from rigmesh.market.book import OfferBook
from rigmesh.market.listing import Hardware, Listing, Market, OfferBuilder
from rigmesh.market.offer import Gpu, Region
from rigmesh.p2p.gossip import GossipConfig, OfferGossip
from rigmesh.p2p.memory import LinkParams, MemoryHub, MemoryNetwork, deterministic_trio
from rigmesh.wire.eip712 import EthKey
from rigmesh.wire.identity import PeerKey

EPOCH = 1_767_225_600
CHAIN_ID = 31337
#: What every simulated provider offers: one H100 (the recorded one's figures), in Frankfurt.
SIM_HARDWARE = Hardware(
    gpu=Gpu("NVIDIA H100 80GB HBM3", 81559, 1, "9.0", "570.133.20", "12.8"), cpu_cores=16,
    ram_mib=196608, disk_gib=1000, bandwidth_mbps=10000,
)
SIM_LISTING = Listing(price_per_second=555, region=Region("DE", "fra-1"), min_seconds=600,
                      max_seconds=7 * 86400)
SIM_MARKET = Market(CHAIN_ID, default_escrow_address(), bytes(20))
T = TypeVar("T")


def run_sim(seed: int, scenario: Callable[[], Awaitable[T]]) -> T:
    """Run `scenario` in a fresh trio run under virtual time, deterministic for `seed`."""
    with deterministic_trio(seed):
        return trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))


def random_graph(n: int, degree: int, rng: random.Random) -> list[tuple[int, int]]:
    """Edges of a connected random graph with mean degree about `degree`: a random spanning
    tree (so it is connected) plus random extra edges."""
    order = list(range(n))
    rng.shuffle(order)
    edges: set[tuple[int, int]] = set()
    for k in range(1, n):
        a, b = order[k], order[rng.randrange(k)]
        edges.add((min(a, b), max(a, b)))
    target = n * degree // 2
    while len(edges) < min(target, n * (n - 1) // 2):
        a, b = rng.randrange(n), rng.randrange(n)
        if a != b:
            edges.add((min(a, b), max(a, b)))
    return sorted(edges)


def diameter(n: int, edges: list[tuple[int, int]]) -> int:
    adj: list[list[int]] = [[] for _ in range(n)]
    for a, b in edges:
        adj[a].append(b)
        adj[b].append(a)
    best = 0
    for s in range(n):
        dist = [-1] * n
        dist[s] = 0
        q = deque([s])
        while q:
            u = q.popleft()
            for v in adj[u]:
                if dist[v] < 0:
                    dist[v] = dist[u] + 1
                    q.append(v)
        if min(dist) < 0:
            raise ValueError("graph is not connected")
        best = max(best, max(dist))
    return best


@dataclass
class SimNode:
    index: int
    key: PeerKey
    net: MemoryNetwork
    book: OfferBook
    gossip: OfferGossip
    provider: OfferBuilder
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)


class Sim:
    def __init__(self, seed: int, *, link: LinkParams | None = None,
                 config: dict[str, Any] | None = None) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.hub = MemoryHub(seed, link)
        self.config = config or {}
        self.nodes: list[SimNode] = []
        self.log: list[str] = []
        self._nursery: trio.Nursery | None = None
        self._keys: dict[str, tuple[bytes, int]] = {}

    def key(self, index: int) -> PeerKey:
        return PeerKey(hashlib.sha256(f"rigmesh-sim/{self.seed}/{index}".encode()).digest())

    def now(self) -> int:
        return EPOCH + int(trio.current_time())

    def _record(self, index: int, event: dict[str, Any]) -> None:
        self.log.append(
            f"{trio.current_time():.6f} {index} {json.dumps(event, sort_keys=True)}"
        )

    async def add_node(self, index: int | None = None) -> SimNode:
        """A new node (or a restarted one: same index, same key, empty book)."""
        assert self._nursery is not None
        if index is None:
            index = len(self.nodes)
        key = self.key(index)
        net = self.hub.node(key.peer_id, replace=True)
        book = OfferBook(chain_id=CHAIN_ID)
        gossip = OfferGossip(
            net, book, GossipConfig(chain_id=CHAIN_ID, **self.config), clock=self.now,
            rng=random.Random(self.rng.getrandbits(64)), signer=key,
            on_event=lambda e, i=index: self._record(i, e),
        )
        # A simulated provider's payee key derives from its peer key (simulations only).
        payee = EthKey(hashlib.sha256(b"rigmesh-sim-payee" + key.seed).digest())
        node = SimNode(index, key, net, book, gossip,
                       OfferBuilder(key, payee, SIM_HARDWARE, SIM_MARKET))
        if index < len(self.nodes):
            self.nodes[index] = node
        else:
            self.nodes.append(node)
        await gossip.start()
        self._nursery.start_soon(self._run_node, node)
        return node

    async def _run_node(self, node: SimNode) -> None:
        with node.scope:
            await node.gossip.run()

    async def crash(self, index: int) -> None:
        node = self.nodes[index]
        node.scope.cancel()
        await node.net.go_offline()
        self._record(index, {"event": "crashed"})

    async def connect(self, a: int, b: int) -> None:
        await self.nodes[a].net.connect(self.nodes[b].net.addrs()[0])

    async def wire(self, edges: list[tuple[int, int]]) -> None:
        async with trio.open_nursery() as nursery:
            for a, b in edges:
                nursery.start_soon(self.connect, a, b)

    async def publish(self, index: int, listing: int = 0, seq: int = 1, **kw: Any) -> str:
        """Node `index` publishes listing `listing` at `seq`; `kw` changes the listing's settings
        (`rigmesh.market.listing.Listing`: ttl, price_per_second, capacity, ...)."""
        node = self.nodes[index]
        offer = node.provider.offer(SIM_LISTING.but(listing=listing, **kw), seq=seq,
                                    now=self.now())
        signed = await node.gossip.publish_offer(offer)
        self._keys[signed.cid] = offer.key
        return signed.cid

    def holders(self, cid: str) -> list[int]:
        """Online nodes whose book holds the offer `cid` (one this Sim published)."""
        provider, listing = self._keys[cid]
        out = []
        for n in self.nodes:
            held = n.book.get(provider, listing) if n.net.online else None
            if held is not None and held.cid == cid:
                out.append(n.index)
        return out


async def open_sim(sim: Sim, body: Callable[[Sim], Awaitable[T]]) -> T:
    async with sim.hub.running(), trio.open_nursery() as nursery:
        sim._nursery = nursery
        try:
            return await body(sim)
        finally:
            nursery.cancel_scope.cancel()
