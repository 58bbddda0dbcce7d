"""Every way a rental between two nodes can go wrong, with exact balances.

Two real nodes in this process on the embedded chain (libp2p on loopback, the escrow contract,
the ledger on disk, jobs as real subprocesses). Each test notes what both parties hold in the
test stablecoin (wallet plus escrow balance) before the rental and checks after it that the
renter lost exactly what the provider gained, that this is what the chain says was paid, and that
the paid amount respects the party's loss bound (spec/rental.md, "Loss bounds").

"Killed" here means the node's `open_node` block is left at once (its tasks cancelled, its jobs
stopped); the crash matrix (test_crash.py) kills node processes with SIGKILL instead.
"""

from __future__ import annotations

import dataclasses
import sys

import trio

from rigmesh.node.node import USAGE_LIMIT, NodeEvent
from rigmesh.p2p.network import USAGE_PROTOCOL
from rigmesh.rental.codes import CloseReason
from rigmesh.rental.evidence import TelemetrySample
from rigmesh.rental.money import Budget
from rigmesh.rental.policy import RenterWants
from rigmesh.rental.workload import Workload
from tests.node.conftest import INTERVAL, PRICE, TIMERS, Net, job, wants
from tests.node.parties import advance_chain, closed, collect, parties, running_with, started

# -- the job itself ends the rental -----------------------------------------------------------


async def test_job_exits_early_renter_pays_its_uptime(net: Net) -> None:
    async with parties(net) as p:
        _provider, renter, offer = await started(p)
        key = await renter.rent(offer, wants(job("import time; time.sleep(3); raise SystemExit(3)"),
                                             seconds=30))
        paid, refunded = await p.settled(renter, key, CloseReason.JOB_EXITED)
        use = renter.engine(key).use  # type: ignore[union-attr]
        assert use is not None and use.last is not None
        last = use.last.heartbeat
        assert last.exit == 3
        # The renter paid exactly its last receipt: the final heartbeat's uptime at the price.
        assert paid == use.amount == PRICE * last.uptime
        assert 3 <= last.uptime <= 3 + INTERVAL + 2
        assert refunded == PRICE * 30 - paid


async def test_job_breaking_its_process_limit_ends_the_rental(net: Net) -> None:
    # The runner allows 256 processes per job; this job starts 300.
    code = ("import subprocess, time\n"
            "ps = [subprocess.Popen(['sleep', '30']) for _ in range(300)]\n"
            "time.sleep(30)\n")
    async with parties(net) as p:
        _provider, renter, offer = await started(p)
        key = await renter.rent(offer, wants(job(code), seconds=30))
        paid, _ = await p.settled(renter, key, CloseReason.JOB_LIMIT)
        use = renter.engine(key).use  # type: ignore[union-attr]
        assert use is not None and use.last is not None
        assert paid == PRICE * use.last.heartbeat.uptime


# -- one side goes away -----------------------------------------------------------------------


async def test_renter_vanishes_provider_settles_with_the_last_receipt(net: Net) -> None:
    async with parties(net) as p:
        provider, renter, offer = await started(p)
        key = await renter.rent(offer, wants(job("import time; time.sleep(60)"), seconds=30))
        await provider.wait_until(key, running_with(2 * PRICE), timeout=30)
        await p.stop("renter")
        signed = renter.engine(key).use.amount  # type: ignore[union-attr]
        p.renter = None
        paid, _ = await p.settled(provider, key, CloseReason.RECEIPT_MISSED)
        use = provider.engine(key).use  # type: ignore[union-attr]
        assert use is not None and use.last is not None
        # Paid: the best receipt it held (the renter may have signed one more that never
        # reached it). Lost: what ran after it, at most interval + grace.
        assert 2 * PRICE <= paid == use.amount <= signed
        unpaid_seconds = use.last.heartbeat.uptime - paid // PRICE
        assert 0 <= unpaid_seconds <= INTERVAL + TIMERS.grace_seconds


async def test_provider_vanishes_renter_closes_and_pays_only_what_was_claimed(net: Net) -> None:
    async with parties(net) as p:
        _provider, renter, offer = await started(p)
        key = await renter.rent(offer, wants(job("import time; time.sleep(60)"), seconds=30))
        await renter.wait_until(key, running_with(2 * PRICE), timeout=30)
        await p.stop("provider")
        p.provider = None
        signed = renter.engine(key).use.amount  # type: ignore[union-attr]
        # Heartbeats stop: the renter asks the escrow to close and waits out the window.
        await renter.wait_until(key, lambda e: e.use is not None and e.use.close_requested,
                                timeout=30)
        await advance_chain(net, renter, TIMERS.challenge_window + 2)
        paid, refunded = await p.settled(renter, key, CloseReason.HEARTBEAT_MISSED)
        # The provider never settled: it gets what it had claimed (nothing), never more than
        # the renter signed for.
        assert paid <= signed
        assert paid == 0 and refunded == PRICE * 30


async def test_provider_that_never_starts_costs_the_renter_nothing(net: Net) -> None:
    async with parties(net) as p:
        # The provider waits for a confirmation depth the chain never reaches: it agrees, and
        # never sees the funding, so it never starts the job (stopping it once the renter saw
        # the funding would race its own watcher).
        p.chains["provider"] = dataclasses.replace(net.settings, confirmations=10**6)
        provider, renter, offer = await started(p)
        key = await renter.rent(offer, wants(job("print('never runs')"), seconds=30))
        await renter.wait_until(key, lambda e: e.use is not None, timeout=30)  # funded
        await advance_chain(net, renter, TIMERS.start_seconds + 1)
        await renter.wait_until(key, lambda e: e.use is not None and e.use.close_requested,
                                timeout=30)
        await advance_chain(net, renter, TIMERS.challenge_window + 2)
        paid, refunded = await p.settled(renter, key, CloseReason.NEVER_STARTED)
        assert (paid, refunded) == (0, PRICE * 30)
        engine = provider.engine(key)
        assert engine is not None and engine.use is None  # it never counted the rental funded


