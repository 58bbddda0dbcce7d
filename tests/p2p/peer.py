"""A runnable gossip peer: libp2p host(s) + offer book + gossip, driven by JSON lines.

    python -m tests.p2p.peer --key-file node.key --bootstrap /ip4/127.0.0.1/tcp/4001/p2p/12D3...

Each host is one node. ``--count N`` runs N nodes in this process (the benchmark spreads 50 over
a few processes); ``--key-file`` gives a node a persistent identity (a 32-byte Ed25519 seed in
hex, created if missing, so a restarted node keeps its PeerId). Events go to stdout as JSON
lines ``{"t": unix time, "node": i, "event": ..., ...}``; commands come from stdin as JSON
lines (see `Commands`). Real nodes are wired by rigmesh.node; this is the gossip layer alone, for
the p2p tests and the benchmark (run from the repository root).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import trio

from rigmesh.market.book import OfferBook
from rigmesh.p2p.gossip import GossipConfig, OfferGossip
from rigmesh.p2p.host import Libp2pNetwork, open_libp2p_network
from rigmesh.p2p.peers import PeerExchange
from rigmesh.wire import cbor
from rigmesh.wire.identity import PeerKey, peer_id_to_text
from tests.factories import Provider


def load_or_create_key(path: Path) -> PeerKey:
    if path.exists():
        return PeerKey(bytes.fromhex(path.read_text().strip()))
    key = PeerKey.generate()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(key.seed.hex())
    os.chmod(tmp, 0o600)
    tmp.replace(path)
    return key


class Emitter:
    def __init__(self, mute: frozenset[str] = frozenset()) -> None:
        self.out = sys.stdout
        self.mute = mute

    def __call__(self, node: int, event: dict[str, Any]) -> None:
        if event["event"] in self.mute:
            return
        self.out.write(json.dumps({"t": time.time(), "node": node, **event}) + "\n")
        self.out.flush()


class Node:
    def __init__(self, index: int, net: Libp2pNetwork, key: PeerKey, chain_id: int,
                 gossip_config: dict[str, Any], emit: Emitter, rng: random.Random,
                 target_peers: int) -> None:
        self.index = index
        self.net = net
        self.key = key
        self.chain_id = chain_id
        self.book = OfferBook(chain_id=chain_id)
        self.provider = Provider(key)
        self.gossip = OfferGossip(
            net, self.book, GossipConfig(chain_id=chain_id, **gossip_config),
            clock=lambda: int(time.time()), rng=rng, signer=key,
            on_event=lambda e: emit(index, e),
        )
        self.peers = PeerExchange(net, target=target_peers, rng=rng,
                                  on_event=lambda e: emit(index, e),
                                  penalize=self.gossip.penalize)

    def forged(self, seq: int, listing: int) -> bytes:
        """A well-formed offer with a zeroed signature (for the spam tests)."""
        offer = self.provider.at(chain_id=self.chain_id, listing=listing, seq=seq,
                                 now=int(time.time()))
        m = cbor.decode(offer.sign(self.key).encoded, max_size=4096)
        m["sig"] = bytes(64)
        return cbor.encode(m)


async def command(nodes: list[Node], cmd: dict[str, Any], emit: Emitter) -> None:
    """Commands: connect, join, publish, stream, stats, spam, book, peers, top_up (each with
    "node": index)."""
    name = cmd.get("cmd")
    node = nodes[int(cmd.get("node", 0))]
    if name == "connect":
        async with trio.open_nursery() as nursery:
            for addr in cmd["addrs"]:
                nursery.start_soon(_connect, node, addr, emit)
        emit(node.index, {"event": "connected", "peers": len(node.net.peers())})
    elif name == "join":
        reached = await node.gossip.join(list(cmd["addrs"]))
        emit(node.index, {"event": "joined", "reached": len(reached), "book": len(node.book)})
    elif name == "publish":
        t0 = time.time()
        offer = node.provider.at(
            chain_id=node.chain_id, listing=int(cmd.get("listing", 0)),
            seq=int(cmd.get("seq", 1)), now=int(time.time()), price=int(cmd.get("price", 555)),
        )
        signed = await node.gossip.publish_offer(offer)
        emit(node.index, {"event": "publish_done", "cid": signed.cid, "tag": cmd.get("tag"),
                          "t0": t0})
    elif name == "stream":
        # `count` offers at `rate` a second, cycling over 16 listings with rising seq numbers
        # (the benchmark's sustained-rate steps). Sleeps to absolute deadlines: no drift.
        rate, count, seq0 = float(cmd["rate"]), int(cmd["count"]), int(cmd["seq"])
        start = trio.current_time()
        for k in range(count):
            await trio.sleep_until(start + k / rate)
            offer = node.provider.at(chain_id=node.chain_id, listing=k % 16, seq=seq0 + k,
                                     now=int(time.time()))
            await node.gossip.publish_offer(offer)
        emit(node.index, {"event": "stream_done", "count": count, "tag": cmd.get("tag"),
                          "late": round(trio.current_time() - start - (count - 1) / rate, 3)})
    elif name == "stats":
        emit(node.index, {"event": "stats", "tag": cmd.get("tag"),
                          "counters": dict(node.gossip.counters), "book": len(node.book),
                          "peers": len(node.net.peers()),
                          "pubsub_peers": len(node.net.pubsub.peers),
                          "mesh": len(node.net.router.mesh.get(node.gossip.topic, ()))})
    elif name == "spam":
        for k in range(int(cmd["count"])):
            await node.net.publish(node.gossip.topic, node.forged(1000 + k, k % 16))
            await trio.sleep(float(cmd.get("interval", 0.05)))
        emit(node.index, {"event": "spam_done"})
    elif name == "book":
        cids = sorted(o.cid for o in node.book)
        emit(node.index, {"event": "book", "size": len(cids), "cids": cids})
    elif name == "peers":
        emit(node.index, {"event": "peers",
                          "peers": [peer_id_to_text(p) for p in node.net.peers()]})
    elif name == "top_up":
        dialled = await node.peers.top_up()
        emit(node.index, {"event": "topped_up", "dialled": dialled,
                          "peers": len(node.net.peers())})
    else:
        emit(node.index, {"event": "error", "error": f"unknown command {name!r}"})


async def _connect(node: Node, addr: str, emit: Emitter) -> None:
    try:
        await node.net.connect(addr)
    except Exception as exc:
        emit(node.index, {"event": "dial_failed", "addr": addr, "error": str(exc)})


async def read_commands(nodes: list[Node], emit: Emitter, done: trio.Event) -> None:
    stream = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    buf = b""
    async with trio.open_nursery() as nursery:
        while True:
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if not line.strip():
                    continue
                cmd = json.loads(line)
                if cmd.get("cmd") == "quit":
                    done.set()
                    return
                # Commands run concurrently: a slow join must not hold up a publish.
                nursery.start_soon(command, nodes, cmd, emit)
    done.set()


async def main_async(args: argparse.Namespace) -> None:
    emit = Emitter(frozenset(args.mute))
    keys: list[PeerKey] = [load_or_create_key(Path(p)) for p in args.key_file]
    keys += [PeerKey.generate() for _ in range(max(0, args.count - len(keys)))]
    gossip_config = json.loads(args.gossip) if args.gossip else {}
    async with contextlib.AsyncExitStack() as stack:
        nodes: list[Node] = []
        for i, key in enumerate(keys):
            net = await stack.enter_async_context(
                open_libp2p_network(key, [args.listen], mdns=args.mdns)
            )
            rng = random.Random(None if args.seed is None else args.seed * 1000 + i)
            node = Node(i, net, key, args.chain_id, gossip_config, emit, rng, args.target_peers)
            await node.gossip.start()
            node.peers.start()
            nodes.append(node)
        # Everything built so far (modules, hosts, keys) lives as long as the process. A full
        # collection of it paused a 10-host process for 130-210 ms here; frozen, later full
        # collections scan only what came after.
        gc.collect()
        gc.freeze()
        done = trio.Event()
        async with trio.open_nursery() as nursery:
            for node in nodes:
                nursery.start_soon(node.gossip.run)
                if args.target_peers:
                    nursery.start_soon(node.peers.run)
                emit(node.index, {"event": "ready", "peer_id": peer_id_to_text(node.key.peer_id),
                                  "addrs": node.net.addrs()})
            if args.bootstrap:
                for node in nodes:
                    nursery.start_soon(_join, node, list(args.bootstrap), emit)
            nursery.start_soon(read_commands, nodes, emit, done)
            await done.wait()
            nursery.cancel_scope.cancel()


async def _join(node: Node, bootstrap: list[str], emit: Emitter) -> None:
    reached = await node.gossip.join(bootstrap)
    emit(node.index, {"event": "joined", "reached": len(reached), "book": len(node.book)})
    if node.peers.target:
        await node.peers.top_up()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m tests.p2p.peer", description=__doc__)
    p.add_argument("--key-file", action="append", default=[],
                   help="hex Ed25519 seed; created if missing (repeat for several nodes)")
    p.add_argument("--count", type=int, default=1, help="nodes in this process")
    p.add_argument("--listen", default="/ip4/127.0.0.1/tcp/0")
    p.add_argument("--bootstrap", action="append", default=[])
    p.add_argument("--chain-id", type=int, default=31337)
    p.add_argument("--gossip", default="", help="GossipConfig overrides as JSON")
    p.add_argument("--mdns", action="store_true", help="LAN discovery (see spec/p2p.md)")
    p.add_argument("--target-peers", type=int, default=8,
                   help="ask peers for more peers while below this many connections (0: never)")
    p.add_argument("--mute", action="append", default=[],
                   help="event kinds not to print (e.g. offer, published)")
    p.add_argument("--seed", type=int, default=None, help="seed of the peer-choice generator")
    args = p.parse_args(argv)
    trio.run(main_async, args)


if __name__ == "__main__":
    main()
