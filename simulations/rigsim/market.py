"""The simulated market: providers and renters running the real rental machines over a simulated
network, the escrow behind them, an offer book, demand, churn and adversaries.

What runs as the protocol's own code: every negotiation and usage step (`ProviderDesk`,
`ProviderRental`, `RenterRental`, with their messages encoded and decoded as on the wire), the
provider's acceptance policy and the renter's evidence check, the escrow's rules (the model, or
the contract on py-evm), the offer book (`insert`, `expire`, `query`), and the p2p decisions on
the overlay (`overlay.py`). What the simulator stands in for: the network (delays, loss, who is
reachable), time, the chain's blocks, the job runner and its telemetry, and the people: when a
renter wants GPU time and for how long, which offer it picks, what a provider charges, and who
cheats. The README lists each simplification.

Performing actions: the machines' persist-then-act rule needs no disk here; a crash takes the
engines' snapshots at that instant (what a node persisted before its last step) and a restart
restores them with the machines' own `restore`, as a node does from its ledger.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rigmesh.escrow.contract import default_escrow_address
from rigmesh.escrow.errors import EscrowError
from rigmesh.market.book import OfferBook
from rigmesh.market.offer import Gpu, Offer, Region, SignedOffer, bind_payee
from rigmesh.market.query import OfferQuery, Sort
from rigmesh.p2p import policy as p2p_policy
from rigmesh.p2p.score import ScoreConfig
from rigmesh.rental import messages as msg
from rigmesh.rental.actions import (
    Action,
    ChainEvent,
    Claimed,
    Fetch,
    Notice,
    Opened,
    PrepareFunding,
    Send,
    Settled,
    StartJob,
    StopJob,
    Submit,
    ToppedUp,
    chain_event,
)
from rigmesh.rental.codes import CloseReason
from rigmesh.rental.crypto import SIGNED, UNSIGNED, Crypto
from rigmesh.rental.evidence import TelemetrySample
from rigmesh.rental.messages import JobState
from rigmesh.rental.money import Budget, ClaimPolicy, provider_loss_bound, renter_loss_bound
from rigmesh.rental.negotiation import NegState, open_request_digest
from rigmesh.rental.policy import ProviderPolicy, RenterWants
from rigmesh.rental.provider import (
    SAMPLES_PER_GPU,
    ProviderContext,
    ProviderDesk,
    ProviderRental,
)
from rigmesh.rental.renter import RenterContext, RenterRental
from rigmesh.rental.timers import Timers
from rigmesh.rental.usage import UseState
from rigmesh.rental.workload import Workload
from rigmesh.wire import cbor, eip712, identity
from rigmesh.wire.errors import WireError
from rigsim.chain import Chain, ModelChain
from rigsim.loop import EventLoop
from rigsim.overlay import Overlay
from rigsim.scenario import PROVIDER_ADVERSARIES, Sampler, Scenario

CHAIN_ID = 31337
#: The simulated stablecoin (6 decimals, as USDC): a dollar is a million base units.
TOKEN = bytes.fromhex("e7f1725e7734ce288f8367e1bb143e90bb3f0512")
USD = 10**6
COUNTRIES = ("DE", "US", "FR", "NL", "FI", "CA", "JP", "SG")
#: What a renter's job is: one GPU, no inputs, busy (so an idle GPU counts as a dead job).
WORKLOAD = Workload("command", ("python3", "train.py"), 1, (), False, True)
_HB_OR_CLOSE = frozenset({msg.HEARTBEAT, msg.CLOSE})


def usd_per_hour(dollars: float) -> int:
    """$/GPU-hour as token base units per second (at least 1)."""
    return max(1, round(dollars * USD / 3600))


def _stream(seed: int, name: str) -> random.Random:
    # A stream per concern: changing one part of a scenario does not reshuffle the others.
    return random.Random(f"rigsim/{seed}/{name}")


@dataclass(slots=True)
class Job:
    started: int  # Unix seconds
    ended: int | None = None
    #: When the adversary's misbehaviour starts (a lie, the job's death, the provider's exit).
    cut: int | None = None
    lost: bool = False
    #: Seconds after the start at which the node's GPU sampler first reads (then every
    #: telemetry_interval).
    phase: int = 0


@dataclass(slots=True)
class RentalLog:
    """One funded rental, as the results report it."""

    rental_id: bytes
    demand: int
    provider: int
    renter: int
    provider_kind: str
    renter_kind: str
    offered: int  # the offer's price when the renter chose it (per second)
    price: int  # agreed, per second
    interval: int
    grace: int
    funded_at: int
    deposit: int = 0
    paid: int | None = None
    refunded: int | None = None
    settled_at: int | None = None
    ended_by: str = ""
    #: The longest time the provider was down while the rental was open.
    provider_down: int = 0


@dataclass(slots=True)
class ProvSlot:
    """A provider's side of one negotiation or rental, and what the simulator knows of it."""

    nonce: bytes
    demand: Demand
    attempt: int
    rental: ProviderRental
    wake: int | None = None
    job: Job | None = None
    #: Whether it counted against the listing's capacity when last looked at.
    active: bool = False
    #: When the job's telemetry was last sampled (Unix seconds).
    sampled_at: int | None = None


@dataclass
class ProviderNode:
    idx: int
    key: identity.PeerKey
    payee: eip712.EthKey
    ctx: ProviderContext
    desk: ProviderDesk
    gpus: int
    model: dict[str, Any]
    base_price: int
    price: int
    kind: str = ""
    online: bool = True
    vanished: bool = False
    offer: Offer | None = None
    binding: bytes = b""
    busy: int = 0
    listed: bool = True
    slots: dict[bytes, ProvSlot] = field(default_factory=dict)
    missed: list[tuple[bytes, ChainEvent]] = field(default_factory=list)
    snapshot: bytes | None = None
    down_since: int | None = None
    rentals_started: int = 0
    #: The payee's address (EthKey.address hashes the public key on every read).
    address: bytes = b""
    #: Which life of the node this is (one more at every crash).
    incarnation: int = 0


