#!/usr/bin/env python3
"""The node (issue 12): rent-to-running latency, receipts persisted per second, and the CPU of a
provider holding 1,000 rentals.

(a) Rent-to-running: from `Node.rent` (the proposal goes out) to the renter having taken the
    rental's first heartbeat (its usage handler returned the receipt): negotiation over libp2p,
    the renter's approve + deposit + open transactions, both watchers seeing the open, the
    provider starting the job (a `sleep` subprocess), its first heartbeat. 20 rentals one after
    the other, median and p95; "funded" splits it where the renter's watcher saw the open.
    - in one process: both nodes on the embedded py-evm chain;
    - as OS processes: anvil, the provider node in its own process (multiprocessing spawn,
      `provider_process`), the renter node in this one.
    Both chains are watched every 0.2 s (`ChainSettings.poll`; the default is 1 s).
(b) Receipts a provider verifies and durably persists per second: 200 running rentals (pure
    engines, tests/rental/world.py), per round each one's receipt is taken by its engine
    (`ProviderRental.on_response`: decode, EIP-712 recover, the usage checks) and the step is
    persisted through `LedgerWriter` (group commit) into a sqlite file (WAL, synchronous=FULL),
    200 steps concurrently as a node's handlers do; beside it, in the same rounds, raw
    coincurve public-key recovery of the same receipts' digests.
(c) One provider node holding 1,000 rentals at a 30 s heartbeat: CPU time of this process over
    wall time in a steady-state window. Real: the whole provider node (`open_node` on anvil:
    libp2p host, ledger with group commit, chain watcher, gossip, the driver `Node.step` and its
    timers), its engines, every heartbeat signed and sent over libp2p and every receipt verified
    and persisted. Not real: the 1,000 rentals were negotiated and funded by pure engines
    against the escrow model (tests/rental/world.py) in a child process and handed to the node
    (`ProviderRental.restore`, as after a restart); their jobs are not processes (no telemetry
    sampling); the renters are those pure engines behind one libp2p host in the child process.

Plain script, about four minutes: ``python tests/bench/bench_node.py`` (``--skip-c`` leaves out
(c), the longest part).
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import resource
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "node"))

import coincurve  # noqa: E402
import trio  # noqa: E402
from web3 import Web3  # noqa: E402

from rigmesh.chain.anvil import ANVIL_DEV_KEY, Anvil  # noqa: E402
from rigmesh.chain.devnet import Deployment, EmbeddedChain, fund, prepare  # noqa: E402
from rigmesh.market.listing import Listing  # noqa: E402
from rigmesh.market.offer import Region  # noqa: E402
from rigmesh.node import ChainSettings, NodeConfig, ProviderSettings, open_node  # noqa: E402
from rigmesh.node.node import USAGE_LIMIT, Node  # noqa: E402
from rigmesh.p2p.network import USAGE_PROTOCOL  # noqa: E402
from rigmesh.rental import messages as msg  # noqa: E402
from rigmesh.rental.actions import Record, Send  # noqa: E402
from rigmesh.rental.money import Budget, ClaimPolicy  # noqa: E402
from rigmesh.rental.policy import ProviderPolicy, RenterWants  # noqa: E402
from rigmesh.rental.provider import ProviderRental  # noqa: E402
from rigmesh.rental.receipt import decode_receipt  # noqa: E402
from rigmesh.rental.renter import RenterRental  # noqa: E402
from rigmesh.rental.usage import UseState  # noqa: E402
from rigmesh.rental.workload import Workload  # noqa: E402
from rigmesh.store.keys import NodeKeys  # noqa: E402
from rigmesh.store.ledger import Ledger, LedgerWriter, RentalWrite  # noqa: E402
from rigmesh.wire import cbor, eip712  # noqa: E402
from rigmesh.wire.eip712 import EthKey  # noqa: E402
from rigmesh.wire.identity import PeerKey  # noqa: E402
from tests.bench.bench_rental import sample  # noqa: E402
from tests.node.conftest import PRICE, TIMERS, an_offer, new_keys  # noqa: E402

RENTALS_A = 20
TARGET_A = 1.0
HEARTBEAT = 30
POLL = 0.2
#: Every job is this (a process that lives through the measurement and starts fast).
SLEEPER = Workload("command", ("sleep", "600"), 0)
#: The tests' short timers, but a grace of 10 s (the tests' 2 s is tight on a busy machine).
BENCH_TIMERS = replace(TIMERS, grace_seconds=10)
WANTS = RenterWants(workload=SLEEPER, seconds=600, max_price=PRICE,
                    budget=Budget(cap=PRICE * 600), timers=BENCH_TIMERS)
RENTALS_B, ROUNDS_B = 200, 10
TARGET_B = 0.50
RENTALS_C = 1000
SPREAD_C = 30.0  # seconds over which the rentals join the node (their heartbeats spread out)
SETTLE_C = 10.0
WINDOW_C = 60.0
TARGET_C = 0.25


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


# -- (a) rent-to-running ----------------------------------------------------------------------


def provider_settings() -> ProviderSettings:
    listing = Listing(price_per_second=PRICE, region=Region("DE", "bench"), min_seconds=1,
                      heartbeat_seconds=HEARTBEAT, capacity=RENTALS_A)
    return ProviderSettings(
        listings=(listing,), runner="subprocess", gpu_source="none", telemetry_seconds=1,
        policy=ProviderPolicy(timers=BENCH_TIMERS, min_grace=1, min_challenge_window=60,
                              max_rentals_per_renter=RENTALS_A),
    )


def tap_heartbeats(node: Node) -> tuple[dict[bytes, float], dict[bytes, trio.Event]]:
    """Re-serve the renter's usage protocol through its own handler, noting when each rental's
    first heartbeat has been taken (the handler returned its receipt) and setting its event."""
    first: dict[bytes, float] = {}
    taken: dict[bytes, trio.Event] = defaultdict(trio.Event)
    handler = node._scored(node._on_usage)

    async def tapped(peer: bytes, data: bytes) -> bytes:
        reply = await handler(peer, data)
        if msg.kind_of(data, frozenset({msg.HEARTBEAT, msg.CLOSE})) == msg.HEARTBEAT:
            rid = msg.read_heartbeat(data)[0].heartbeat.rental_id
            key = node.by_rental.get(rid)
            if key is not None and key not in first:
                first[key] = time.perf_counter()
                taken[key].set()
        return reply

    node.net.serve(USAGE_PROTOCOL, tapped, max_request=USAGE_LIMIT)
    return first, taken


async def rent_to_running(renter: Node) -> tuple[list[float], list[float]]:
    """RENTALS_A rentals one after the other: (to first heartbeat, to funded) in seconds."""
    first, taken = tap_heartbeats(renter)
    funded: dict[bytes, float] = {}
    offer = await an_offer(renter)
    totals, to_funded = [], []

    failed: dict[bytes, str] = {}

    async def watch(events: trio.MemoryReceiveChannel[Any]) -> None:
        async for e in events:
            if e.kind == "funded":
                funded.setdefault(e.rental, time.perf_counter())
            elif e.kind in ("rejected", "closed", "expired"):
                failed.setdefault(e.rental, f"{e.kind}: {e.text}")
                taken[e.rental].set()

    async with renter.events() as events, trio.open_nursery() as nursery:
        nursery.start_soon(watch, events)
        for _ in range(RENTALS_A):
            t0 = time.perf_counter()
            key = await renter.rent(offer, WANTS)
            with trio.fail_after(30):
                await taken[key].wait()
            if key not in first:
                raise RuntimeError(f"rental {key.hex()[:8]} {failed.get(key)}")
            totals.append(first[key] - t0)
            to_funded.append(funded.get(key, first[key]) - t0)
        nursery.cancel_scope.cancel()
    return totals, to_funded


def report_a(name: str, totals: list[float], to_funded: list[float]) -> None:
    med, p95 = statistics.median(totals), pct(totals, 0.95)
    print(f"  {name:34s} median {med * 1000:6.0f} ms   p95 {p95 * 1000:6.0f} ms   "
          f"(funded at median {statistics.median(to_funded) * 1000:4.0f} ms)   "
          f"target p95 <= {TARGET_A:.1f} s {verdict(p95 <= TARGET_A)}")


async def bench_a_embedded(root: Path) -> None:
    chain = EmbeddedChain()
    d = chain.deployment
    settings = ChainSettings(None, d.chain_id, d.escrow, d.token, poll=POLL)
    pkeys, rkeys = new_keys(), new_keys()
    chain.fund(pkeys.account.address, wei=10**18)
    chain.fund(rkeys.account.address, wei=10**18, tokens=10**12)
    pconfig = NodeConfig(home=root / "a-provider", keys=pkeys, chain=settings,
                         provider=provider_settings(), target_peers=0)
    async with open_node(pconfig, chain=chain) as p:
        rconfig = NodeConfig(home=root / "a-renter", keys=rkeys, chain=settings,
                             bootstrap=tuple(p.addrs()), target_peers=0)
        async with open_node(rconfig, chain=chain) as r:
            report_a("one process, embedded chain", *await rent_to_running(r))


def provider_process(conn: Any, home: str, secrets_: tuple[bytes, bytes],
                     chain: dict[str, Any]) -> None:
    """A provider node in its own process (spawned): sends its addresses on `conn`, then runs
    until told to stop."""
    quiet_libp2p()
    keys = NodeKeys(PeerKey(secrets_[0]), EthKey(secrets_[1]))
    settings = ChainSettings(chain["rpc"], chain["chain_id"], chain["escrow"], chain["token"],
                             poll=POLL)
    config = NodeConfig(home=Path(home), keys=keys, chain=settings,
                        provider=provider_settings(), target_peers=0)

    async def main() -> None:
        async with open_node(config) as node:
            conn.send(node.addrs())
            await trio.to_thread.run_sync(conn.recv)

    trio.run(main)


async def bench_a_processes(root: Path, anvil: Anvil, dep: Deployment) -> None:
    w3 = Web3(Web3.HTTPProvider(anvil.url))
    funder = EthKey(ANVIL_DEV_KEY)
    pkeys, rkeys = new_keys(), new_keys()
    fund(w3, funder, dep, pkeys.account.address, wei=10**18, tokens=0)
    fund(w3, funder, dep, rkeys.account.address, wei=10**18, tokens=10**12)
    chain = {"rpc": anvil.url, "chain_id": dep.chain_id, "escrow": dep.escrow,
             "token": dep.token}
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=provider_process, args=(
        child, str(root / "ap-provider"), (pkeys.peer.seed, pkeys.account.secret), chain))
    proc.start()
    try:
        addrs = await trio.to_thread.run_sync(parent.recv)
        settings = ChainSettings(anvil.url, dep.chain_id, dep.escrow, dep.token, poll=POLL)
        rconfig = NodeConfig(home=root / "ap-renter", keys=rkeys, chain=settings,
                             bootstrap=tuple(addrs), target_peers=0)
        async with open_node(rconfig) as r:
            report_a("processes, anvil", *await rent_to_running(r))
    finally:
        parent.send("stop")
        await trio.to_thread.run_sync(proc.join, 30)
        if proc.is_alive():
            proc.kill()


# -- pure engines in the running state (b, c) --------------------------------------------------


def running_pairs(n: int, first: int = 0) -> list[tuple[ProviderRental, RenterRental]]:
    """`n` rentals between the world's provider and renter keys, each with its own nonce,
    brought to RUNNING by the rental tests' world at the current wall-clock time (the world
    reads its epoch, T0, from its module: set here so that the rentals live now)."""
    from tests.rental import world as w

    out = []
    for i in range(first, first + n):
        w.T0 = int(time.time()) - 130
        world = w.World(w.Setup(interval=HEARTBEAT, seconds=86_400, grace=30))
        world.renter = RenterRental(world.rctx, world.wants, world.offer, i.to_bytes(16, "big"))
        world.start()
        world.run(120)
        p = world.rental()
        assert p is not None and p.use is not None and p.use.state is UseState.RUNNING
        out.append((p, world.renter))
    return out


# -- (b) receipts verified and persisted per second ---------------------------------------------


def rental_write(p: ProviderRental, actions: list[Any]) -> RentalWrite:
    """What the node's driver persists for a provider engine's step (Node._persist)."""
    use = p.use
    assert use is not None and p.neg.proposal is not None
    return RentalWrite(
        p.neg.proposal.proposal.nonce, "provider", p.renter, p.rental_id,
        f"usage:{use.state.value}", None, p.snapshot(),
        tuple((a.kind, a.data) for a in actions if isinstance(a, Record)),
    )


async def bench_b(root: Path) -> None:
    pairs = running_pairs(RENTALS_B)
    ledger = Ledger(root / "b-ledger.sqlite3")
    writer = LedgerWriter(ledger)
    ours_s = raw_s = 0.0
    n = 0
    heartbeat = frozenset({msg.HEARTBEAT, msg.CLOSE})
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        now = max(p.use.last.heartbeat.time for p, _ in pairs)  # type: ignore[union-attr]
        for _ in range(ROUNDS_B):
            now += HEARTBEAT
            # Not timed: each provider sends its heartbeat, each renter signs its receipt.
            replies = []
            for p, r in pairs:
                p.on_telemetry([sample(now)])
                send = next(a for a in p.poll(now) if isinstance(a, Send))
                replies.append(r.on_request(msg.read_any(send.message, heartbeat), now)[0])
            digests = []
            for (p, _), reply in zip(pairs, replies, strict=True):
                use = p.use
                assert use is not None
                sr = decode_receipt(reply, chain_id=use.chain_id, escrow=use.escrow,
                                    signer=use.terms.receipt_signer, verify=False)
                digests.append((sr.digest(), sr.sig))

            async def take(p: ProviderRental, reply: bytes, now: int) -> None:
                actions = p.on_response("heartbeat", reply, now)
                await writer.persist([rental_write(p, actions)])

            t = time.perf_counter()
            async with trio.open_nursery() as steps:
                for (p, _), reply in zip(pairs, replies, strict=True):
                    steps.start_soon(take, p, reply, now)
            ours_s += time.perf_counter() - t
            t = time.perf_counter()
            for digest, sig in digests:
                pub = coincurve.PublicKey.from_signature_and_message(
                    sig[:64] + bytes([sig[64] - 27]), digest, hasher=None)
                eip712.address_of(pub.format(compressed=False))
            raw_s += time.perf_counter() - t
            n += len(pairs)
        nursery.cancel_scope.cancel()
    for p, _ in pairs:
        assert p.use is not None and p.use.answered and p.use.receipt is not None
    stored = ledger.records(pairs[0][0].neg.proposal.proposal.nonce, "receipt")  # type: ignore[union-attr]
    assert len(stored) == ROUNDS_B, len(stored)
    commits = ledger.commits
    ledger.close()
    ours, raw = n / ours_s, n / raw_s
    print(f"  receipts verified + persisted     {ours:8,.0f}/s   raw coincurve recover "
          f"{raw:8,.0f}/s   ratio {ours / raw:5.2f} (target >= {TARGET_B:.2f}) "
          f"{verdict(ours / raw >= TARGET_B)}")
    print(f"    {RENTALS_B} rentals x {ROUNDS_B} receipts, {commits} sqlite commits "
          f"({n / commits:.0f} steps a commit, synchronous=FULL)")


# -- (c) a provider node holding 1,000 rentals --------------------------------------------------


def renter_process(conn: Any, provider_addrs: list[str], n: int) -> None:
    """The renters of part (c): pure renter engines behind one libp2p host. Builds the rentals,
    sends the provider's side of each (snapshots), then answers heartbeats until told to stop."""
    quiet_libp2p()
    from rigmesh.p2p.host import open_libp2p_network

    pairs = running_pairs(n)
    renters = {r.rental_id: r for _, r in pairs}
    key = pairs[0][1].ctx.key
    heartbeat = frozenset({msg.HEARTBEAT, msg.CLOSE})
    served = {"requests": 0}

    async def on_usage(peer: bytes, data: bytes) -> bytes:
        m = msg.read_any(data, heartbeat)
        rid = m[0].heartbeat.rental_id if isinstance(m, tuple) else m.rental_id
        served["requests"] += 1
        return renters[rid].on_request(m, int(time.time()))[0]

    async def main() -> None:
        async with open_libp2p_network(key) as net:
            net.serve(USAGE_PROTOCOL, on_usage, max_request=USAGE_LIMIT)
            await net.connect(provider_addrs[0])
            conn.send([cbor.encode(p.snapshot()) for p, _ in pairs])
            await trio.to_thread.run_sync(conn.recv)
            conn.send(served["requests"])

    trio.run(main)


