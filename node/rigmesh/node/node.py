"""The node: the rental engines inside a trio shell that does their I/O.

``async with open_node(config) as node:`` composes, as children of one nursery: the ledger and
its group-commit writer, the libp2p network, the offer book (persisted), gossip and peer exchange,
the node's escrow client and a chain watcher, the rental engines' driver and their timers, and
for a provider its offers, its job runner and its jobs. Leaving the block cancels the nursery: a
provider first withdraws its offers; every job is stopped, every thread and socket closed.

The driver (`Node.step`) is the one way an engine is touched: under the rental's lock, the engine
takes an event and returns actions; the engine's snapshot and records are written to the ledger
and only then are the actions performed (a request sent, an answer given, a transaction
submitted, a job started or stopped). Whatever crashes the node at any moment, the ledger holds
everything it had sent or acknowledged (rigmesh.node.faults names the moments a test kills it).
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import logging
import random
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import trio
from web3 import Web3

from rigmesh.chain.devnet import EmbeddedChain
from rigmesh.chain.watcher import Applied, ChainWatcher
from rigmesh.escrow.client import AsyncEscrowClient, EscrowClient, limiter_for
from rigmesh.escrow.errors import EscrowError
from rigmesh.escrow.model import ETH
from rigmesh.exec import Isolation, Runner, SubprocessRunner, choose_runner
from rigmesh.exec.gpu import GpuInventory, ProbeResult, ReplayNvml, probe
from rigmesh.exec.telemetry import NvmlSampler
from rigmesh.market.book import OfferBook
from rigmesh.market.listing import Listing, Market, OfferBuilder
from rigmesh.market.offer import SignedOffer
from rigmesh.node.config import NodeConfig
from rigmesh.node.faults import Faults
from rigmesh.node.jobs import Jobs
from rigmesh.p2p.gossip import GossipConfig, OfferGossip
from rigmesh.p2p.host import Libp2pNetwork, open_libp2p_network
from rigmesh.p2p.network import (
    NEGOTIATE_PROTOCOL,
    USAGE_PROTOCOL,
    NetworkError,
)
from rigmesh.p2p.peers import PeerExchange
from rigmesh.rental import messages as msg
from rigmesh.rental.actions import (
    Action,
    ChainEvent,
    Channel,
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
)
from rigmesh.rental.crypto import SIGNED
from rigmesh.rental.evidence import TelemetrySample
from rigmesh.rental.messages import Permit
from rigmesh.rental.negotiation import NegState
from rigmesh.rental.policy import RenterWants
from rigmesh.rental.provider import ProviderContext, ProviderDesk, ProviderRental
from rigmesh.rental.renter import RenterContext, RenterRental
from rigmesh.rental.usage import UseState
from rigmesh.rental.workload import FileDigest
from rigmesh.store.ledger import Ledger, LedgerWriter, RentalWrite
from rigmesh.store.offers import OfferStore
from rigmesh.wire.errors import UnexpectedMessage, UnknownProtocol, WireError
from rigmesh.wire.identity import peer_id_to_text

log = logging.getLogger(__name__)

PROTOCOLS = {Channel.NEGOTIATE: NEGOTIATE_PROTOCOL, Channel.USAGE: USAGE_PROTOCOL}
#: Request and response size limits of the two rental protocols.
NEGOTIATE_LIMIT = msg.MAX_AGREEMENT_SIZE
USAGE_LIMIT = 64 * 1024
RESPONSE_LIMIT = 1024 * 1024
REQUEST_TIMEOUT = 10.0
#: How often the offer book's changes are written to disk.
OFFER_FLUSH = 1.0
#: How often a renter fetches a running job's output.
OUTPUT_POLL = 1.0

Engine = ProviderRental | RenterRental


@dataclass(frozen=True)
class NodeEvent:
    """What the node tells whoever runs it: a rental's notice (funded, closed, low balance, ...)
    or job output (kind "output")."""

    rental: bytes
    kind: str
    text: str
    at: int


class Node:
    """One running node. Use `open_node`."""

    def __init__(self, config: NodeConfig, net: Libp2pNetwork, ledger: Ledger,
                 escrow: AsyncEscrowClient) -> None:
        self.config = config
        self.keys = config.keys
        self.net = net
        self.ledger = ledger
        self.writer = LedgerWriter(ledger)
        self.escrow = escrow
        self.faults = Faults(config.faults)
        chain = config.chain
        self.chain_id, self.escrow_address, self.token = chain.chain_id, chain.escrow, chain.token
        self.book = OfferBook(chain_id=chain.chain_id, escrows=[chain.escrow])
        self.store = OfferStore(config.home / "offers.sqlite3", flush_every=None)
        self.gossip = OfferGossip(
            net, self.book, GossipConfig(chain_id=chain.chain_id), clock=self.now,
            rng=random.Random(), signer=self.keys.peer,
        )
        self.peers = PeerExchange(net, target=config.target_peers, penalize=self.gossip.penalize)
        self.watcher = ChainWatcher(escrow, ledger, self._on_chain,
                                    confirmations=chain.confirmations, poll=chain.poll,
                                    start_block=chain.start_block)
        self.renter_ctx = RenterContext(
            self.keys.peer, self.keys.account, self.keys.account.address, SIGNED,
            chain.chain_id, chain.escrow, config.renter.evidence,
        )
        self.desk: ProviderDesk | None = None
        self.jobs: Jobs | None = None
        self.runner: Runner | None = None
        self.builder: OfferBuilder | None = None
        self.listings: tuple[Listing, ...] = ()
        self.renters: dict[bytes, RenterRental] = {}
        self.inputs: dict[bytes, dict[str, bytes]] = {}
        self.by_rental: dict[bytes, bytes] = {}
        self._locks: dict[bytes, trio.Lock] = {}
        self._desk_lock = trio.Lock()
        self._wakeups: dict[bytes, int] = {}
        self._heap: list[tuple[int, bytes]] = []
        self._wake = trio.Event()
        self._stepped = trio.Event()  # set (and replaced) after each persisted step
        self._subscribers: list[trio.MemorySendChannel[NodeEvent]] = []
        self._nursery: trio.Nursery | None = None
        self.output_offsets: dict[bytes, int] = {}

    # -- time and identity ----------------------------------------------------------------------

    def now(self) -> int:
        """Chain-anchored seconds: the wall clock, never behind the newest block seen. A chain
        stamps a block no earlier than the wall clock and later than its parent, so the next
        block is never before this: uptime measured on it never exceeds what the escrow counts
        (when a burst of blocks runs the chain ahead, this clock waits for the wall to catch up,
        as the chain's does)."""
        return max(int(time.time()), self.watcher.chain_time)

    @property
    def peer_id(self) -> bytes:
        return self.keys.peer.peer_id

    def addrs(self) -> list[str]:
        return self.net.addrs()

    # -- engines ----------------------------------------------------------------------------------

    def engine(self, key: bytes) -> Engine | None:
        if self.desk is not None and key in self.desk.by_nonce:
            return self.desk.by_nonce[key]
        return self.renters.get(key)

    def rentals(self) -> dict[bytes, Engine]:
        out: dict[bytes, Engine] = dict(self.renters)
        if self.desk is not None:
            out.update(self.desk.by_nonce)
        return out

    def _lock(self, key: bytes) -> trio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = trio.Lock()
        return lock

    async def step(self, key: bytes, fn: Callable[[Engine], Any]) -> bytes | None:
        """Give an event to rental `key`'s engine, persist, then act. Returns the reply of a
        request (None for other events). A `WireError` (the peer's fault) propagates; so does
        `LocalProtocolError` (ours: a bug, loudly)."""
        async with self._lock(key):
            engine = self.engine(key)
            if engine is None:
                return None
            was_active = isinstance(engine, ProviderRental) and engine.active
            result = fn(engine)
            reply, actions = (result if isinstance(result, tuple) else (None, result or []))
            await self._persist(key, engine, actions)
        self._act(key, actions)
        if was_active and not engine.active:  # type: ignore[union-attr]
            self._nursery.start_soon(self._publish_offers)  # type: ignore[union-attr]
        return reply

    async def _persist(self, key: bytes, engine: Engine, actions: list[Action]) -> None:
        records = tuple((a.kind, a.data) for a in actions if isinstance(a, Record))
        rid = engine.rental_id
        if rid is not None:
            self.by_rental[rid] = key
        use = engine.use
        state = (f"usage:{use.state.value}" if use is not None
                 else f"negotiation:{engine.neg.state.value}")
        ended = None if use is None or use.state is not UseState.CLOSED else use.ended_by()
        role = "provider" if isinstance(engine, ProviderRental) else "renter"
        peer = engine.renter if isinstance(engine, ProviderRental) else engine.provider
        await self.writer.persist([RentalWrite(
            key, role, peer, rid, state, None if ended is None else int(ended),
            engine.snapshot(), records,
        )])
        for kind, _ in records:
            self.faults.hit(f"after-persist:{kind}")
        self._stepped.set()
        self._stepped = trio.Event()
        t = engine.next_wakeup()
        if t is None:
            self._wakeups.pop(key, None)
        elif self._wakeups.get(key) != t:
            self._wakeups[key] = t
            heapq.heappush(self._heap, (t, key))
            self._wake.set()

    def _act(self, key: bytes, actions: list[Action]) -> None:
        nursery = self._nursery
        assert nursery is not None
        for a in actions:
            if isinstance(a, Send):
                nursery.start_soon(self._send, key, a)
            elif isinstance(a, Submit):
                nursery.start_soon(self._submit, key, a)
            elif isinstance(a, Notice):
                self._notify(key, a.kind, a.text)
            elif isinstance(a, StartJob):
                log.debug("rental %s: starting its job", key.hex()[:8])
                if self.jobs is not None:
                    self.jobs.start(a.rental_id, a.workload, a.wall_clock_s)
            elif isinstance(a, StopJob):
                if self.jobs is not None:
                    self.jobs.stop(a.rental_id)
            elif isinstance(a, Upload):
                nursery.start_soon(self._upload, key, a)
            elif isinstance(a, Fetch):
                nursery.start_soon(self._fetch_results, key, a)
            elif isinstance(a, PrepareFunding):
                nursery.start_soon(self._prepare_funding, key, a)
        if self.desk is not None and any(isinstance(a, StartJob | StopJob) for a in actions):
            self._nursery.start_soon(self._publish_offers)  # type: ignore[union-attr]

    async def _store_offers(self) -> None:
        """The book's changes to disk once a second, from a worker thread (never on the loop)."""
        while True:
            await trio.sleep(OFFER_FLUSH)
            batch = self.store.take()
            if batch:
                await trio.to_thread.run_sync(self.store.write, batch)

    async def _timers(self) -> None:
        while True:
            now = self.now()
            while self._heap and self._heap[0][0] <= now:
                t, key = heapq.heappop(self._heap)
                if self._wakeups.get(key) != t:
                    continue  # superseded by a later wakeup of the same rental
                del self._wakeups[key]
                await self.step(key, lambda e: e.poll(self.now()))
            self._wake = trio.Event()
            delay = 3600.0 if not self._heap else max(0.0, self._heap[0][0] - time.time())
            with trio.move_on_after(min(delay, 1.0)):
                await self._wake.wait()

    # -- events for the user ---------------------------------------------------------------------

    def _notify(self, key: bytes, kind: str, text: str) -> None:
        event = NodeEvent(key, kind, text, self.now())
        log.info("rental %s %s: %s", key.hex()[:8], kind, text)
        for chan in list(self._subscribers):
            # A slow or gone subscriber misses events; the ledger has the truth.
            with contextlib.suppress(trio.WouldBlock, trio.BrokenResourceError,
                                     trio.ClosedResourceError):
                chan.send_nowait(event)

    @contextlib.asynccontextmanager
    async def events(self) -> AsyncIterator[trio.MemoryReceiveChannel[NodeEvent]]:
        send, receive = trio.open_memory_channel[NodeEvent](1024)
        self._subscribers.append(send)
        try:
            yield receive
        finally:
            self._subscribers.remove(send)
            await send.aclose()

    async def wait_until(self, key: bytes, done: Callable[[Engine], bool],
                         timeout: float = 60.0) -> Engine:
        """Wait until `done(engine)`: re-checked after every step of any rental (events, not
        sleeps)."""
        with trio.fail_after(timeout):
            while True:
                engine = self.engine(key)
                if engine is not None and done(engine):
                    return engine
                await self._stepped.wait()

    # -- requests to the peer --------------------------------------------------------------------

    async def _send(self, key: bytes, send: Send) -> None:
        self.faults.hit(f"before-send:{send.key}")
        log.debug("rental %s: sending %s", key.hex()[:8], send.key)
        try:
            await self.reach(send.to)
            data = await self.net.request(
                send.to, PROTOCOLS[send.channel], send.message, timeout=REQUEST_TIMEOUT,
                max_response=RESPONSE_LIMIT,
            )
        except (NetworkError, WireError) as exc:
            log.debug("rental %s: %s to %s failed: %s", key.hex()[:8], send.key,
                      peer_id_to_text(send.to)[:12], exc)
            return  # the engine's outbox sends it again in time
        self.faults.hit(f"after-send:{send.key}")
        try:
            await self.step(key, lambda e: e.on_response(send.key, data, self.now()))
        except WireError as exc:
            log.warning("rental %s: %s answered %s with %s", key.hex()[:8],
                        peer_id_to_text(send.to)[:12], send.key, exc)
            await self.gossip.penalize(send.to, exc, trio.current_time())

    async def reach(self, peer: bytes) -> None:
        """Be connected to `peer`: already, or through addresses our peers know for it."""
        if peer in self.net.peers():
            return
        for known in self.net.peers():
            with contextlib.suppress(NetworkError, WireError):
                await self.peers.exchange(known)
            if peer in self.net.peers():
                return
        raise NetworkError(f"cannot reach {peer_id_to_text(peer)[:12]}")

    # -- requests from peers ---------------------------------------------------------------------

    def _scored(
        self, handler: Callable[[bytes, bytes], Any]
    ) -> Callable[[bytes, bytes], Any]:
        """A request the peer got wrong is answered with an error frame (the host does that)
        and counts against the peer's score."""

        async def serve(peer: bytes, data: bytes) -> bytes:
            try:
                return await handler(peer, data)
            except WireError as exc:
                await self.gossip.penalize(peer, exc, trio.current_time())
                raise

        return serve

    async def _on_negotiate(self, peer: bytes, data: bytes) -> bytes:
        if self.desk is None:
            raise UnknownProtocol("this node rents nothing out")
        async with self._desk_lock:
            known = self.desk.route(peer, data)
            key = None if known is None else known.neg.proposal.proposal.nonce  # type: ignore[union-attr]
            async with self._lock(key) if key is not None else _nothing():
                reply, actions, rental = self.desk.on_request(peer, data, self.now())
                if rental is None:
                    return reply
                key = rental.neg.proposal.proposal.nonce  # type: ignore[union-attr]
                await self._persist(key, rental, actions)
        self.faults.hit(f"before-reply:{msg.kind_of(reply, _REPLIES)}")
        self._act(key, actions)
        if rental.neg.state in (NegState.ACCEPTED, NegState.AGREED):
            self._nursery.start_soon(self._publish_offers)  # type: ignore[union-attr]
        return reply

    async def _on_usage(self, peer: bytes, data: bytes) -> bytes:
        kind = msg.kind_of(data, _USAGE_REQUESTS)
        if kind in (msg.INPUT, msg.FETCH):
            return await self._on_job_data(peer, msg.read_any(data, frozenset({kind})))
        if self.desk is not None and kind == msg.CLOSE:
            rental = self.desk.route(peer, data)
            if rental is not None:
                key = rental.neg.proposal.proposal.nonce  # type: ignore[union-attr]
                reply = await self.step(key, lambda e: self.desk.on_request(  # type: ignore[union-attr]
                    peer, data, self.now())[:2])
                assert reply is not None
                self.faults.hit(f"before-reply:{msg.ACK}")
                return reply
        decoded = msg.read_any(data, frozenset({msg.HEARTBEAT, msg.CLOSE}))
        rid = decoded[0].heartbeat.rental_id if kind == msg.HEARTBEAT else decoded.rental_id
        key = self.by_rental.get(rid)
        engine = None if key is None else self.renters.get(key)
        if engine is None or engine.provider != peer:
            raise UnexpectedMessage("no such rental here")
        if kind == msg.HEARTBEAT and engine.use is None and engine.neg.state is NegState.AGREED:
            # Agreed, not yet seen funded: the provider saw the funding first. Read the chain
            # now rather than refuse the heartbeat and wait for its retry (the engine still
            # decides on what the chain says; in any other state it refuses without a read).
            with contextlib.suppress(OSError, ConnectionError):
                await self.watcher.poll()
        reply = await self.step(key, lambda e: e.on_request(decoded, self.now()))  # type: ignore[arg-type]
        assert reply is not None
        self.faults.hit(f"before-reply:{msg.kind_of(reply, _USAGE_REPLIES)}")
        return reply

    async def _on_job_data(self, peer: bytes, request: Any) -> bytes:
        key = self.by_rental.get(request.rental_id)
        rental = None if key is None or self.desk is None else self.desk.by_nonce.get(key)
        if rental is None or rental.renter != peer or self.jobs is None:
            raise UnexpectedMessage("no such rental here")
        if isinstance(request, msg.Input):
            if rental.use is None or rental.use.state is not UseState.STARTING:
                raise UnexpectedMessage("inputs are taken once funded, before the job starts")
            self.jobs.inputs.expect(request.rental_id, rental.use.workload)
            if self.jobs.inputs.accept(request):
                await self.step(key, lambda e: e.on_inputs_ready(self.now()))  # type: ignore[arg-type, union-attr]
            return msg.Ack(request.rental_id).encode()
        return self.jobs.fetch(request).encode()

    # -- the chain -------------------------------------------------------------------------------

    async def _on_chain(self, event: ChainEvent, applied: Applied) -> None:
        key = self.by_rental.get(event.rental_id)
        if key is None:
            return  # someone else's rental on the same escrow
        await self.step(key, lambda e: e.on_chain(event, self.now()))

    async def _submit(self, key: bytes, submit: Submit) -> None:
        op, op_id, name = submit.op, submit.op_id, submit.op_id.split(":")[0]
        self.faults.hit(f"before-submit:{name}")
        try:
            if isinstance(op, Open):
                await self._ensure_free(op.terms.token, op.terms.deposit, op_id)
                outcome = await self.escrow.open(op.terms, op_id=op_id)
            elif isinstance(op, OpenFor):
                if op.permit is not None:
                    p = op.permit
                    await self.escrow.deposit_with_permit(
                        op.terms.renter, op.terms.token, p.amount, p.deadline, p.v, p.r, p.s,
                        op_id=f"permit:{op_id}")
                outcome = await self.escrow.open_for(op.terms, op.nonce, op.deadline,
                                                     op.signature, op_id=op_id)
            elif isinstance(op, TopUp):
                await self._ensure_free(op.terms.token, op.amount, op_id)
                outcome = await self.escrow.top_up(op.terms, op.amount, op_id=op_id)
            elif isinstance(op, Claim):
                outcome = await self.escrow.claim(op.terms, op.receipt, op.signature, op_id=op_id)
            elif isinstance(op, Settle):
                outcome = await self.escrow.settle(op.terms, op.receipt, op.signature,
                                                   op_id=op_id)
            elif isinstance(op, RequestClose):
                outcome = await self.escrow.request_close(op.terms, op_id=op_id)
            else:
                assert isinstance(op, Finalize)
                outcome = await self.escrow.finalize(op.terms, op_id=op_id)
        except EscrowError as exc:
            error, why = type(exc).__name__, str(exc)
            log.info("rental %s: %s refused: %s", key.hex()[:8], op_id, why)
            with contextlib.suppress(Exception):
                await trio.to_thread.run_sync(
                    lambda: self.ledger.tx_outcome(op_id, status="reverted", error=why))
            await self.step(key, lambda e: e.on_submitted(op_id, self.now(), ok=False,
                                                           error=error))
            return
        except Exception as exc:  # the chain node is down, the call timed out: try again later
            log.warning("rental %s: %s failed: %r", key.hex()[:8], op_id, exc)
            await self.step(key, lambda e: e.on_submitted(op_id, self.now(), ok=False, error=""))
            return
        await trio.to_thread.run_sync(
            lambda: self.ledger.tx_outcome(op_id, status="mined", block=outcome.block_number))
        self.faults.hit(f"after-submit:{name}")
        await self.step(key, lambda e: e.on_submitted(op_id, self.now(), ok=True))

    async def _ensure_free(self, token: bytes, amount: int, op_id: str) -> None:
        """Deposit what the escrow balance lacks for `amount` (approving a token first)."""
        free = await self.escrow.balance_of(token)
        if free >= amount:
            return
        missing = amount - free
        if token != ETH:
            await self.escrow.approve(token, missing, op_id=f"approve:{op_id}")
        await self.escrow.deposit(token, missing, op_id=f"deposit:{op_id}")

    # -- the renter ------------------------------------------------------------------------------

    async def rent(self, offer: SignedOffer, wants: RenterWants,
                   inputs: dict[str, bytes] | None = None) -> bytes:
        """Propose on `offer` (its workload's input files in `inputs`, by name); returns the
        rental's key (the negotiation's nonce). Follow it with `events`/`wait_until`."""
        inputs = inputs or {}
        for f in wants.workload.inputs:
            data = inputs.get(f.name)
            if data is None or len(data) != f.size or hashlib.sha256(data).digest() != f.sha256:
                raise ValueError(f"input {f.name!r} does not match the workload's digest")
        key = secrets.token_bytes(msg.NONCE_SIZE)
        engine = RenterRental(self.renter_ctx, wants, offer, key)
        self._save_inputs(key, inputs)
        self.renters[key] = engine
        await self.reach(offer.offer.provider)
        await self.step(key, lambda e: e.propose(self.now()))  # type: ignore[union-attr]
        return key

    def _inputs_dir(self, key: bytes) -> Path:
        return self.config.home / "uploads" / key.hex()

    def _save_inputs(self, key: bytes, inputs: dict[str, bytes]) -> None:
        """Inputs wait on disk for the upload (which follows funding, perhaps after a restart)."""
        d = self._inputs_dir(key)
        d.mkdir(parents=True, exist_ok=True)
        for name, data in inputs.items():
            (d / hashlib.sha256(name.encode()).hexdigest()).write_bytes(data)
        self.inputs[key] = inputs

    async def _upload(self, key: bytes, up: Upload) -> None:
        engine = self.renters[key]
        files = self.inputs.get(key)
        if files is None:
            d = self._inputs_dir(key)
            files = {f.name: (d / hashlib.sha256(f.name.encode()).hexdigest()).read_bytes()
                     for f in engine.wants.workload.inputs}
        for name, data in files.items():
            offset = 0
            while True:
                piece = data[offset: offset + msg.MAX_INPUT_DATA]
                request = msg.Input(up.rental_id, name, offset, piece).encode()
                for attempt in range(5):
                    try:
                        await self.reach(up.to)
                        msg.read_any(await self.net.request(up.to, USAGE_PROTOCOL, request),
                                     frozenset({msg.ACK}))
                        break
                    except (NetworkError, WireError) as exc:
                        if attempt == 4:
                            self._notify(key, "upload", f"input {name!r} failed: {exc}")
                            return
                        await trio.sleep(1 + attempt)
                offset += len(piece)
                if offset >= len(data):
                    break
        self._notify(key, "upload", f"{len(files)} input file(s) sent")

    async def _fetch_results(self, key: bytes, fetch: Fetch) -> None:
        out_dir = (self.config.renter.results_dir or self.config.home / "results") / (
            fetch.rental_id.hex())
        ok, problems = True, []
        for f in fetch.outputs:
            data = bytearray()
            try:
                while len(data) < f.size or (not data and f.size == 0):
                    request = msg.Fetch(fetch.rental_id, f.name, len(data),
                                        msg.MAX_CHUNK_DATA).encode()
                    await self.reach(fetch.to)
                    chunk = msg.read_any(await self.net.request(
                        fetch.to, USAGE_PROTOCOL, request, max_response=RESPONSE_LIMIT),
                        frozenset({msg.CHUNK}))
                    data += chunk.data
                    if chunk.eof:
                        break
            except (NetworkError, WireError) as exc:
                ok = False
                problems.append(f"{f.name}: {exc}")
                continue
            if len(data) != f.size or hashlib.sha256(data).digest() != f.sha256:
                ok = False
                problems.append(f"{f.name}: digest mismatch")
                continue
            path = out_dir / f.name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(bytes(data))
        detail = "; ".join(problems) if problems else f"{len(fetch.outputs)} file(s) in {out_dir}"
        await self.step(key, lambda e: e.on_outputs(ok, detail))  # type: ignore[union-attr]

    async def output(self, key: bytes) -> AsyncIterator[bytes]:
        """The job's output as it runs (fetched from the provider every second), to its end."""
        engine = self.renters[key]
        offset = 0
        while True:
            use = engine.use
            if use is not None and use.state is not UseState.STARTING:
                try:
                    await self.reach(engine.provider)
                    chunk = msg.read_any(await self.net.request(
                        engine.provider, USAGE_PROTOCOL,
                        msg.Fetch(use.rental_id, None, offset, 64 * 1024).encode(),
                        max_response=RESPONSE_LIMIT), frozenset({msg.CHUNK}))
                except (NetworkError, WireError):
                    chunk = None
                if chunk is not None:
                    if chunk.data:
                        yield chunk.data
                    offset = chunk.offset + len(chunk.data)
                    if chunk.eof:
                        return
            if use is not None and use.state is UseState.CLOSED and (
                engine.outputs_checked is not None or not use.last or not use.last.heartbeat.outputs
            ):
                return
            await trio.sleep(OUTPUT_POLL)

    async def _prepare_funding(self, key: bytes, action: PrepareFunding) -> None:
        """openFor: the renter signs an OpenRequest (and, when its escrow balance lacks the
        deposit, an EIP-2612 permit for the provider to deposit it)."""
        deadline = self.now() + 600
        nonce, sig = await trio.to_thread.run_sync(
            lambda: self.escrow.sync.sign_open_request(self.keys.account, action.terms, deadline))
        permit = None
        free = await self.escrow.balance_of(action.terms.token)
        if free < action.terms.deposit and action.terms.token != ETH:
            amount = action.terms.deposit - free
            v, r, s = await trio.to_thread.run_sync(
                lambda: self.escrow.sync.sign_permit(self.keys.account, action.terms.token,
                                                     amount, deadline))
            permit = Permit(amount, deadline, v, r, s)
        await self.step(key, lambda e: e.on_funding(nonce, deadline, sig, permit, self.now()))  # type: ignore[union-attr]

    # -- the provider ----------------------------------------------------------------------------

    async def _publish_offers(self) -> None:
        """Publish each listing with what is free now (capacity less its active rentals)."""
        if self.builder is None or self.desk is None:
            return
        for listing in self.listings:
            active = sum(1 for r in self.desk.by_nonce.values()
                         if r.active and r.listing == (self.peer_id, listing.listing))
            await self._publish(listing, max(0, listing.capacity - active))

    async def _publish(self, listing: Listing, capacity: int) -> None:
        assert self.builder is not None and self.desk is not None
        seq = await trio.to_thread.run_sync(self.ledger.next_seq, listing.listing)
        offer = self.builder.offer(listing, seq=seq, now=self.now(), capacity=capacity)
        signed = await self.gossip.publish_offer(offer)
        self.desk.publish(signed, capacity=listing.capacity if capacity else None)

    def _own_offer(self, signed: SignedOffer) -> None:
        if self.desk is not None:
            listing = next((x for x in self.listings if x.listing == signed.offer.listing), None)
            self.desk.publish(signed, capacity=None if listing is None else listing.capacity)

    async def withdraw(self) -> None:
        """Withdraw every offer (capacity 0): the node is leaving."""
        for listing in self.listings:
            with contextlib.suppress(Exception):
                await self._publish(listing, 0)

    async def _job_started(self, rental_id: bytes) -> None:
        key = self.by_rental[rental_id]
        await self.step(key, lambda e: e.on_job_started(self.now()))  # type: ignore[union-attr]

    async def _job_ended(self, rental_id: bytes, state: int, code: int | None,
                         outputs: tuple[FileDigest, ...], detail: str) -> None:
        key = self.by_rental[rental_id]
        if detail:
            self._notify(key, "job", detail)
        await self.step(key, lambda e: e.on_job_ended(state, code, outputs, self.now()))  # type: ignore[union-attr]

    def _samples(self, rental_id: bytes, samples: list[TelemetrySample]) -> None:
        key = self.by_rental.get(rental_id)
        engine = None if key is None or self.desk is None else self.desk.by_nonce.get(key)
        if engine is not None:
            engine.on_telemetry(samples)


@contextlib.asynccontextmanager
async def _nothing() -> AsyncIterator[None]:
    yield


_REPLIES = frozenset({msg.COUNTER, msg.AGREEMENT, msg.REJECT, msg.ACK})
_USAGE_REQUESTS = frozenset({msg.HEARTBEAT, msg.CLOSE, msg.INPUT, msg.FETCH})
_USAGE_REPLIES = frozenset({msg.RECEIPT, msg.CLOSE, msg.ACK})


# -- composition --------------------------------------------------------------------------------


def _chain_client(config: NodeConfig, embedded: EmbeddedChain | None,
                  ledger: Ledger) -> AsyncEscrowClient:
    chain = config.chain
    if chain.rpc is None:
        if embedded is None:
            raise ValueError("the embedded chain must be given to open_node (one per process)")
        w3 = embedded.w3
    else:
        w3 = Web3(Web3.HTTPProvider(chain.rpc, request_kwargs={"timeout": 30}))
    client = EscrowClient(w3, chain.escrow, config.keys.account, chain_id=chain.chain_id,
                          journal=ledger.journal(), poll_interval=0.05)
    return AsyncEscrowClient(client, limiter_for(w3))


async def _provider(node: Node, config: NodeConfig, nursery: trio.Nursery) -> None:
    """Probe, choose the runner, restore, start the jobs and publish the offers."""
    settings = config.provider
    assert settings is not None
    home = config.home
    if settings.gpu_source == "recorded-h100":
        found: ProbeResult = await probe(ReplayNvml.recorded_h100(), smi_exe=None,
                                         job_dir=str(home))
    elif settings.gpu_source == "probe":
        found = await probe(job_dir=str(home))
    else:
        found = await probe(use_real_nvml=False, smi_exe=None, job_dir=str(home))
    runner_id = node.peer_id.hex()[-16:]
    (home / "jobs").mkdir(parents=True, exist_ok=True)
    if settings.runner == "subprocess":
        runner: Runner = SubprocessRunner(str(home / "jobs"), runner_id=runner_id)
    else:
        runner = choose_runner(allow_unconfined=settings.allow_unconfined,
                               base_dir=str(home / "jobs"), runner_id=runner_id)
    isolation = getattr(runner, "isolation", Isolation.NONE)
    reap = getattr(runner, "reap_stale", None)
    if reap is not None:
        await trio.to_thread.run_sync(reap)
    node.runner = runner
    gpu_uuids: tuple[str, ...] = ()
    sampler = None
    if isinstance(found.gpu, GpuInventory) and found.gpu.count:
        if settings.gpu_source == "probe":
            gpu_uuids = tuple(g.uuid for g in found.gpu.gpus)
            from rigmesh.exec.gpu import PynvmlAdapter

            try:
                real = PynvmlAdapter()
                real.init()
                nvml_sampler = NvmlSampler(real)
                sampler = _sampler(nvml_sampler)
            except Exception as exc:  # no NVML (nvidia-smi only): no telemetry, say so
                log.warning("no NVML for telemetry: %s", exc)
        elif settings.gpu_source == "recorded-h100":
            replay = ReplayNvml.recorded_h100()
            replay.init()
            replay_sampler = NvmlSampler(replay, clock_ms=lambda: node.now() * 1000)

            def read(procs: Callable[[], int]) -> list[TelemetrySample]:
                replay.advance()
                return [replace(s, job_procs=procs()) for s in replay_sampler.sample(strict=False)]

            sampler = read
    node.jobs = Jobs(
        runner, home / "jobs-data", on_started=node._job_started, on_ended=node._job_ended,
        on_samples=node._samples, sampler=sampler, gpus=gpu_uuids,
        telemetry_seconds=settings.telemetry_seconds, output_keep=settings.output_keep,
    )
    await nursery.start(node.jobs.run)
    node.listings = tuple(x.but(isolation=isolation.value) for x in settings.listings)
    node.builder = OfferBuilder(node.keys.peer, node.keys.account, found.hardware(),
                                Market(node.chain_id, node.escrow_address, node.token))
    node.desk = ProviderDesk(ProviderContext(node.keys.peer, SIGNED, node.chain_id,
                                             node.escrow_address, settings.policy,
                                             settings.claims))
    node.gossip.next_seq = node.ledger.next_seq
    node.gossip.on_own_offer = node._own_offer


def _sampler(sampler: NvmlSampler) -> Callable[[Callable[[], int]], list[TelemetrySample]]:
    def read(procs: Callable[[], int]) -> list[TelemetrySample]:
        return [replace(s, job_procs=procs()) for s in sampler.sample(strict=False)]

    return read


def _restore(node: Node) -> list[bytes]:
    """Every rental the ledger holds that is not closed, back in its engine. Returns their
    keys (their timers and outboxes are due at once)."""
    now = node.now()
    keys = []
    for row in node.ledger.rentals(open_only=True):
        if row.role == "provider":
            if node.desk is None:
                continue
            assert node.config.provider is not None
            ctx = node.desk.ctx
            rental = ProviderRental.restore(ctx, row.snapshot, now)
            node.desk.by_nonce[row.key] = rental
            if rental.rental_id is not None:
                node.desk.by_rental[rental.rental_id] = rental
        else:
            node.renters[row.key] = RenterRental.restore(node.renter_ctx, row.snapshot, now)
        if row.rental_id is not None:
            node.by_rental[row.rental_id] = row.key
        keys.append(row.key)
    return keys


async def _tick(chain: EmbeddedChain, limiter: trio.CapacityLimiter) -> None:
    while True:
        await trio.to_thread.run_sync(chain.tick, limiter=limiter)
        await trio.sleep(1)


@contextlib.asynccontextmanager
async def open_node(config: NodeConfig, *, chain: EmbeddedChain | None = None
                    ) -> AsyncIterator[Node]:
    """Start a node; leaving the block stops it (offers withdrawn, jobs stopped)."""
    config.home.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(config.home / "ledger.sqlite3")
    escrow = _chain_client(config, chain, ledger)
    try:
        # Refuses at once if the chain is not there; anchors the clock before anything reads it.
        chain_time = await escrow.chain_time()
        async with (
            open_libp2p_network(config.keys.peer, config.listen, mdns=config.mdns) as net,
            trio.open_nursery() as nursery,
        ):
            node = Node(config, net, ledger, escrow)
            node.watcher.chain_time = chain_time
            node._nursery = nursery
            nursery.start_soon(node.writer.run)
            node.store.load(node.book, node.now())
            node.store.attach(node.book)
            if config.provider is not None:
                await _provider(node, config, nursery)
            keys = _restore(node)
            await node.watcher.poll()
            await node.gossip.start()
            node.peers.start()
            net.serve(NEGOTIATE_PROTOCOL, node._scored(node._on_negotiate),
                      max_request=NEGOTIATE_LIMIT)
            net.serve(USAGE_PROTOCOL, node._scored(node._on_usage), max_request=USAGE_LIMIT)
            nursery.start_soon(node.gossip.run)
            nursery.start_soon(node.peers.run)
            nursery.start_soon(node.watcher.run)
            nursery.start_soon(node._timers)
            nursery.start_soon(node._store_offers)
            if chain is not None:
                nursery.start_soon(_tick, chain, escrow.limiter)
            for key in keys:
                engine = node.engine(key)
                if isinstance(engine, ProviderRental):
                    # A job that ran before the restart died with the node.
                    await node.step(key, lambda e: e.on_restart(node.now()))  # type: ignore[union-attr]
                await node.step(key, lambda e: e.poll(node.now()))
            if config.bootstrap:
                await node.gossip.join(list(config.bootstrap))
            if config.provider is not None:
                await node._publish_offers()
            try:
                yield node
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    if config.provider is not None:
                        await node.withdraw()
                node.store.close()
                nursery.cancel_scope.cancel()
    finally:
        ledger.close()

