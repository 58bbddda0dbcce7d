#!/usr/bin/env python3
"""Offer propagation on the in-memory network, in virtual time (the real gossip code).

    python simulations/p2p_propagation.py --nodes 200 --degree 6 --offers 100 --loss 0.05

Builds a seeded random graph of nodes (in-memory network + offer book + gossip), publishes
offers from random nodes and reports, per offer, the virtual time until the last node held it,
beside the bound diameter x one-way latency; with loss, how many nodes anti-entropy repaired.
The same seed gives the same numbers (and the same event log, `--log`).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "node"))

import trio

from rigmesh.p2p.memory import LinkParams
from rigmesh.p2p.scenario import Sim, diameter, open_sim, random_graph, run_sim


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--nodes", type=int, default=100)
    p.add_argument("--degree", type=int, default=6)
    p.add_argument("--offers", type=int, default=100)
    p.add_argument("--latency", type=float, default=0.02, help="one-way, seconds")
    p.add_argument("--jitter", type=float, default=0.01)
    p.add_argument("--loss", type=float, default=0.0)
    p.add_argument("--spacing", type=float, default=0.1, help="seconds between offers")
    p.add_argument("--settle", type=float, default=90.0, help="virtual seconds after the last")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--log", type=Path, help="write the event log here")
    a = p.parse_args()

    rng = random.Random(a.seed)
    edges = random_graph(a.nodes, a.degree, rng)

    async def body(sim: Sim) -> tuple[list[float], list[int]]:
        for _ in range(a.nodes):
            await sim.add_node()
        await sim.wire(edges)
        lasts: list[float] = []
        pending: dict[str, float] = {}

        async def watch() -> None:
            # Checks completion every quarter latency, concurrently with publishing.
            while True:
                for cid, t0 in list(pending.items()):
                    if len(sim.holders(cid)) == a.nodes:
                        lasts.append(trio.current_time() - t0)
                        del pending[cid]
                await trio.sleep(a.latency / 4)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            for k in range(a.offers):
                host = rng.randrange(a.nodes)
                t0 = trio.current_time()
                pending[await sim.publish(host, listing=k % 16, seq=1 + k)] = t0
                await trio.sleep(a.spacing)
            await trio.sleep(a.settle)
            nursery.cancel_scope.cancel()
        return lasts, [len(n.book) for n in sim.nodes]

    link = LinkParams(latency=a.latency, jitter=a.jitter, loss=a.loss)
    sim = Sim(a.seed, link=link, config={"republish_interval": 3600.0})
    wall = time.perf_counter()
    lasts, books = run_sim(a.seed, lambda: open_sim(sim, body))
    wall = time.perf_counter() - wall
    lasts.sort()
    d = diameter(a.nodes, edges)

    def pct(q: float) -> float:
        return lasts[min(len(lasts) - 1, round(q * (len(lasts) - 1)))] * 1000 if lasts else 0.0

    print(f"{a.nodes} nodes, {len(edges)} edges, diameter {d}, latency {a.latency * 1000:.0f} ms "
          f"+ jitter < {a.jitter * 1000:.0f} ms, loss {a.loss:.0%}, seed {a.seed}")
    print(f"offers fully propagated: {len(lasts)}/{a.offers}; publish -> last node p50 "
          f"{pct(0.5):.1f} ms, p99 {pct(0.99):.1f} ms; bound {d * a.latency * 1000:.0f} ms "
          f"(+ up to {d * a.jitter * 1000:.0f} ms jitter)")
    print(f"messages sent {sim.hub.sent}, lost {sim.hub.lost}; books after settle: min "
          f"{min(books)} max {max(books)} (offers live: {min(a.offers, 16 * a.nodes)} at most)")
    print(f"events {len(sim.log)}, wall {wall:.1f}s")
    if a.log:
        a.log.write_text("\n".join(sim.log) + "\n")


if __name__ == "__main__":
    main()
