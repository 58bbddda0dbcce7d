"""A small discrete-event world for the rental engines: one provider, one renter, the escrow model
as the chain, a network that can lose, delay, duplicate and reorder messages, a fake job, and
crashes that restart a party from its last persisted snapshot.

It performs the engines' actions exactly as a node must: the snapshot is persisted (here: kept,
encoded as CBOR and decoded again, the way the ledger stores it) before anything the step asked
for goes out. Tests drive it with `run` and read what happened from its records.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rigmesh.escrow.errors import EscrowError
from rigmesh.escrow.model import EscrowModel, Status
from rigmesh.market.listing import Hardware, Listing, Market, OfferBuilder
from rigmesh.market.offer import Gpu, Region
from rigmesh.rental import messages as msg
from rigmesh.rental.actions import (
    Action,
    Claim,
    Fetch,
    Finalize,
    Notice,
    Open,
    OpenFor,
    PrepareFunding,
    Record,
    RequestClose,
    Send,
    Settle,
    StartJob,
    StopJob,
    Submit,
    TopUp,
    Upload,
    chain_event,
)
from rigmesh.rental.crypto import SIGNED, Crypto
from rigmesh.rental.evidence import TelemetrySample
from rigmesh.rental.messages import JobState
from rigmesh.rental.money import Budget, ClaimPolicy
from rigmesh.rental.negotiation import open_request_digest
from rigmesh.rental.policy import ProviderPolicy, RenterWants
from rigmesh.rental.provider import ProviderContext, ProviderDesk, ProviderRental
from rigmesh.rental.renter import RenterContext, RenterRental
from rigmesh.rental.timers import Timers
from rigmesh.rental.workload import FileDigest, Workload
from rigmesh.wire import cbor, eip712, identity
from rigmesh.wire.errors import WireError

T0 = 1_767_225_600
CHAIN_ID = 31337
ESCROW = bytes.fromhex("5fbdb2315678afecb367f032d93f642f64180aa3")
TOKEN = bytes.fromhex("e7f1725e7734ce288f8367e1bb143e90bb3f0512")
H100 = Gpu("NVIDIA H100 80GB HBM3", 81559, 1, "9.0", "570.133.20", "12.8")
NO_RECEIPT = eip712.Receipt(bytes(32), 0, 0, 0, bytes(32))

PROVIDER, RENTER = "provider", "renter"


@dataclass
class Faults:
    """What goes wrong, and when (world seconds since T0)."""

    loss: float = 0.0
    duplicate: float = 0.0
    max_delay: int = 0
    latency: int = 0  # every delivery takes this much longer
    never_starts: bool = False
    start_takes: int = 1  # seconds from StartJob to the job running
    provider_gone_at: int | None = None  # the provider vanishes for good
    gpu_lie_at: int | None = None  # heartbeats show another GPU model from then
    job_dies_at: int | None = None  # the job's processes die, heartbeats go on
    job_exits_at: int | None = None  # the job exits by itself (code 0)
    job_exits_after: int | None = None  # ... this many seconds after it started
    renter_gone_at: int | None = None  # the renter stops answering for good


@dataclass
class Setup:
    price: int = 1000  # token base units per second
    interval: int = 30
    grace: int = 10
    seconds: int = 600
    deposit: int | None = None
    budget_cap: int | None = None
    funding: int = msg.Funding.RENTER
    claim_every: int | None = None  # ClaimPolicy.min_interval; None: never claim mid-rental
    challenge_window: int = 300
    inputs: bool = False
    busy: bool = True
    crypto: Crypto = SIGNED
    tx_delay: int = 1
    confirm_delay: int = 1


@dataclass
class Party:
    name: str
    online: bool = True
    snapshot: bytes | None = None  # the persisted state (CBOR)
    die_after_persist: bool = False
    down_for: int = 0
    records: list[Record] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)


class World:
    def __init__(self, setup: Setup | None = None, faults: Faults | None = None,
                 seed: int = 0) -> None:
        self.setup = s = setup or Setup()
        self.faults = faults or Faults()
        self.rng = random.Random(seed)
        self.now = T0
        self._heap: list[tuple[int, int, Callable[[], None]]] = []
        self._n = 0
        self.provider_key = identity.PeerKey(hashlib.sha256(b"provider").digest())
        self.renter_key = identity.PeerKey(hashlib.sha256(b"renter").digest())
        self.payee = eip712.EthKey(hashlib.sha256(b"payee").digest())
        self.payer = eip712.EthKey(hashlib.sha256(b"payer").digest())
        self.chain = EscrowModel(CHAIN_ID, ESCROW, 60, 86_400,
                                 check_signatures=s.crypto.signed)
        builder = OfferBuilder(self.provider_key, self.payee,
                               Hardware(H100, cpu_cores=16, ram_mib=65536, disk_gib=500),
                               Market(CHAIN_ID, ESCROW, TOKEN))
        listing = Listing(price_per_second=s.price, region=Region("DE", "fra-1"),
                          heartbeat_seconds=s.interval, ttl=86_000)
        self.offer = builder.offer(listing, seq=1, now=T0).sign(self.provider_key)
        timers = Timers(grace_seconds=s.grace, challenge_window=s.challenge_window)
        self.pctx = ProviderContext(
            self.provider_key, s.crypto, CHAIN_ID, ESCROW,
            ProviderPolicy(timers=timers, min_grace=1, min_challenge_window=60),
            ClaimPolicy(claim_cost=0, min_interval=s.claim_every or 10**12),
        )
        self.rctx = RenterContext(self.renter_key, self.payer, self.payer.address, s.crypto,
                                  CHAIN_ID, ESCROW)
        deposit = s.deposit if s.deposit is not None else s.price * s.seconds
        inputs = (FileDigest("in.txt", 3, hashlib.sha256(b"abc").digest()),) if s.inputs else ()
        self.wants = RenterWants(
            workload=Workload("command", ("python3", "job.py"), 1, inputs, False, s.busy),
            seconds=s.seconds, max_price=s.price, deposit=deposit,
            budget=Budget(cap=s.budget_cap or deposit), funding=s.funding, timers=timers,
        )
        self.chain.wallets.mint(TOKEN, self.payer.address, 10 * (s.budget_cap or deposit) + 1)
        self.desk = ProviderDesk(self.pctx)
        self.desk.publish(self.offer)
        self.renter = RenterRental(self.rctx, self.wants, self.offer, b"\x07" * 16)
        self.parties = {PROVIDER: Party(PROVIDER), RENTER: Party(RENTER)}
        self.job: dict[str, Any] = {"started": None, "ended": None, "starts": 0, "life": 0}
        self.log: list[str] = []
        #: Chain events mined while a party was down: it reads them at restart.
        self._missed: dict[str, list[Any]] = {}
        self._polls: dict[tuple[str, int], int] = {}
        self._scheduled: set[tuple[str, int]] = set()
        self._persist(PROVIDER)
        self._persist(RENTER)

    # -- the event loop -----------------------------------------------------------------------

    def at(self, t: int, fn: Callable[[], None]) -> None:
        self._n += 1
        heapq.heappush(self._heap, (max(t, self.now), self._n, fn))

    def run(self, until: int) -> None:
        """Run until world time `until` (seconds after T0) or until nothing is left to do."""
        end = T0 + until
        while self._heap and self._heap[0][0] <= end:
            t, _, fn = heapq.heappop(self._heap)
            self.now = t
            fn()
        self.now = max(self.now, end)

    def start(self) -> None:
        self._perform(RENTER, self.renter.propose(self.now))

    # -- parties ------------------------------------------------------------------------------

    def rental(self) -> ProviderRental | None:
        rentals = self.desk.rentals()
        return rentals[0] if rentals else None

    def _engines(self, who: str) -> list[Any]:
        return self.desk.rentals() if who == PROVIDER else [self.renter]

    def _persist(self, who: str) -> None:
        snap = [e.snapshot() for e in self._engines(who)]
        self.parties[who].snapshot = cbor.encode(snap)

    def _perform(self, who: str, actions: list[Action]) -> None:
        """Persist, then act: the order every node keeps."""
        party = self.parties[who]
        if not party.online:
            return  # a dead process neither writes nor acts
        self._persist(who)
        if party.die_after_persist:
            # Killed between the durable write and anything leaving the process.
            party.die_after_persist = False
            self.crash(who, party.down_for)
            return
        for a in actions:
            if isinstance(a, Record):
                party.records.append(a)
            elif isinstance(a, Notice):
                party.notices.append(a)
                self.log.append(f"{self.now - T0:6d} {who} {a.kind}: {a.text}")
            elif isinstance(a, Send):
                self._send(who, a)
            elif isinstance(a, Submit):
                self.at(self.now + self.setup.tx_delay, lambda a=a: self._mine(who, a))
            elif isinstance(a, StartJob):
                self._start_job()
            elif isinstance(a, StopJob):
                self.at(self.now, lambda: self._end_job(JobState.STOPPED, None))
            elif isinstance(a, Upload):
                self.at(self.now + 1, self._inputs_arrived)
            elif isinstance(a, Fetch):
                self.at(self.now, lambda: self._perform(RENTER, self.renter.on_outputs(True, "")))
            elif isinstance(a, PrepareFunding):
                self._prepare_funding(a)
        self._schedule_polls(who)

    def _schedule_polls(self, who: str) -> None:
        for e in self._engines(who):
            t = e.next_wakeup()
            if t is not None and (who, max(t, self.now)) not in self._scheduled:
                self._scheduled.add((who, max(t, self.now)))
                self.at(t, lambda who=who: self._poll(who))

    def _poll(self, who: str) -> None:
        self._scheduled.discard((who, self.now))
        if self._gone(who):
            return
        due = [t for e in self._engines(who) if (t := e.next_wakeup()) is not None]
        if not due or min(due) > self.now:
            return  # a superseded wakeup: a node polls an engine only when it asked to be
        key = (who, self.now)
        self._polls[key] = self._polls.get(key, 0) + 1
        if self._polls[key] > 50:
            raise AssertionError(f"{who} polls in a loop at {self.now - T0}: a wakeup never moves")
        if who == PROVIDER:
            self._telemetry()
            actions: list[Action] = []
            for r in self.desk.rentals():
                actions += r.poll(self.now)
            self._perform(PROVIDER, actions)
        else:
            self._perform(RENTER, self.renter.poll(self.now))

    # -- the network --------------------------------------------------------------------------

    def _gone(self, who: str) -> bool:
        f = self.faults
        t = self.now - T0
        if who == PROVIDER and f.provider_gone_at is not None and t >= f.provider_gone_at:
            return True
        if who == RENTER and f.renter_gone_at is not None and t >= f.renter_gone_at:
            return True
        return not self.parties[who].online

    def _delay(self) -> int | None:
        f = self.faults
        if f.loss and self.rng.random() < f.loss:
            return None
        return f.latency + (self.rng.randint(0, f.max_delay) if f.max_delay else 0)

    def _send(self, src: str, send: Send) -> None:
        dst = RENTER if src == PROVIDER else PROVIDER
        copies = 2 if self.faults.duplicate and self.rng.random() < self.faults.duplicate else 1
        for _ in range(copies):
            d = self._delay()
            if d is not None:
                self.at(self.now + d, lambda: self._serve(src, dst, send))

    def _serve(self, src: str, dst: str, send: Send) -> None:
        if self._gone(dst) or self._gone(src):
            return
        try:
            if dst == PROVIDER:
                peer = self.renter_key.peer_id
                reply, actions, _ = self.desk.on_request(peer, send.message, self.now)
            else:
                decoded = msg.read_any(send.message, frozenset({msg.HEARTBEAT, msg.CLOSE}))
                reply, actions = self.renter.on_request(decoded, self.now)
        except WireError as exc:
            self.log.append(f"{self.now - T0:6d} {dst} refused {send.key}: {exc}")
            self._perform(dst, [])
            return
        self._perform(dst, actions)
        d = self._delay()
        if d is not None:
            self.at(self.now + d, lambda: self._answer(src, send.key, reply))

    def _answer(self, who: str, key: str, reply: bytes) -> None:
        if self._gone(who):
            return
        engines = self._engines(who)
        actions: list[Action] = []
        for e in engines:
            try:
                actions += e.on_response(key, reply, self.now)
            except WireError as exc:
                self.log.append(f"{self.now - T0:6d} {who} bad answer to {key}: {exc}")
        self._perform(who, actions)

    # -- the chain ----------------------------------------------------------------------------

    def _sender(self, who: str) -> bytes:
        return self.payee.address if who == PROVIDER else self.payer.address

    def _mine(self, who: str, submit: Submit) -> None:
        if self._gone(who):
            return  # a dead node sends nothing; its restart submits again
        op, chain, now, me = submit.op, self.chain, self.now, self._sender(who)
        try:
            if isinstance(op, Open):
                self._deposit(op.terms.deposit)
                events = chain.open(me, op.terms, now=now)
            elif isinstance(op, OpenFor):
                self._deposit(op.terms.deposit)
                events = chain.open_for(me, op.terms, op.nonce, op.deadline, op.signature,
                                        now=now)
            elif isinstance(op, TopUp):
                self._deposit(op.amount)
                events = chain.top_up(me, op.terms, op.amount, now=now)
            elif isinstance(op, Claim):
                events = chain.claim(me, op.terms, op.receipt, op.signature, now=now)
            elif isinstance(op, Settle):
                events = chain.settle(me, op.terms, op.receipt or NO_RECEIPT, op.signature,
                                      now=now)
            elif isinstance(op, RequestClose):
                events = chain.request_close(me, op.terms, now=now)
            else:
                assert isinstance(op, Finalize)
                events = chain.finalize(me, op.terms, now=now)
        except EscrowError as exc:
            self.log.append(f"{now - T0:6d} {who} {submit.op_id} reverted: {type(exc).__name__}")
            self._report(who, submit.op_id, ok=False, error=type(exc).__name__)
            return
        self.log.append(f"{now - T0:6d} {who} {submit.op_id} mined")
        self._report(who, submit.op_id, ok=True)
        for e in events:
            ce = chain_event(e, now)
            if ce is not None:
                for party in (PROVIDER, RENTER):
                    self.at(now + self.setup.confirm_delay,
                            lambda party=party, ce=ce: self._on_chain(party, ce))

    def _deposit(self, amount: int) -> None:
        free = self.chain.balance_of(TOKEN, self.payer.address)
        if free < amount:
            self.chain.wallets.approve(TOKEN, self.payer.address, ESCROW, amount - free)
            self.chain.deposit(self.payer.address, TOKEN, amount - free)

    def _report(self, who: str, op_id: str, *, ok: bool, error: str = "") -> None:
        actions: list[Action] = []
        for e in self._engines(who):
            actions += e.on_submitted(op_id, self.now, ok=ok, error=error)
        self._perform(who, actions)

    def _on_chain(self, who: str, event: Any) -> None:
        if self._gone(who):
            self._missed.setdefault(who, []).append(event)
            return
        actions: list[Action] = []
        for e in self._engines(who):
            actions += e.on_chain(event, self.now)
        self._perform(who, actions)

    def _prepare_funding(self, a: PrepareFunding) -> None:
        nonce = self.chain.nonce_of(self.payer.address)
        deadline = self.now + 300
        fund = msg.Fund(a.rental_id, nonce, deadline, b"", None)
        digest = open_request_digest(a.terms, fund, CHAIN_ID, ESCROW)
        sig = self.setup.crypto.sign_digest(self.payer, digest)
        self.at(self.now, lambda: self._perform(
            RENTER, self.renter.on_funding(nonce, deadline, sig, None, self.now)))

    # -- the job ------------------------------------------------------------------------------

    def _start_job(self) -> None:
        if self.faults.never_starts:
            return

        self.job["starts"] += 1
        life = self.job["life"]

        def started() -> None:
            if self._gone(PROVIDER) or self.job["started"] is not None or self.job["life"] != life:
                return  # a start the provider's death cancelled (its runner reaps it)
            self.job["started"] = self.now
            r = self.rental()
            assert r is not None
            self._telemetry()
            self._perform(PROVIDER, r.on_job_started(self.now))
            f = self.faults
            if f.job_exits_at is not None:
                self.at(T0 + f.job_exits_at, lambda: self._end_job(JobState.EXITED, 0))
            if f.job_exits_after is not None:
                self.at(self.now + f.job_exits_after, lambda: self._end_job(JobState.EXITED, 0))

        self.at(self.now + self.faults.start_takes, started)

    def _end_job(self, state: int, code: int | None) -> None:
        if self.job["started"] is None or self.job["ended"] is not None:
            return
        self.job["ended"] = self.now
        r = self.rental()
        if r is not None and not self._gone(PROVIDER):
            self._perform(PROVIDER, r.on_job_ended(state, code, (), self.now))

    def _inputs_arrived(self) -> None:
        r = self.rental()
        if r is not None and not self._gone(PROVIDER):
            self._perform(PROVIDER, r.on_inputs_ready(self.now))

    def _telemetry(self) -> None:
        r = self.rental()
        if r is None or self.job["started"] is None:
            return
        f, t = self.faults, self.now - T0
        lying = f.gpu_lie_at is not None and t >= f.gpu_lie_at
        dead = (f.job_dies_at is not None and t >= f.job_dies_at) or self.job["ended"] is not None
        r.on_telemetry([TelemetrySample(
            t_ms=self.now * 1000, gpu_index=0, uuid="GPU-world-0",
            name="NVIDIA A10" if lying else H100.model,
            mem_total_mib=23028 if lying else H100.vram_mib, mem_used_mib=1000,
            util_gpu_pct=0 if dead else 100, job_procs=0 if dead else 2,
        )])

    # -- crashes ------------------------------------------------------------------------------

    def crash_mid_step(self, who: str, down_for: int) -> None:
        """Kill `who` in its next step, after it persisted and before it acts."""
        self.parties[who].die_after_persist = True
        self.parties[who].down_for = down_for

    def crash(self, who: str, down_for: int) -> None:
        """Kill `who` now (SIGKILL: nothing after its last persist survives) and restart it from
        its snapshot `down_for` seconds later."""
        party = self.parties[who]
        if not party.online:
            return
        party.online = False
        self.log.append(f"{self.now - T0:6d} {who} crashed")
        if who == PROVIDER:
            self.job["life"] += 1
        if who == PROVIDER and self.job["started"] is not None and self.job["ended"] is None:
            self.job["ended"] = self.now  # the job dies with the node
            self.job["lost"] = True
        self.at(self.now + down_for, lambda: self._restart(who))

    def _restart(self, who: str) -> None:
        if (who == PROVIDER and self.faults.provider_gone_at is not None
                and self.now - T0 >= self.faults.provider_gone_at):
            return
        party = self.parties[who]
        assert party.snapshot is not None
        snaps = cbor.decode(party.snapshot, max_size=1 << 24)
        party.online = True
        self.log.append(f"{self.now - T0:6d} {who} restarted")
        actions: list[Action] = []
        if who == PROVIDER:
            self.desk = ProviderDesk(self.pctx)
            self.desk.publish(self.offer)
            for snap in snaps:
                r = ProviderRental.restore(self.pctx, snap, self.now)
                self.desk.by_nonce[r.neg.proposal.proposal.nonce] = r  # type: ignore[union-attr]
                if r.rental_id is not None:
                    self.desk.by_rental[r.rental_id] = r
                actions += r.on_restart(self.now)
        else:
            self.renter = RenterRental.restore(self.rctx, snaps[0], self.now)
        # Events mined while it was down are read from the chain at restart.
        for event in self._missed.pop(who, []):
            for e in self._engines(who):
                actions += e.on_chain(event, self.now)
        for e in self._engines(who):
            actions += e.poll(self.now)
        self._perform(who, actions)

    # -- what happened ------------------------------------------------------------------------

    def delivered(self) -> int:
        """Seconds of honest service: the job ran, on the promised GPU, alive."""
        start, end = self.job["started"], self.job["ended"]
        if start is None:
            return 0
        end = self.now if end is None else end
        f = self.faults
        for cut in (f.gpu_lie_at, f.job_dies_at, f.provider_gone_at):
            if cut is not None:
                end = min(end, T0 + cut)
        return max(0, end - start)

    def outcome(self) -> dict[str, int] | None:
        """(paid, refunded, deposit) once the rental is closed on chain."""
        r = self.rental()
        if r is None or r.rental_id is None:
            return None
        state = self.chain.rental_state(r.rental_id)
        if state.status is not Status.CLOSED:
            return None
        return {"paid": state.paid, "refunded": state.deposit - state.paid,
                "deposit": state.deposit}
