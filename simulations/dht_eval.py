"""Evaluate py-libp2p 0.8.x Kademlia DHT (libp2p.kad_dht.kad_dht.KadDHT) for peer discovery
on loopback: N hosts in one trio process, each bootstrapped from ONE other host.

Hosts are the node's own (rigmesh.p2p.host.make_host: Noise only, Yamux only), run with
host.run(listen_addrs=[/ip4/127.0.0.1/tcp/0]); their pubsub is not started. spec/p2p.md section 5
quotes what this found.

Per run:
  1. start N hosts; host i (i>0) connects to ONE bootstrap host (topology "tree": a random
     earlier host; "star": host 0), serially, and adds it to its DHT routing table.
  2. COLD phase: KadDHT objects exist (SERVER mode, /ipfs/kad/1.0.0 handler registered) but the
     service is not started yet, so no routing-table refresh has happened. Each host runs
     find_peer() for targets it is not connected to, then host.connect() to the result.
  3. start every DHT service (background_trio_service(dht): its main loop immediately runs
     refresh_routing_table()); wait SETTLE s; record routing-table sizes.
  4. WARM phase: find_peer() + connect again for targets still not connected.
  5. provider records: host P provide(key); every other host find_providers(key).
Every lookup / connect / provide / find_providers is under trio.move_on_after(10).

Default (quick, < 2 min): N=10 x 3 reps x {cold, warm}, then N=30 warm once.
--full: every size x reps x modes (about 6.5 min on 1 core).
Usage: dht_eval.py [--full] [--sizes 10,30] [--reps 3] [--targets K] [--topology tree|star]
                   [--concurrent]
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import logging
import os
import random
import statistics
import sys
import time

import multiaddr
import trio
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.peer.peerinfo import PeerInfo
from libp2p.tools.anyio_service import background_trio_service

from rigmesh.p2p.host import make_host as rigmesh_host
from rigmesh.wire.identity import PeerKey

OP_TIMEOUT = 10.0
SETTLE = 3.0


class LogCounter(logging.Handler):
    """Counts libp2p WARNING+ log records (first 60 chars of the message)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: collections.Counter[str] = collections.Counter()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
        except Exception:
            msg = str(record.msg)
        # strip peer ids so similar messages group
        words = [w if len(w) < 40 else "<id>" for w in msg.split()]
        self.counts[f"{record.levelname} {record.name}: {' '.join(words)[:90]}"] += 1


LOGS = LogCounter()


def make_host():
    return rigmesh_host(PeerKey.generate())


def known(host, pid) -> bool:
    try:
        return bool(host.get_peerstore().addrs(pid))
    except Exception:
        return False


def leaves(e: BaseException) -> str:
    out = collections.Counter()

    def walk(x):
        if isinstance(x, BaseExceptionGroup):
            for y in x.exceptions:
                walk(y)
        else:
            out[f"{type(x).__name__}: {str(x)[:100]}"] += 1
    walk(e)
    return "; ".join(f"{c} x {m}" for m, c in out.items())


class Stats:
    def __init__(self) -> None:
        self.lookups = 0
        self.found = 0
        self.not_found = 0
        self.timeouts = 0
        self.exc: collections.Counter[str] = collections.Counter()
        self.known_before = 0  # target already had addrs in our peerstore (local answer)
        self.found_unknown = 0  # found although NOT in peerstore before (real network lookup)
        self.unknown = 0
        self.times: list[float] = []
        self.times_unknown: list[float] = []
        self.conn_ok = 0
        self.already_conn = 0
        self.misses: list[str] = []
        self.conn_fail = 0
        self.conn_exc: collections.Counter[str] = collections.Counter()
        self.conn_times: list[float] = []

    def line(self) -> str:
        def ms(xs):
            if not xs:
                return "-"
            xs = sorted(xs)
            return (f"med {1000*statistics.median(xs):.0f}ms p90 "
                    f"{1000*xs[int(0.9*(len(xs)-1))]:.0f}ms max {1000*xs[-1]:.0f}ms")
        return (
            f"lookups {self.lookups}: found {self.found} "
            f"({100 * self.found / max(1, self.lookups):.0f}%),"
            f" None {self.not_found}, timeout {self.timeouts}, exc {sum(self.exc.values())}"
            f" | target unknown beforehand {self.unknown}, of which found {self.found_unknown}"
            f" | t(all) {ms(self.times)} | t(unknown) {ms(self.times_unknown)}"
            f" | already connected after lookup {self.already_conn}, connect ok {self.conn_ok}"
            f" fail {self.conn_fail} t {ms(self.conn_times)}"
            + (f" | lookup exc {dict(self.exc)}" if self.exc else "")
            + (f" | misses {self.misses[:5]}" if self.misses else "")
            + (f" | connect exc {dict(self.conn_exc)}" if self.conn_exc else "")
        )