async def bench_c(root: Path, anvil: Anvil, dep: Deployment) -> None:
    from tests.rental import world as w

    # The node holds the world's provider keys (the rentals name them), and the rentals keep
    # the world's provider context, claims off (no chain transactions while measuring).
    probe = w.World(w.Setup(interval=HEARTBEAT, seconds=86_400, grace=30))
    keys = NodeKeys(probe.provider_key, probe.payee)
    rental_ctx = replace(probe.pctx, claims=ClaimPolicy(min_interval=10**12))
    settings = ChainSettings(anvil.url, dep.chain_id, dep.escrow, dep.token)
    config = NodeConfig(home=root / "c-provider", keys=keys, chain=settings,
                        provider=provider_settings(), target_peers=0)
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    async def sampler(node: Node) -> None:
        """What the node's job runner does every `telemetry_seconds` (5 s by default) for each
        running job, NVML reading excepted: hand the rental its GPU samples."""
        while True:
            now = node.now()
            for r in list(node.desk.by_nonce.values()):  # type: ignore[union-attr]
                r.on_telemetry([sample(now)])
            await trio.sleep(5)

    async with open_node(config) as node, trio.open_nursery() as nursery:
        assert node.desk is not None
        nursery.start_soon(sampler, node)
        proc = ctx.Process(target=renter_process, args=(child, node.addrs(), RENTALS_C))
        t_build = time.perf_counter()
        proc.start()
        try:
            snaps = await trio.to_thread.run_sync(parent.recv)
            build = time.perf_counter() - t_build
            t_join = time.perf_counter()
            for i, snap in enumerate(snaps):
                rental = ProviderRental.restore(rental_ctx, cbor.decode(snap, max_size=1 << 20),
                                                node.now())
                rental.on_telemetry([sample(node.now())])
                key = rental.neg.proposal.proposal.nonce  # type: ignore[union-attr]
                node.desk.by_nonce[key] = rental
                assert rental.rental_id is not None
                node.desk.by_rental[rental.rental_id] = rental
                await node.step(key, lambda e: e.poll(node.now()))
                # Joins spread over SPREAD_C seconds, and so do the heartbeats from then on.
                await trio.sleep(max(0.0, t_join + SPREAD_C * (i + 1) / RENTALS_C
                                     - time.perf_counter()))
            await trio.sleep(SETTLE_C)
            receipts0 = _receipts(node)
            commits0 = node.ledger.commits
            c0, w0 = _cpu(), time.perf_counter()
            await trio.sleep(WINDOW_C)
            c1, w1 = _cpu(), time.perf_counter()
            receipts = _receipts(node) - receipts0
            commits = node.ledger.commits - commits0
            running = sum(1 for r in node.desk.by_nonce.values()
                          if r.use is not None and r.use.state is UseState.RUNNING)
        finally:
            parent.send("stop")
            served = await trio.to_thread.run_sync(parent.recv)
            await trio.to_thread.run_sync(proc.join, 30)
            nursery.cancel_scope.cancel()
    share = (c1 - c0) / (w1 - w0)
    print(f"  provider CPU, {RENTALS_C} rentals at {HEARTBEAT} s  {share:7.1%} of one core over "
          f"{w1 - w0:.0f} s (target <= {TARGET_C:.0%}) {verdict(share <= TARGET_C)}")
    print(f"    in the window: {receipts} receipts taken ({receipts / (w1 - w0):.1f}/s, expected "
          f"{RENTALS_C / HEARTBEAT:.1f}/s), {commits} ledger commits; {running} of {RENTALS_C} "
          f"still running; setup: rentals built in {build:.0f} s (child), joined over "
          f"{SPREAD_C:.0f} s; the renter process answered {served} requests")


