#!/usr/bin/env python3
"""Offer propagation over a gossip graph, message by message, through every peer's own
validation policy (rigmesh.p2p.policy.judge_gossip), in virtual time, without trio.

    python simulations/p2p_propagation.py --nodes 10000 --degree 6 --offers 20 --loss 0.05

Builds a seeded random graph, publishes offers from random peers and reports, per offer, the
delay until the last peer accepted it beside the bound diameter x (latency + jitter), and with
loss how many peers the gossip alone missed (anti-entropy, every 30 s, repairs those; it is
tested on the trio memory network, tests/p2p/test_memory_gossip.py). The same seed gives the
same numbers. This is rigsim's overlay (simulations/rigsim/overlay.py); tests/sim/test_runs.py
checks that it delivers at the same delays as the real OfferGossip on the trio memory network.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
import time
from collections import deque
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "node"))

from rigsim.overlay import Overlay

from rigmesh.wire.identity import PEER_ID_PREFIX


def eccentricity(adj: list[dict[int, None]], s: int) -> int:
    dist = {s: 0}
    q = deque([s])
    while q:
        u = q.popleft()
        for v in adj[u]:
            if v not in dist:
                dist[v] = dist[u] + 1
                q.append(v)
    return max(dist.values())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--degree", type=int, default=6)
    p.add_argument("--offers", type=int, default=100)
    p.add_argument("--latency", type=float, default=0.02, help="one-way, seconds")
    p.add_argument("--jitter", type=float, default=0.01)
    p.add_argument("--loss", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()

    rng = random.Random(a.seed)
    # Peer ids need not be real keys here: only their identity matters to the policies.
    ids = [PEER_ID_PREFIX + hashlib.sha256(f"{a.seed}/{i}".encode()).digest()
           for i in range(a.nodes)]
    wall = time.perf_counter()
    overlay = Overlay(ids, a.degree, rng, latency_ms=a.latency * 1000,
                      jitter_ms=a.jitter * 1000, loss=a.loss)
    lasts, missed, bound = [], [], []
    for k in range(a.offers):
        origin = rng.randrange(a.nodes)
        f = overlay.flood(origin, k * 100, 600)
        lasts.append(max(f.delays) if f.delays else 0.0)
        missed.append(a.nodes - 1 - len(f.delays))
        bound.append(eccentricity(overlay.adj, origin) * (a.latency + a.jitter) * 1000)
    wall = time.perf_counter() - wall
    lasts.sort()

    def pct(q: float) -> float:
        return lasts[min(len(lasts) - 1, round(q * (len(lasts) - 1)))]

    messages = sum(f.messages for f in overlay.floods)
    print(f"{a.nodes} nodes, mean degree {a.degree}, latency {a.latency * 1000:.0f} ms "
          f"+ jitter < {a.jitter * 1000:.0f} ms, loss {a.loss:.0%}, seed {a.seed}")
    print(f"publish -> last peer: p50 {pct(0.5):.1f} ms, p99 {pct(0.99):.1f} ms; "
          f"bound (eccentricity x max hop) p50 {sorted(bound)[len(bound) // 2]:.0f} ms")
    print(f"peers the gossip missed per offer: max {max(missed)}, mean "
          f"{sum(missed) / len(missed):.2f} (anti-entropy repairs them)")
    print(f"messages {messages} ({messages / a.offers:.0f} per offer), wall {wall:.1f}s")


if __name__ == "__main__":
    main()