async def lookup_and_connect(i, hosts, dhts, target_idx, st: Stats) -> None:
    h, dht = hosts[i], dhts[i]
    tid = hosts[target_idx].get_id()
    kb = known(h, tid)
    st.lookups += 1
    if kb:
        st.known_before += 1
    else:
        st.unknown += 1
    t0 = time.perf_counter()
    info = None
    with trio.move_on_after(OP_TIMEOUT) as cs:
        try:
            info = await dht.find_peer(tid)
        except Exception as e:
            st.exc[f"{type(e).__name__}: {str(e)[:80]}"] += 1
            return
    dt = time.perf_counter() - t0
    if cs.cancelled_caught:
        st.timeouts += 1
        return
    st.times.append(dt)
    if not kb:
        st.times_unknown.append(dt)
    if info is None or not info.addrs:
        st.not_found += 1
        st.misses.append(f"{i}->{target_idx} known={kb} conns={len(h.get_connected_peers())} "
                         f"rt={dht.get_routing_table_size()} {1000*dt:.0f}ms")
        return
    st.found += 1
    if not kb:
        st.found_unknown += 1
    if tid in h.get_connected_peers():
        st.already_conn += 1  # e.g. the lookup itself dialled it
        return
    t0 = time.perf_counter()
    with trio.move_on_after(OP_TIMEOUT) as cs:
        try:
            await h.connect(info)
        except Exception as e:
            st.conn_fail += 1
            st.conn_exc[f"{type(e).__name__}: {str(e)[:80]}"] += 1
            return
    if cs.cancelled_caught:
        st.conn_fail += 1
        st.conn_exc["timeout 10s"] += 1
        return
    if tid in h.get_connected_peers():
        st.conn_ok += 1
        st.conn_times.append(time.perf_counter() - t0)
    else:
        st.conn_fail += 1
        st.conn_exc["connect returned but not connected"] += 1


async def phase(hosts, dhts, k, concurrent, rng) -> Stats:
    st = Stats()
    n = len(hosts)
    plans = []
    for i in range(n):
        cands = [j for j in range(n) if j != i]
        rng.shuffle(cands)
        plans.append((i, cands[:k] if k else cands))

    async def run_host(i, targets):
        for j in targets:
            await lookup_and_connect(i, hosts, dhts, j, st)

    if concurrent:
        async with trio.open_nursery() as nursery:
            for i, targets in plans:
                nursery.start_soon(run_host, i, targets)
    else:
        for i, targets in plans:
            await run_host(i, targets)
    return st


async def provider_test(hosts, dhts, rng) -> str:
    n = len(hosts)
    p = rng.randrange(n)
    # a sha2-256 multihash, hex: _encode_key() accepts hex multihash strings
    key = (bytes([0x12, 0x20]) + hashlib.sha256(os.urandom(16)).digest()).hex()
    t0 = time.perf_counter()
    ok = None
    with trio.move_on_after(OP_TIMEOUT) as cs:
        try:
            ok = await dhts[p].provide(key)
        except Exception as e:
            ok = f"exc {type(e).__name__}: {e}"
    t_prov = time.perf_counter() - t0
    if cs.cancelled_caught:
        ok = "timeout"
    stored_at = sum(1 for d in dhts if d.provider_store.get_providers(bytes.fromhex(key)))
    found = none = to = exc = 0
    net_found = net_total = 0
    times = []
    kb = bytes.fromhex(key)
    pid = hosts[p].get_id()
    for i in range(n):
        if i == p:
            continue
        local = bool(dhts[i].provider_store.get_providers(kb))
        net_total += not local
        t0 = time.perf_counter()
        with trio.move_on_after(OP_TIMEOUT) as cs:
            try:
                res = await dhts[i].find_providers(key)
                if any(r.peer_id == pid for r in res):
                    found += 1
                    net_found += not local
                else:
                    none += 1
            except Exception:
                exc += 1
        if cs.cancelled_caught:
            to += 1
        else:
            times.append(time.perf_counter() - t0)
    med = f"{1000*statistics.median(times):.0f}ms" if times else "-"
    return (f"provide() -> {ok} in {1000*t_prov:.0f}ms, record held by {stored_at}/{n} hosts; "
            f"find_providers from {n-1} other hosts: found {found}, not found {none}, "
            f"timeout {to}, exc {exc}, median {med}; of the {net_total} hosts without a local "
            f"copy (network lookup) found {net_found}")