def _cpu() -> float:
    """CPU seconds of this process, every thread (the ledger's commits run in worker threads)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _receipts(node: Node) -> int:
    assert node.desk is not None
    return sum(r.use.receipt.receipt.seq for r in node.desk.by_nonce.values()
               if r.use is not None and r.use.receipt is not None)


# -- main ----------------------------------------------------------------------------------------


@asynccontextmanager
async def _tmp() -> AsyncIterator[Path]:
    with tempfile.TemporaryDirectory(prefix="rigmesh-bench-node-") as d:
        yield Path(d)


async def amain(args: argparse.Namespace) -> None:
    async with _tmp() as root:
        print("(b) receipts a provider verifies and durably persists, beside raw recovery")
        await bench_b(root)
        print(f"(a) rent-to-running, {RENTALS_A} rentals one after the other "
              f"(proposal sent -> first heartbeat taken), chains watched every {POLL} s")
        await bench_a_embedded(root)
        with Anvil.start() as anvil:
            w3 = Web3(Web3.HTTPProvider(anvil.url))
            dep = prepare(w3, EthKey(ANVIL_DEV_KEY))
            await bench_a_processes(root, anvil, dep)
            if not args.skip_c:
                print(f"(c) one provider node holding {RENTALS_C} rentals "
                      f"(heartbeat every {HEARTBEAT} s)")
                await bench_c(root, anvil, dep)


def quiet_libp2p() -> None:
    """py-libp2p logs, as errors, each stream a peer cannot open or that ends at shutdown: here
    mostly the renters' bare host of part (c), which serves no sync protocol."""
    logging.getLogger("libp2p").setLevel(logging.CRITICAL)


def main() -> int:
    quiet_libp2p()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--skip-c", action="store_true", help="leave out part (c)")
    trio.run(amain, parser.parse_args())
    return 0


if __name__ == "__main__":
    sys.exit(main())