@dataclass
class RenterNode:
    idx: int
    key: identity.PeerKey
    kind: str = ""
    online: bool = True
    receipt_key: eip712.EthKey | None = None
    address: bytes = b""
    ctx: RenterContext | None = None
    ready_ms: int = 0
    demands: dict[int, Demand] = field(default_factory=dict)


@dataclass(slots=True)
class Demand:
    id: int
    renter: int
    arrival_ms: int
    seconds: int
    vram_mib: int
    max_price: int
    attempt: int = 0
    tried: set[int] = field(default_factory=set)
    #: The negotiation nonce of each attempt.
    nonces: dict[int, bytes] = field(default_factory=dict)
    engine: RenterRental | None = None
    provider: int = -1
    offered: int = 0
    wake: int | None = None
    snapshot: bytes | None = None
    funded_ms: int | None = None
    started_ms: int | None = None
    withhold_at: int | None = None
    outcome: str = ""  # "", "rented", or why it found no rental
    searching: bool = False


class Market:
    """One simulation run. `run()` plays it; `recorder` (metrics.py) reads what happened."""

    def __init__(self, sc: Scenario, *, chain: Chain | None = None,
                 tick: Callable[[int, int], None] | None = None) -> None:
        self.sc = sc
        seed = sc.seed
        self.signed = bool(sc["protocol.signed"])
        self.crypto: Crypto = SIGNED if self.signed else UNSIGNED
        self.loop = EventLoop(int(sc["run.start"]))
        self.chain: Chain = chain or ModelChain(
            CHAIN_ID, default_escrow_address(), TOKEN, check_signatures=self.signed
        )
        self.tick = tick
        self.rng = {name: _stream(seed, name) for name in (
            "setup", "demand", "net", "jobs", "churn", "adversaries", "overlay", "nonce")}
        hb, grace = int(sc["protocol.heartbeat"]), int(sc["protocol.grace"])
        self.timers = Timers(grace_seconds=grace,
                             challenge_window=int(sc["protocol.challenge_window"]))
        self.block_ms = int(sc["protocol.block_time"]) * 1000
        self.confirm_ms = int(sc["protocol.confirmations"]) * self.block_ms
        self.latency = float(sc["network.latency_ms"])
        self.jitter = float(sc["network.jitter_ms"])
        self.loss = float(sc["network.loss"])
        self.heartbeat = hb
        self.withdraw_when_full = bool(sc["providers.withdraw_when_full"])
        self.telemetry_every = int(sc["providers.telemetry_interval"])
        self.book = OfferBook(chain_id=self.chain.chain_id, escrows=[self.chain.escrow],
                              max_offers=10**7)
        self.duration_ms = int(sc["run.duration"]) * 1000
        self.draining = False

        from rigsim.metrics import Recorder  # here: metrics imports this module's types

        self.recorder = Recorder(self)
        self.rentals: dict[bytes, RentalLog] = {}
        #: Which demand, attempt and provider a rental id belongs to (known from its open).
        self.by_rental: dict[bytes, tuple[Demand, int, int]] = {}
        self.demands: list[Demand] = []
        self._blocks: dict[int, list[tuple[eip712.EthKey, Any, Submit]]] = {}
        self.counters: dict[str, int] = {}
        #: The job of every rental that ran one, by rental id.
        self.jobs: dict[bytes, Job] = {}
        #: Chain events a renter missed while down, by demand: read at its restart.
        self._missed_r: dict[int, list[ChainEvent]] = {}
        self._forged_cache: dict[int, bytes] = {}
        #: Rentals open on chain, and when the last one settled (for the end of a drain).
        self._unsettled = 0
        self._last_settled_ms = 0
        self._decided = 0
        self._build_peers()

    # -- set-up ------------------------------------------------------------------------------

    def _count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def _key(self, kind: str, i: int) -> bytes:
        return hashlib.sha256(f"rigsim/{self.sc.seed}/{kind}/{i}".encode()).digest()

    def _build_peers(self) -> None:
        sc, rng = self.sc, self.rng["setup"]
        n_prov, n_rent = int(sc["providers.count"]), int(sc["renters.count"])
        gpus = Sampler(sc["providers.gpus"])
        spread = Sampler(sc["providers.price_spread"])
        models = sc["providers.models"]
        weights = [m["share"] for m in models]
        policy = ProviderPolicy(timers=self.timers, min_grace=1, max_grace=3600,
                                min_challenge_window=60, max_challenge_window=7 * 86_400)
        claims = ClaimPolicy(claim_cost=0, min_interval=int(sc["protocol.claim_interval"]))
        self.providers: list[ProviderNode] = []
        for i in range(n_prov):
            key = identity.PeerKey(self._key("provider", i))
            payee = eip712.EthKey(self._key("payee", i))
            model = rng.choices(models, weights=weights)[0]
            base = usd_per_hour(model["price"])
            price = max(1, round(base * spread(rng)))
            ctx = ProviderContext(key, self.crypto, self.chain.chain_id, self.chain.escrow,
                                  policy, claims)
            p = ProviderNode(i, key, payee, ctx, ProviderDesk(ctx), max(1, int(gpus(rng))),
                             model, base, price, address=payee.address)
            self.providers.append(p)
        self.renters: list[RenterNode] = []
        for i in range(n_rent):
            self.renters.append(RenterNode(n_prov + i, identity.PeerKey(self._key("renter", i))))
        self._assign_adversaries()
        ids = [p.key.peer_id for p in self.providers] + [r.key.peer_id for r in self.renters]
        self._demanders = [r for r in self.renters if r.kind != "spam"]
        self.overlay = Overlay(
            ids, int(sc["network.degree"]), self.rng["overlay"], latency_ms=self.latency,
            jitter_ms=self.jitter, loss=self.loss, scores=ScoreConfig(),
        )
        for r in self.renters:
            if r.kind == "spam":
                self.overlay.relays[r.idx] = False

    def _assign_adversaries(self) -> None:
        sc, rng = self.sc, self.rng["adversaries"]
        order = list(range(len(self.providers)))
        rng.shuffle(order)
        at = 0
        for kind in PROVIDER_ADVERSARIES:
            n = round(float(sc[f"adversaries.{kind}"]) * len(order))
            for i in order[at:at + n]:
                self.providers[i].kind = kind
            at += n
        order = list(range(len(self.renters)))
        rng.shuffle(order)
        n_spam = round(float(sc["adversaries.spam"]) * (len(self.providers) + len(self.renters)))
        n_spam = min(n_spam, len(order))
        n_hold = min(round(float(sc["adversaries.withhold"]) * len(order)), len(order) - n_spam)
        for i in order[:n_spam]:
            self.renters[i].kind = "spam"
        for i in order[n_spam:n_spam + n_hold]:
            self.renters[i].kind = "withhold"

    def _renter_ctx(self, r: RenterNode) -> RenterContext:
        if r.ctx is None:
            r.receipt_key = eip712.EthKey(self._key("payer", r.idx))
            r.address = r.receipt_key.address
            r.ctx = RenterContext(r.key, r.receipt_key, r.address, self.crypto,
                                  self.chain.chain_id, self.chain.escrow)
        return r.ctx

    # -- running -----------------------------------------------------------------------------

    @property
    def now(self) -> int:
        return self.loop.now

    def run(self) -> None:
        sc, loop = self.sc, self.loop
        start = loop.start
        wallet = round(float(sc["renters.wallet"]) * USD)
        for r in self.renters:
            if r.kind != "spam":
                self._renter_ctx(r)
                assert r.receipt_key is not None
                self.chain.fund(r.receipt_key, wallet, start - 300)
                self.recorder.minted += wallet
        for p in self.providers:
            self.chain.fund(p.payee, 0, start - 300)  # gas, where gas costs
        self._schedule_traces()
        repub = float(sc["providers.republish"])
        for p in self.providers:
            self._publish(p)
            first = p2p_policy.first_run(self.rng["setup"], repub)  # as OfferGossip does
            loop.after(int(first * 1000), self._republish, p)
        if float(sc["demand.rate"]) > 0:
            self._next_demand()
        self._schedule_churn()
        for r in self.renters:
            if r.kind == "spam":
                loop.after(int(self.rng["adversaries"].random() * 1000), self._spam, r)
        loop.after(0, self._sample)
        loop.after(60_000, self._expire_book)
        loop.run(self.duration_ms, tick=self._tick)
        if sc["run.drain"]:
            self.draining = True
            limit = self.duration_ms + int(sc["run.drain_limit"]) * 1000
            loop.run(limit, stop=self._drained, tick=self._tick)
        self.recorder.finish()

    def _tick(self, ms: int) -> None:
        if self.tick is not None:
            self.tick(ms, self.duration_ms)

    def _drained(self) -> bool:
        """Every demand found a rental or gave up, every rental is settled on chain, and both
        parties had time to see the last settlement."""
        demands = self.demands
        while self._decided < len(demands) and demands[self._decided].outcome:
            self._decided += 1  # outcomes are final: each demand is looked at until decided
        return (
            self._unsettled == 0 and self._decided == len(demands)
            and self.loop.ms >= self._last_settled_ms + 2 * self.confirm_ms + 1000
        )

    def _expire_book(self) -> None:
        self.book.expire(self.now)
        self.loop.after(60_000, self._expire_book)

    def _sample(self) -> None:
        self.recorder.sample()
        if not self.draining or not self._drained():
            self.loop.after(int(self.sc["run.sample_interval"]) * 1000, self._sample)

    def delay(self) -> int | None:
        """A direct message's delay in ms (None: lost)."""
        rng = self.rng["net"]
        if self.loss and rng.random() < self.loss:
            return None
        return int(self.latency + (rng.random() * self.jitter if self.jitter else 0.0))

    # -- offers ------------------------------------------------------------------------------

    def _sign_offer(self, p: ProviderNode, offer: Offer) -> SignedOffer:
        if self.signed:
            return offer.sign(p.key)
        # Unsigned mode: the same canonical bytes with a zero signature, inserted without the
        # Ed25519 check (the book's `insert`), since every simulated provider is who it says.
        sig = bytes(64)
        return SignedOffer(offer, sig, cbor.encode({**offer.unsigned_wire(), "sig": sig}))

    def _publish(self, p: ProviderNode, *, withdraw: bool = False) -> None:
        """Sign and publish the provider's listing: the next seq, fresh times, its price; a
        withdrawal (capacity 0) when `withdraw`."""
        now = self.now
        ttl = int(self.sc["providers.offer_ttl"])
        if p.offer is None:
            if self.signed:
                p.binding = bind_payee(p.key.peer_id, p.payee)
            else:
                p.binding = bytes(65)
            m = p.model
            rng = self.rng["setup"]
            p.offer = Offer(
                provider=p.key.peer_id, listing=0, payee=p.address, payee_sig=p.binding,
                gpu=Gpu(m["model"], int(m["vram_mib"]), 1, "9.0", "570.133.20", "12.8"),
                cpu_cores=16, ram_mib=131_072, disk_gib=1000, bandwidth_mbps=10_000,
                region=Region(rng.choice(COUNTRIES), "zone-1"), price_per_second=p.price,
                chain_id=self.chain.chain_id, token=self.chain.token, escrow=self.chain.escrow,
                min_seconds=60, max_seconds=86_400, interruptible=False,
                heartbeat_seconds=self.heartbeat, capacity=p.gpus, seq=1, issued=now,
                expires=now + ttl,
            )
        else:
            p.offer = p.offer._replace(seq=p.offer.seq + 1, issued=now, expires=now + ttl,
                                       price_per_second=p.price)
        p.listed = not withdraw
        offer = p.offer._replace(capacity=0) if withdraw else p.offer
        signed = self._sign_offer(p, offer)
        if self.signed:
            self.book.ingest(signed.encoded, now)
        else:
            self.book.insert(signed, now)
        p.desk.publish(signed)
        self.recorder.published += 1
        if self._trace_due():
            self.overlay.flood(p.idx, self.loop.ms, len(signed.encoded))

    def _republish(self, p: ProviderNode) -> None:
        if p.vanished:
            return
        if p.online and p.listed:
            if self.sc["providers.pricing"] == "adaptive":
                self._adapt_price(p)
            self._publish(p)
        self.loop.after(int(float(self.sc["providers.republish"]) * 1000), self._republish, p)

    def _update_listing(self, p: ProviderNode) -> None:
        """A provider whose GPUs are all taken withdraws its listing, and lists it again when
        one frees (`providers.withdraw_when_full`): renters then see only offers they can get.
        An offer's capacity is the listing's concurrent rentals, not what is free now, so a
        full listing is withdrawn rather than re-advertised with less."""
        if not self.withdraw_when_full or not p.online:
            return
        active = sum(1 for r in p.desk.by_nonce.values() if r.active)
        if p.listed and active >= p.gpus:
            self._publish(p, withdraw=True)
        elif not p.listed and active < p.gpus:
            self._publish(p)

    def _adapt_price(self, p: ProviderNode) -> None:
        step = float(self.sc["providers.price_step"])
        floor = max(1, round(p.base_price * float(self.sc["providers.price_floor"])))
        if p.busy >= p.gpus:
            p.price = max(p.price + 1, round(p.price * (1 + step)))
        elif p.busy == 0:
            p.price = max(floor, min(p.price - 1, round(p.price * (1 - step))))

    def _schedule_traces(self) -> None:
        n = int(self.sc["network.traced_offers"])
        self._trace_every = self.duration_ms // n if n else 0
        self._next_trace = 0 if n else None

    def _trace_due(self) -> bool:
        """Trace the first publication at or after each of `traced_offers` evenly spaced
        moments of the run."""
        if self._next_trace is None or self.loop.ms < self._next_trace or self.draining:
            return False
        self._next_trace = self.loop.ms - self.loop.ms % self._trace_every + self._trace_every
        if self._next_trace >= self.duration_ms:
            self._next_trace = None
        return True

    # -- demand ------------------------------------------------------------------------------

    def _next_demand(self) -> None:
        rate = float(self.sc["demand.rate"]) / 3600.0
        gap = self.rng["demand"].expovariate(rate)
        at = self.loop.ms + max(1, int(gap * 1000))
        if at < self.duration_ms:
            self.loop.at(at, self._demand_arrives)

    def _demand_arrives(self) -> None:
        self._next_demand()
        rng, sc = self.rng["demand"], self.sc
        seconds = max(60, int(Sampler(sc["demand.duration"])(rng)))
        vram = int(Sampler(sc["demand.vram_mib"])(rng))
        max_price = usd_per_hour(Sampler(sc["demand.max_price"])(rng))
        d = Demand(len(self.demands), -1, self.loop.ms, seconds, vram, max_price)
        self.demands.append(d)
        r = self._pick_renter(rng)
        if r is None:
            d.outcome = "no_renter"
            return
        d.renter = r.idx
        r.demands[d.id] = d
        self._search(d)

    def _pick_renter(self, rng: random.Random) -> RenterNode | None:
        """A random online renter (not a spammer): drawn until one is up, so a pick costs the
        same at any size; after a few misses, a scan settles it."""
        pool = self._demanders
        if not pool:
            return None
        for _ in range(16):
            r = pool[rng.randrange(len(pool))]
            if r.online:
                return r
        up = [r for r in pool if r.online]
        return up[rng.randrange(len(up))] if up else None

    def _renter(self, d: Demand) -> RenterNode:
        return self.renters[d.renter - len(self.providers)]

    def _search(self, d: Demand) -> None:
        """Look for an offer and propose to it; retry later, or give up."""
        r = self._renter(d)
        d.searching = False
        if d.outcome:
            return
        if not r.online:
            d.searching = True  # resumed when the renter is back
            return
        if r.ready_ms > self.loop.ms:
            self.loop.at(r.ready_ms, self._search, d)
            return
        sc, now = self.sc, self.now
        patience_ms = int(sc["demand.patience"]) * 1000
        if d.attempt >= int(sc["demand.attempts"]):
            self._give_up(d, "attempts")
            return
        top = int(sc["demand.top"])
        found = self.book.query(
            OfferQuery(min_vram_mib=d.vram_mib, max_price_per_second=d.max_price,
                       token=self.chain.token, sort=Sort.PRICE, limit=top + len(d.tried)),
            now,
        )
        index = self.overlay.index
        options = [o for o in found if index[o.offer.provider] not in d.tried][:top]
        if not options:
            if self.loop.ms - d.arrival_ms + int(sc["demand.retry"]) * 1000 <= patience_ms:
                self.loop.after(int(sc["demand.retry"]) * 1000, self._search, d)
            else:
                self._give_up(d, "no_offer" if d.attempt == 0 else "refused")
            return
        chosen = options[0]
        if sc["demand.strategy"] == "random_top":
            chosen = options[self.rng["demand"].randrange(len(options))]
        ctx = self._renter_ctx(r)
        price = min(chosen.offer.price_per_second, d.max_price)
        budget = price * d.seconds
        deposit_s = int(sc["demand.deposit"])
        deposit = None if deposit_s <= 0 else price * min(deposit_s, d.seconds)
        if self.chain.balance_of(ctx.payer) < (deposit or budget):
            self._give_up(d, "no_money")
            return
        wants = RenterWants(workload=WORKLOAD, seconds=d.seconds, max_price=d.max_price,
                            budget=Budget(cap=budget), deposit=deposit, timers=self.timers)
        d.attempt += 1
        d.provider = index[chosen.offer.provider]
        d.tried.add(d.provider)
        d.offered = chosen.offer.price_per_second
        nonce = self.rng["nonce"].randbytes(16)
        d.nonces[d.attempt] = nonce
        d.engine = RenterRental(ctx, wants, chosen, nonce)
        d.wake = None
        self._count("proposals")
        self._act_r(d, d.engine.propose(now))

    def _give_up(self, d: Demand, why: str) -> None:
        d.outcome = why
        d.engine = None
        self._renter(d).demands.pop(d.id, None)

    # -- the renter's side -------------------------------------------------------------------

    def _act_r(self, d: Demand, actions: list[Action]) -> None:
        """Perform what a renter engine asked for, then see where its rental stands."""
        engine = d.engine
        assert engine is not None
        for a in actions:
            if isinstance(a, Send):
                delay = self.delay()
                if delay is not None:
                    self.loop.after(delay, self._at_provider, d, d.attempt, d.provider, a)
            elif isinstance(a, Submit):
                rid = a.op.terms.rental_id
                self.by_rental.setdefault(rid, (d, d.attempt, d.provider))
                r = self._renter(d)
                assert r.receipt_key is not None
                self._submit(r.receipt_key, ("r", d, d.attempt), a)
            elif isinstance(a, Notice):
                if a.kind == "funded" and d.funded_ms is None:
                    d.funded_ms = self.loop.ms
            elif isinstance(a, Fetch):
                engine.on_outputs(True, "")
            elif isinstance(a, PrepareFunding):
                self._prepare_funding(d, a)
        self._after_r(d)

    def _after_r(self, d: Demand) -> None:
        engine = d.engine
        if engine is None:
            return
        if engine.use is None and engine.neg.state in (NegState.REJECTED, NegState.EXPIRED):
            self._count("attempts_failed")
            d.engine = None
            self._search(d)
            return
        if engine.finished:
            self._ended(engine.rental_id, engine.use)
            d.engine = None
            self._renter(d).demands.pop(d.id, None)
            return
        self._wake_r(d)

    def _wake_r(self, d: Demand) -> None:
        assert d.engine is not None
        t = d.engine.next_wakeup()
        if t is None:
            return
        ms = max((t - self.loop.start) * 1000, self.loop.ms)
        if d.wake == ms:
            return
        # A wakeup that moved (later, as each heartbeat moves the renter's deadline) leaves the
        # old event stale: it is skipped, not polled (a poll before the wakeup does nothing).
        d.wake = ms
        self.loop.at(ms, self._poll_r, d, ms, d.attempt)

    def _poll_r(self, d: Demand, ms: int, attempt: int) -> None:
        if d.wake != ms or d.attempt != attempt or d.engine is None:
            return
        d.wake = None
        if not self._renter(d).online or self._withholding(d):
            return
        self._act_r(d, d.engine.poll(self.now))

    def _withholding(self, d: Demand) -> bool:
        return d.withhold_at is not None and self.now >= d.withhold_at

    def _prepare_funding(self, d: Demand, a: PrepareFunding) -> None:
        # The openFor branch: the renter signs an OpenRequest (real EIP-712 when signed).
        r = self._renter(d)
        assert r.receipt_key is not None and d.engine is not None
        nonce = self.chain.nonce_of(r.address)
        deadline = self.now + 300
        fund = msg.Fund(a.rental_id, nonce, deadline, b"", None)
        digest = open_request_digest(a.terms, fund, self.chain.chain_id, self.chain.escrow)
        sig = self.crypto.sign_digest(r.receipt_key, digest)
        self._act_r(d, d.engine.on_funding(nonce, deadline, sig, None, self.now))

    def _at_renter(self, p: ProviderNode, slot: ProvSlot, send: Send) -> None:
        """A heartbeat or close from the provider arrives at the renter."""
        d = slot.demand
        r = self._renter(d)
        if not r.online or not p.online or self._withholding(d):
            return
        engine = d.engine
        if engine is None or d.attempt != slot.attempt:
            return
        now = self.now
        try:
            decoded = msg.read_any(send.message, _HB_OR_CLOSE)
            reply, actions = engine.on_request(decoded, now)
        except WireError as exc:
            self._count("refused")
            self._count(f"refused_{exc.code.name}")
            return
        if d.started_ms is None and isinstance(decoded, tuple):
            d.started_ms = self.loop.ms
            if r.kind == "withhold":
                d.withhold_at = now + int(d.seconds * self.rng["adversaries"].uniform(0.1, 0.9))
        self._act_r(d, actions)
        delay = self.delay()
        if delay is not None:
            self.loop.after(delay, self._answer_at_provider, p, slot, send.key, reply)

    def _answer_at_renter(self, d: Demand, attempt: int, key: str, reply: bytes) -> None:
        if d.attempt != attempt or d.engine is None or not self._renter(d).online:
            return
        if self._withholding(d):
            return
        try:
            actions = d.engine.on_response(key, reply, self.now)
        except WireError:
            self._count("bad_answers")
            actions = []
        self._act_r(d, actions)

    # -- the provider's side -----------------------------------------------------------------

    def _at_provider(self, d: Demand, attempt: int, provider: int, send: Send) -> None:
        """A renter's request arrives at the provider it was sent to; its answer goes back."""
        p = self.providers[provider]
        r = self._renter(d)
        if not p.online or not r.online:
            return  # unreachable: the renter's outbox tries again
        try:
            reply, actions, _ = p.desk.on_request(r.key.peer_id, send.message, self.now)
        except WireError as exc:
            self._count("refused")
            self._count(f"refused_{exc.code.name}")
            return
        slot = self._slot(p, d, attempt)
        if slot is not None:
            self._act_p(p, slot, actions)
        delay = self.delay()
        if delay is not None:
            self.loop.after(delay, self._answer_at_renter, d, attempt, send.key, reply)

    def _slot(self, p: ProviderNode, d: Demand, attempt: int) -> ProvSlot | None:
        """The provider's slot for one of the demand's negotiations (made on its proposal; a
        late one of an attempt the renter gave up on still runs to its end at the provider)."""
        nonce = d.nonces[attempt]
        slot = p.slots.get(nonce)
        rental = p.desk.by_nonce.get(nonce)
        if rental is None:
            return slot
        if slot is None:
            slot = p.slots[nonce] = ProvSlot(nonce, d, attempt, rental)
        slot.rental = rental
        return slot

    def _act_p(self, p: ProviderNode, slot: ProvSlot, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, Send):
                delay = self.delay()
                if delay is not None:
                    self.loop.after(delay, self._at_renter, p, slot, a)
            elif isinstance(a, Submit):
                self._submit(p.payee, ("p", p, slot.nonce), a)
            elif isinstance(a, StartJob):
                self._start_job(p, slot)
            elif isinstance(a, StopJob):
                self.loop.after(0, self._end_job, p, slot, JobState.STOPPED)
        active = slot.rental.active
        if slot.rental.finished:
            self._ended(slot.rental.rental_id, slot.rental.use)
            p.slots.pop(slot.nonce, None)
            p.desk.forget_finished()
        else:
            self._wake_p(p, slot)
        if active != slot.active:  # only then can the listing's load have changed
            slot.active = active
            self._update_listing(p)

    def _wake_p(self, p: ProviderNode, slot: ProvSlot) -> None:
        t = slot.rental.next_wakeup()
        if t is None:
            return
        ms = max((t - self.loop.start) * 1000, self.loop.ms)
        if slot.wake == ms:
            return
        slot.wake = ms  # an event for an older wakeup is skipped when it comes
        self.loop.at(ms, self._poll_p, p, slot, ms)

    def _poll_p(self, p: ProviderNode, slot: ProvSlot, ms: int) -> None:
        if slot.wake != ms or p.slots.get(slot.nonce) is not slot:
            return
        slot.wake = None
        if not p.online:
            return
        self._telemetry(p, slot)
        self._act_p(p, slot, slot.rental.poll(self.now))

    def _answer_at_provider(self, p: ProviderNode, slot: ProvSlot, key: str,
                            reply: bytes) -> None:
        if not p.online or p.slots.get(slot.nonce) is not slot:
            return
        try:
            actions = slot.rental.on_response(key, reply, self.now)
        except WireError:
            self._count("bad_answers")
            actions = []
        self._act_p(p, slot, actions)

    # -- jobs --------------------------------------------------------------------------------

    def _start_job(self, p: ProviderNode, slot: ProvSlot) -> None:
        if p.kind == "never_start":
            return
        delay = Sampler(self.sc["providers.job_start"])(self.rng["jobs"])
        self.loop.after(int(delay * 1000), self._job_started, p, slot, p.incarnation)

    def _job_started(self, p: ProviderNode, slot: ProvSlot, incarnation: int) -> None:
        if incarnation != p.incarnation:
            return  # the node died while the runner was starting it: the start died with it
        if not p.online or slot.job is not None or p.slots.get(slot.nonce) is not slot:
            return
        use = slot.rental.use
        if use is None or use.state is not UseState.STARTING:
            # The rental ended between StartJob and the job coming up (a close read from the
            # chain at a restart, say): the engine answers the start with StopJob, so the job
            # never runs; counted.
            acts = slot.rental.on_job_started(self.now)
            assert any(isinstance(a, StopJob) for a in acts), "a late job must be stopped"
            self._count("late_starts")
            return
        now = self.now
        job = slot.job = Job(now, phase=self.rng["jobs"].randrange(self.telemetry_every))
        if slot.rental.rental_id is not None:
            self.jobs[slot.rental.rental_id] = job
        p.busy += 1
        p.rentals_started += 1
        seconds = slot.demand.seconds
        rng = self.rng["adversaries"]
        if p.kind in ("gpu_lie", "job_dead") or (p.kind == "vanish" and p.rentals_started == 1):
            job.cut = now + max(1, int(seconds * rng.uniform(0.1, 0.9)))
            if p.kind == "vanish":
                self.loop.at_second(job.cut, self._vanish, p)
        self._telemetry(p, slot)
        self._act_p(p, slot, slot.rental.on_job_started(now))

    def _end_job(self, p: ProviderNode, slot: ProvSlot, state: int) -> None:
        job = slot.job
        if job is None or job.ended is not None or not p.online:
            return
        job.ended = self.now
        p.busy -= 1
        if p.slots.get(slot.nonce) is slot:
            self._act_p(p, slot, slot.rental.on_job_ended(state, None, (), self.now))

    def _telemetry(self, p: ProviderNode, slot: ProvSlot) -> None:
        job = slot.job
        if job is None:
            return
        # The node's sampler reads NVML every `telemetry_interval` seconds of the job's life:
        # a heartbeat carries what it read last, so a failure shows in the evidence up to one
        # sampling interval late (what a renter may pay for and not get, within its bound).
        # The sampler reads the GPU when the job starts, then every `every` seconds at its own
        # phase (not the heartbeats'): the newest sample in a heartbeat is up to `every` old.
        every, now = self.telemetry_every, self.now
        base = job.started + job.phase
        times = [] if now < base else list(
            range(base + max(0, (now - base) // every - SAMPLES_PER_GPU) * every, now + 1, every)
        )
        times = [job.started, *times]
        if slot.sampled_at is not None:
            times = [t for t in times if t > slot.sampled_at]
        times = times[-SAMPLES_PER_GPU:]  # the node keeps the newest 4
        if not times:
            return
        latest = times[-1]
        slot.sampled_at = latest
        m = p.model
        uuid = f"GPU-{p.idx}-{slot.nonce.hex()[:8]}"
        samples = []
        for at in times:
            cut = job.cut is not None and at >= job.cut
            lying = p.kind == "gpu_lie" and cut
            dead = (job.ended is not None and at >= job.ended) or (p.kind == "job_dead" and cut)
            # Every reading NVML gives, as a node's sampler reports them (telemetry.md).
            samples.append(TelemetrySample(
                t_ms=at * 1000, gpu_index=0, uuid=uuid,
                name="NVIDIA A10" if lying else m["model"],
                mem_total_mib=23_028 if lying else int(m["vram_mib"]), mem_used_mib=1000,
                util_gpu_pct=0 if dead else 100, util_mem_pct=0 if dead else 40, temp_c=60,
                power_mw=90_000 if dead else 600_000, sm_clock_mhz=1980, mem_clock_mhz=2619,
                job_procs=0 if dead else 2,
            ))
        slot.rental.on_telemetry(samples)

    def _vanish(self, p: ProviderNode) -> None:
        """A provider that goes dark for good: its jobs stop with it, its offers linger."""
        if p.vanished:
            return
        if p.online:
            self._go_down(p)
        p.vanished = True
        self._count("vanished")

    # -- the chain ---------------------------------------------------------------------------

    def _submit(self, key: eip712.EthKey, owner: tuple[Any, ...], submit: Submit) -> None:
        """Into the next block."""
        block = (self.loop.ms // self.block_ms + 1) * self.block_ms
        pending = self._blocks.get(block)
        if pending is None:
            pending = self._blocks[block] = []
            self.loop.at(block, self._mine, block)
        pending.append((key, owner, submit))

    def _owner_up(self, owner: tuple[Any, ...]) -> bool:
        if owner[0] == "p":
            p = owner[1]
            return bool(p.online) and owner[2] in p.slots
        d, attempt = owner[1], owner[2]
        return self._renter(d).online and d.attempt == attempt and d.engine is not None and (
            not self._withholding(d)
        )

    def _mine(self, block: int) -> None:
        for key, owner, submit in self._blocks.pop(block):
            if not self._owner_up(owner):
                continue  # a node that is down sends nothing; its restart submits again
            try:
                at, events = self.chain.execute(key, submit.op, self.now)
            except EscrowError as exc:
                self._count(f"reverted_{type(exc).__name__}")
                self._report(owner, submit.op_id, ok=False, error=type(exc).__name__)
                continue
            self._count("transactions")
            self._report(owner, submit.op_id, ok=True)
            for e in events:
                ce = chain_event(e, at)
                if ce is not None:
                    self._on_event(ce)

    def _report(self, owner: tuple[Any, ...], op_id: str, *, ok: bool, error: str = "") -> None:
        if owner[0] == "p":
            p, nonce = owner[1], owner[2]
            slot = p.slots.get(nonce)
            if slot is not None:
                self._act_p(p, slot, slot.rental.on_submitted(op_id, self.now, ok=ok,
                                                              error=error))
        else:
            d = owner[1]
            if d.engine is not None:
                self._act_r(d, d.engine.on_submitted(op_id, self.now, ok=ok, error=error))

    def _on_event(self, ce: ChainEvent) -> None:
        owner = self.by_rental.get(ce.rental_id)
        if owner is None:
            return
        d, attempt, provider = owner
        if isinstance(ce, Opened):
            self._opened(d, provider, ce)
        elif isinstance(ce, ToppedUp):
            self.rentals[ce.rental_id].deposit = ce.deposit
        elif isinstance(ce, Claimed):
            claimed = self.recorder.claimed
            claimed[ce.rental_id] = max(claimed.get(ce.rental_id, 0), ce.paid)
        elif isinstance(ce, Settled):
            self._settled(ce)
        self.loop.after(self.confirm_ms, self._event_to_renter, d, attempt, ce)
        self.loop.after(self.confirm_ms, self._event_to_provider, self.providers[provider],
                        d.nonces[attempt], ce)

    def _opened(self, d: Demand, provider: int, ce: Opened) -> None:
        p = self.providers[provider]
        t = ce.terms
        # Every offer states the scenario's heartbeat interval, and a counter never changes it.
        self.rentals[ce.rental_id] = RentalLog(
            ce.rental_id, d.id, p.idx, d.renter, p.kind or "honest",
            self._renter(d).kind or "honest", d.offered, t.price_per_second, self.heartbeat,
            self.timers.grace_seconds, ce.opened_at, deposit=t.deposit,
        )
        d.outcome = "rented"
        self._unsettled += 1
        self.recorder.matched(d)

    def _ended(self, rental_id: bytes | None, use: Any) -> None:
        """Why a rental ended, as the first of its parties to finish with it saw it."""
        log = self.rentals.get(rental_id or b"")
        if log is not None and not log.ended_by and use is not None:
            reason = use.ended_by()
            log.ended_by = "" if reason is None else reason.name

    def _settled(self, ce: Settled) -> None:
        log = self.rentals.get(ce.rental_id)
        if log is None:
            return
        log.paid, log.refunded, log.settled_at = ce.to_provider, ce.to_renter, self.now
        self._unsettled -= 1
        self._last_settled_ms = self.loop.ms

    def _event_to_renter(self, d: Demand, attempt: int, ce: ChainEvent) -> None:
        if d.attempt != attempt or d.engine is None:
            return
        if not self._renter(d).online:
            self._missed_r.setdefault(d.id, []).append(ce)
            return
        if self._withholding(d):
            return
        self._act_r(d, d.engine.on_chain(ce, self.now))

    def _event_to_provider(self, p: ProviderNode, nonce: bytes, ce: ChainEvent) -> None:
        if p.vanished:
            return
        if not p.online:
            p.missed.append((nonce, ce))
            return
        slot = p.slots.get(nonce)
        if slot is not None:
            self._act_p(p, slot, slot.rental.on_chain(ce, self.now))

    # -- churn -------------------------------------------------------------------------------

    def _schedule_churn(self) -> None:
        sc, rng = self.sc, self.rng["churn"]
        share = float(sc["churn.share"])
        online = Sampler(sc["churn.online"])
        peers: list[ProviderNode | RenterNode] = [*self.providers, *self.renters]
        if share > 0:
            for peer in peers:
                if rng.random() < share:
                    self.loop.after(int(online(rng) * 1000), self._churn_down, peer, True)
        at = int(sc["churn.storm_at"])
        if at >= 0:
            down = Sampler(sc["churn.storm_down"])
            for peer in peers:
                if rng.random() < float(sc["churn.storm_share"]):
                    self.loop.at(at * 1000, self._storm, peer, int(down(rng) * 1000))

    def _storm(self, peer: ProviderNode | RenterNode, down_ms: int) -> None:
        if peer.online and not getattr(peer, "vanished", False):
            self._go_down(peer)
            self.loop.after(down_ms, self._come_back, peer, False)

    def _churn_down(self, peer: ProviderNode | RenterNode, again: bool) -> None:
        if self.draining:
            return
        rng = self.rng["churn"]
        if peer.online and not getattr(peer, "vanished", False):
            self._go_down(peer)
            off = Sampler(self.sc["churn.offline"])(rng)
            self.loop.after(max(1000, int(off * 1000)), self._come_back, peer, again)

    def _go_down(self, peer: ProviderNode | RenterNode) -> None:
        """A crash: the process is gone; what it persisted is its engines' state now."""
        peer.online = False
        self.overlay.online[peer.idx] = False
        self._count("crashes")
        now = self.now
        if isinstance(peer, ProviderNode):
            peer.down_since = now
            peer.incarnation += 1
            snaps = []
            for slot in peer.slots.values():
                snaps.append(slot.rental.snapshot())
                slot.wake = None
                job = slot.job
                if job is not None and job.ended is None:
                    job.ended, job.lost = now, True  # a node's death ends its jobs
                    peer.busy -= 1
            peer.snapshot = cbor.encode(snaps)
        else:
            for d in peer.demands.values():
                d.wake = None
                d.snapshot = None if d.engine is None else cbor.encode(d.engine.snapshot())

    def _come_back(self, peer: ProviderNode | RenterNode, again: bool) -> None:
        if getattr(peer, "vanished", False):
            return
        peer.online = True
        self.overlay.online[peer.idx] = True
        mono = self.loop.ms / 1000
        self.overlay.redial(peer.idx, mono)
        now = self.now
        if isinstance(peer, ProviderNode):
            self._provider_back(peer)
        else:
            took = self.overlay.join_sync(peer.idx, self.book, self.chain.chain_id, now, mono)
            peer.ready_ms = self.loop.ms + int(took or 0)
            self._renter_back(peer)
        if again and not self.draining:
            rng = self.rng["churn"]
            up = Sampler(self.sc["churn.online"])(rng)
            self.loop.after(max(1000, int(up * 1000)), self._churn_down, peer, True)

    def _provider_back(self, p: ProviderNode) -> None:
        now = self.now
        assert p.down_since is not None
        down = now - p.down_since
        for slot in p.slots.values():
            log = self.rentals.get(slot.rental.rental_id or b"")
            if log is not None and log.settled_at is None:
                log.provider_down = max(log.provider_down, down)
        p.desk = ProviderDesk(p.ctx)
        self._publish(p)  # a restarted node re-signs its offer (withdrawn again when full)
        snaps = cbor.decode(p.snapshot or cbor.encode([]), max_size=1 << 30)
        by_nonce = {s.nonce: s for s in p.slots.values()}
        actions: list[tuple[ProvSlot, list[Action]]] = []
        for snap in snaps:
            r = ProviderRental.restore(p.ctx, snap, now)
            nonce = r.neg.proposal.proposal.nonce  # type: ignore[union-attr]
            p.desk.by_nonce[nonce] = r
            if r.rental_id is not None:
                p.desk.by_rental[r.rental_id] = r
            slot = by_nonce[nonce]
            slot.rental = r
            actions.append((slot, r.on_restart(now)))
        missed, p.missed = p.missed, []
        for nonce, ce in missed:
            slot = p.slots.get(nonce)
            if slot is not None:
                actions.append((slot, slot.rental.on_chain(ce, now)))
        for slot in list(p.slots.values()):
            actions.append((slot, slot.rental.poll(now)))
        for slot, acts in actions:
            if p.slots.get(slot.nonce) is slot:
                self._act_p(p, slot, acts)

    def _renter_back(self, r: RenterNode) -> None:
        now = self.now
        ctx = self._renter_ctx(r)
        for d in list(r.demands.values()):
            if d.snapshot is not None and d.engine is not None:
                d.engine = RenterRental.restore(ctx, cbor.decode(d.snapshot, max_size=1 << 24),
                                                now)
                d.snapshot = None
                actions: list[Action] = []
                for ce in self._missed_r.pop(d.id, []):
                    actions += d.engine.on_chain(ce, now)
                actions += d.engine.poll(now)
                self._act_r(d, actions)
            elif d.searching:
                self._search(d)

    # -- spam --------------------------------------------------------------------------------

    def _spam(self, r: RenterNode) -> None:
        if self.draining:
            return
        rate = float(self.sc["adversaries.spam_rate"])
        mono = self.loop.ms / 1000
        if r.online:
            if not self.overlay.adj[r.idx]:
                self.overlay.redial(r.idx, mono)
            forged = self._forged(r)
            self.overlay.spam_round(r.idx, forged, self.now, mono)
        self.loop.after(max(1, int(1000 / rate)), self._spam, r)

    def _forged(self, r: RenterNode) -> bytes:
        """A well-formed offer in the spammer's name with a zero signature: the decoder refuses
        it at the signature (BadSignature), after every cheap check passed."""
        cache = self._forged_cache
        data = cache.get(r.idx)
        if data is None:
            m = self.sc["providers.models"][0]
            now = self.now
            offer = Offer(
                provider=r.key.peer_id, listing=0, payee=bytes(20), payee_sig=bytes(65),
                gpu=Gpu(m["model"], int(m["vram_mib"]), 1, "9.0", "570.133.20", "12.8"),
                cpu_cores=16, ram_mib=131_072, disk_gib=1000, bandwidth_mbps=10_000,
                region=Region("DE", "zone-1"), price_per_second=1, chain_id=self.chain.chain_id,
                token=self.chain.token, escrow=self.chain.escrow, min_seconds=60,
                max_seconds=86_400, interruptible=False, heartbeat_seconds=self.heartbeat,
                capacity=1, seq=1, issued=now, expires=now + 86_000,
            )
            data = cache[r.idx] = cbor.encode({**offer.unsigned_wire(), "sig": bytes(64)})
        return data

    # -- results -----------------------------------------------------------------------------

    def losses(self, log: RentalLog) -> dict[str, Any]:
        """A settled rental's honest-party losses and their bounds (spec/rental.md 10)."""
        p = self.providers[log.provider]
        d = self.demands[log.demand]
        slot_job = self.jobs.get(log.rental_id)
        ran = delivered = 0
        if slot_job is not None:
            end = slot_job.ended if slot_job.ended is not None else self.now
            ran = max(0, end - slot_job.started)
            cut_end = end if slot_job.cut is None else min(end, slot_job.cut)
            delivered = max(0, cut_end - slot_job.started)
        paid = log.paid or 0
        out: dict[str, Any] = {
            "ran": ran, "delivered": delivered,
            "renter_loss": max(0, paid - log.price * delivered),
            "renter_bound": renter_loss_bound(log.price, log.interval),
            "provider_loss": max(0, log.price * ran - paid),
            "provider_bound": provider_loss_bound(log.price, log.interval, log.grace),
        }
        # The provider's bound holds while its node is up to settle (spec/rental.md 10).
        window = int(self.sc["protocol.challenge_window"])
        out["provider_bound_applies"] = (
            p.kind == "" and log.provider_down < window - log.interval - log.grace
        )
        out["renter_bound_applies"] = self._renter(d).kind == ""
        return out


__all__ = ["CloseReason", "Market", "UseState"]