async def host_task(h, dht, start_dht: trio.Event, task_status=trio.TASK_STATUS_IGNORED):
    async with h.run(listen_addrs=[multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        task_status.started()
        await start_dht.wait()
        async with background_trio_service(dht):
            await trio.sleep_forever()


async def one_run(n, k, topology, concurrent, seed, warm) -> None:
    """warm=False: lookups with the DHT objects only (no service, so no refresh);
    warm=True: DHT services started right after bootstrap, SETTLE s, then lookups."""
    rng = random.Random(seed)
    hosts = [make_host() for _ in range(n)]
    dhts = [KadDHT(h, DHTMode.SERVER) for h in hosts]
    start_dht = trio.Event()
    t_start = time.perf_counter()
    try:
        async with trio.open_nursery() as nursery:
            for h, d in zip(hosts, dhts, strict=True):
                await nursery.start(host_task, h, d, start_dht)
            # bootstrap: each host knows exactly one other host
            boot_fail = 0
            for i in range(1, n):
                b = 0 if topology == "star" else rng.randrange(i)
                info = PeerInfo(hosts[b].get_id(), hosts[b].get_addrs())
                with trio.move_on_after(OP_TIMEOUT) as cs:
                    try:
                        await hosts[i].connect(info)
                    except Exception:
                        boot_fail += 1
                if cs.cancelled_caught:
                    boot_fail += 1
                await dhts[i].routing_table.add_peer(info)
            await trio.sleep(0.5)  # let identify finish
            took = time.perf_counter() - t_start
            print(f"  setup {took:.1f}s, bootstrap dial failures {boot_fail}")
            if warm:
                start_dht.set()
                await trio.sleep(SETTLE)
                rt = [d.get_routing_table_size() for d in dhts]
                conns = [len(h.get_connected_peers()) for h in hosts]
                print(f"  DHT services started, after {SETTLE}s: routing table size min/med/max "
                      f"{min(rt)}/{statistics.median(rt):.0f}/{max(rt)} (of {n-1}); "
                      f"connected peers min/med/max {min(conns)}/"
                      f"{statistics.median(conns):.0f}/{max(conns)}")
            t0 = time.perf_counter()
            st = await phase(hosts, dhts, k, concurrent, rng)
            label = "WARM (service running, refreshed)" if warm else "COLD (no refresh)"
            print(f"  {label} [{time.perf_counter()-t0:.1f}s]: {st.line()}")
            conns = [len(h.get_connected_peers()) for h in hosts]
            rt = [d.get_routing_table_size() for d in dhts]
            print(f"  after lookups: connected peers min/med/max {min(conns)}/"
                  f"{statistics.median(conns):.0f}/{max(conns)}; routing table min/med/max "
                  f"{min(rt)}/{statistics.median(rt):.0f}/{max(rt)}")
            print("  providers: " + await provider_test(hosts, dhts, rng))
            nursery.cancel_scope.cancel()
            t_down = time.perf_counter()
    except BaseException as e:
        print(f"  run/teardown raised: {leaves(e)}")
        return
    print(f"  teardown {time.perf_counter()-t_down:.1f}s")


async def main(args) -> None:
    if args.full:
        plan = [(n, r, w) for n in args.sizes for r in range(args.reps) for w in args.modes]
    else:  # quick profile (< 2 min): N=10 x reps x both modes, then N=30 warm once
        plan = [(10, r, w) for r in range(args.reps) for w in args.modes] + [(30, 0, True)]
    for n, rep, warm in plan:
            print(f"N={n} rep={rep+1} {'warm' if warm else 'cold'} topology={args.topology} "
                  f"{'concurrent' if args.concurrent else 'sequential'} lookups, "
                  f"targets/host={args.targets or 'all'}", flush=True)
            LOGS.counts.clear()
            t0 = time.perf_counter()
            await one_run(n, args.targets if n > 10 else 0, args.topology, args.concurrent,
                          seed=1000 * n + rep, warm=warm)
            print(f"  run {time.perf_counter()-t0:.1f}s; libp2p warnings: "
                  f"{sum(LOGS.counts.values())}", flush=True)
            for m, c in LOGS.counts.most_common(6):
                print(f"    {c:4d} x {m}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10,30")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--targets", type=int, default=5,
                    help="random targets per host when N>10 (N<=10: every other host; 0=all)")
    ap.add_argument("--modes", default="cold,warm")
    ap.add_argument("--topology", choices=["tree", "star"], default="tree")
    ap.add_argument("--concurrent", action="store_true")
    ap.add_argument("--full", action="store_true",
                    help="every size x reps x modes (N=30 x3 x2: about 6.5 min)")
    a = ap.parse_args()
    a.sizes = [int(x) for x in a.sizes.split(",")]
    a.modes = [m == "warm" for m in a.modes.split(",")]
    logging.basicConfig(level=logging.CRITICAL, stream=sys.stderr)
    lg = logging.getLogger("libp2p")
    lg.setLevel(logging.WARNING)
    lg.addHandler(LOGS)
    lg.propagate = False
    trio.run(main, a)