async def test_receipts_late_provider_stops_and_keeps_the_last_in_time(net: Net) -> None:
    async with parties(net) as p:
        provider, renter, offer = await started(p)
        key = await renter.rent(offer, wants(job("import time; time.sleep(60)"), seconds=30))
        await provider.wait_until(key, running_with(PRICE), timeout=30)
        # From now on the renter's receipts reach the provider 4 s late (grace is 2 s):
        # a renter whose link is too slow.
        slow = renter.net  # the renter's libp2p network: its usage handler replaced

        async def late(peer: bytes, data: bytes) -> bytes:
            reply = await renter._on_usage(peer, data)  # signed (and kept) in time...
            await trio.sleep(4)  # ...delivered late
            return reply

        slow.serve(USAGE_PROTOCOL, late, max_request=USAGE_LIMIT)
        paid, _ = await p.settled(provider, key, CloseReason.RECEIPT_MISSED)
        use = provider.engine(key).use  # type: ignore[union-attr]
        signed = renter.engine(key).use.amount  # type: ignore[union-attr]
        assert use is not None and use.last is not None
        assert PRICE <= paid == use.amount <= signed
        assert use.last.heartbeat.uptime - paid // PRICE <= INTERVAL + TIMERS.grace_seconds


# -- one side restarts ------------------------------------------------------------------------


async def test_provider_restart_loses_the_job_and_is_paid_every_receipt(net: Net) -> None:
    async with parties(net) as p:
        provider, renter, offer = await started(p)
        key = await renter.rent(offer, wants(job("import time; time.sleep(60)"), seconds=30))
        await provider.wait_until(key, running_with(2 * PRICE), timeout=30)
        await p.stop("provider")
        held = provider.engine(key).use.amount  # type: ignore[union-attr]
        provider = await p.start("provider")
        paid, _ = await p.settled(provider, key, CloseReason.PROVIDER_RESTARTED)
        assert paid >= held
        renter_use = (await renter.wait_until(key, closed, timeout=30)).use
        assert renter_use is not None
        assert paid == renter_use.amount  # exactly what the renter signed


async def test_renter_restart_resumes_the_rental(net: Net) -> None:
    timers = dataclasses.replace(TIMERS, grace_seconds=6)
    long_wants = RenterWants(
        workload=job("import time; time.sleep(8); print('done')"), seconds=30, max_price=PRICE,
        budget=Budget(cap=PRICE * 30), timers=timers)
    async with parties(net) as p:
        _provider, renter, offer = await started(p)
        key = await renter.rent(offer, long_wants)
        await renter.wait_until(key, running_with(PRICE), timeout=30)
        await p.stop("renter")
        signed_before = renter.engine(key).use.amount  # type: ignore[union-attr]
        renter = await p.start("renter")
        paid, _refunded = await p.settled(renter, key, CloseReason.JOB_EXITED)
        use = renter.engine(key).use  # type: ignore[union-attr]
        assert use is not None and use.last is not None
        # Paid for the whole run, signed after the restart too (the uptime is on the chain-
        # anchored clock, which may trail the job's 8 s of wall time when blocks ran ahead).
        assert paid == PRICE * use.last.heartbeat.uptime > signed_before


# -- a provider that lies ---------------------------------------------------------------------


def _lying(samples: list[TelemetrySample]) -> list[TelemetrySample]:
    """What a provider renting out a smaller GPU than it offered would report."""
    return [dataclasses.replace(s, name="NVIDIA GeForce RTX 3060", mem_total_mib=12288)
            for s in samples]


async def test_heartbeat_lying_about_its_gpu_is_never_paid(net: Net) -> None:
    gpu_job = Workload("command", (sys.executable, "-c", "import time; time.sleep(60)"), 1)
    async with parties(net) as p:
        p.provider_settings = dataclasses.replace(p.provider_settings, gpu_source="recorded-h100")
        provider, renter, offer = await started(p)
        assert provider.jobs is not None and provider.jobs.sampler is not None
        honest = provider.jobs.sampler
        provider.jobs.sampler = lambda procs: _lying(honest(procs))
        seen: list[NodeEvent] = []
        await p.nursery.start(collect, renter, seen)
        key = await renter.rent(offer, wants(gpu_job, seconds=30))
        paid, refunded = await p.settled(renter, key, CloseReason.EVIDENCE_FAILED)
        assert (paid, refunded) == (0, PRICE * 30)
        why = [e.text for e in seen if e.kind == "closed" and "we closed" in e.text]
        assert why and "gpu_missing" in why[0], why


async def test_honest_recorded_gpu_passes_the_evidence_check(net: Net) -> None:
    gpu_job = Workload("command", (sys.executable, "-c", "import time; time.sleep(4)"), 1)
    async with parties(net) as p:
        p.provider_settings = dataclasses.replace(p.provider_settings, gpu_source="recorded-h100")
        _provider, renter, offer = await started(p)
        key = await renter.rent(offer, wants(gpu_job, seconds=30))
        paid, _ = await p.settled(renter, key, CloseReason.JOB_EXITED)
        use = renter.engine(key).use  # type: ignore[union-attr]
        assert use is not None and use.last is not None
        # Every heartbeat's evidence passed: the renter signed the whole uptime (on the
        # chain-anchored clock, which may trail the job's 4 s of wall time on a busy machine).
        assert paid == PRICE * use.last.heartbeat.uptime >= PRICE
