"""In-memory `Network`: many nodes in one trio run, virtual time, seeded latency and loss.

Used by the shell's tests and benchmark (`rigmesh.p2p.scenario`): it runs the trio code itself
(OfferGossip, PeerExchange). The research simulator (`simulations/rigsim`) runs the same
decisions without trio, through `rigmesh.p2p.policy`. Run it under
``trio.testing.MockClock(autojump_threshold=0)`` and hours pass instantly.

Determinism: every delivery goes through one event heap ordered by (virtual time, sequence
number), driven by a single task, and every random choice (loss, jitter) comes from the hub's
seeded ``random.Random``. Nodes are iterated in sorted PeerId order, never in set order. Trio
itself shuffles the order in which simultaneously runnable tasks resume; `deterministic_trio`
switches that shuffle to a seeded one (the hook trio provides for Hypothesis), so a scenario run
twice with one seed gives the same event log, bit for bit.

Gossip model: a node forwards every message its handler ACCEPTs to every connected neighbour
subscribed to the topic except the one it came from, and remembers message ids (the CID of the
data, as on libp2p) for `seen_ttl` seconds. With the neighbour count near GossipSub's mesh degree
that is what GossipSub's eager push does; lazy IHAVE/IWANT repair is not modelled (the sync
protocol's anti-entropy repairs loss in both implementations).
"""

from __future__ import annotations

import contextlib
import heapq
import random
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import trio

from rigmesh.p2p import framing
from rigmesh.p2p.network import (
    MAX_REQUEST,
    MAX_RESPONSE,
    REQUEST_TIMEOUT,
    NetworkError,
    RequestHandler,
    TopicHandler,
    Verdict,
)
from rigmesh.wire.cid import message_cid_bytes
from rigmesh.wire.errors import Timeout, TooLarge, WireError
from rigmesh.wire.identity import peer_id_from_text, peer_id_to_text

ADDR_PREFIX = "/memory/"


@contextlib.contextmanager
def deterministic_trio(seed: int) -> Iterator[None]:
    """Make trio resume simultaneously runnable tasks in a seeded order (wrap ``trio.run``)."""
    import trio._core._run as run_mod  # private, but it is trio's documented Hypothesis hook

    old_flag = run_mod._ALLOW_DETERMINISTIC_SCHEDULING
    old_state = run_mod._r.getstate()
    run_mod._ALLOW_DETERMINISTIC_SCHEDULING = True  # type: ignore[misc]
    run_mod._r.seed(seed)
    try:
        yield
    finally:
        run_mod._ALLOW_DETERMINISTIC_SCHEDULING = old_flag  # type: ignore[misc]
        run_mod._r.setstate(old_state)


@dataclass(frozen=True)
class LinkParams:
    latency: float = 0.010
    """One-way delay, seconds."""
    jitter: float = 0.0
    """Uniform extra delay in [0, jitter), drawn from the hub's seeded generator."""
    loss: float = 0.0
    """Probability that one message (gossip, request or response) is lost."""


class MemoryHub:
    """The medium: links, the delivery heap and the seeded generator shared by all nodes."""

    def __init__(self, seed: int, default_link: LinkParams | None = None,
                 seen_ttl: float = 120.0) -> None:
        self.rng = random.Random(seed)
        self.default_link = default_link or LinkParams()
        self.seen_ttl = seen_ttl
        self._links: dict[tuple[bytes, bytes], LinkParams] = {}
        self._nodes: dict[bytes, MemoryNetwork] = {}
        self._heap: list[tuple[float, int, Callable[[], Awaitable[None]]]] = []
        self._seq = 0
        self._wake = trio.Event()
        self._nursery: trio.Nursery | None = None
        #: (time, kind, ...) of every delivery, for tests that compare runs.
        self.trace: list[tuple[Any, ...]] = []
        self.sent = 0
        self.lost = 0

    def node(self, peer_id: bytes, *, replace: bool = False) -> MemoryNetwork:
        """A node for `peer_id`. `replace=True` restarts a node that went offline (same
        PeerId, fresh state), as a process restarted with its key file would."""
        old = self._nodes.get(peer_id)
        if old is not None and (old.online or not replace):
            raise ValueError("a node with this PeerId is online")
        net = MemoryNetwork(self, peer_id)
        self._nodes[peer_id] = net
        return net

    def set_link(self, a: bytes, b: bytes, params: LinkParams) -> None:
        """Parameters of both directions between `a` and `b`."""
        self._links[(a, b)] = params
        self._links[(b, a)] = params

    def link(self, a: bytes, b: bytes) -> LinkParams:
        return self._links.get((a, b), self.default_link)

    @contextlib.asynccontextmanager
    async def running(self) -> Any:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._drive)
            try:
                yield self
            finally:
                nursery.cancel_scope.cancel()
                self._nursery = None

    def _spawn(self, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        if self._nursery is None:
            raise RuntimeError("MemoryHub is not running (use `async with hub.running()`)")
        self._nursery.start_soon(fn, *args)

    def _delay(self, src: bytes, dst: bytes) -> float | None:
        """Delay of one message from src to dst, or None if the link loses it."""
        p = self.link(src, dst)
        self.sent += 1
        if p.loss and self.rng.random() < p.loss:
            self.lost += 1
            return None
        return p.latency + (self.rng.random() * p.jitter if p.jitter else 0.0)

    def _schedule(self, delay: float, event: Callable[[], Awaitable[None]]) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (trio.current_time() + delay, self._seq, event))
        self._wake.set()

    async def _drive(self) -> None:
        while True:
            if not self._heap:
                self._wake = trio.Event()
                await self._wake.wait()
                continue
            at = self._heap[0][0]
            if trio.current_time() < at:
                self._wake = trio.Event()
                with trio.move_on_at(at):
                    await self._wake.wait()
                continue
            _, _, event = heapq.heappop(self._heap)
            await event()


class MemoryNetwork:
    """One node's view of a `MemoryHub`; implements `rigmesh.p2p.network.Network`."""

    def __init__(self, hub: MemoryHub, peer_id: bytes) -> None:
        self._hub = hub
        self._peer_id = peer_id
        self._neighbours: dict[bytes, None] = {}
        self._topics: dict[str, TopicHandler] = {}
        self._seen: dict[bytes, float] = {}
        self._services: dict[str, tuple[RequestHandler, int]] = {}
        self._banned: dict[bytes, float] = {}
        self.online = True

    # --- identity -------------------------------------------------------------------------
    @property
    def peer_id(self) -> bytes:
        return self._peer_id

    def addrs(self) -> list[str]:
        return [ADDR_PREFIX + peer_id_to_text(self._peer_id)]

    # --- connections ----------------------------------------------------------------------
    async def connect(self, addr: str) -> bytes:
        if not addr.startswith(ADDR_PREFIX):
            raise NetworkError(f"not a memory address: {addr}")
        try:
            peer = peer_id_from_text(addr[len(ADDR_PREFIX) :])
        except WireError as exc:
            raise NetworkError(str(exc)) from None
        if peer == self._peer_id:
            raise NetworkError("cannot connect to self")
        if peer in self._neighbours:
            return peer
        other = self._hub._nodes.get(peer)
        # A dial costs one round trip; a dial to a missing, offline or banning peer fails after
        # the same time (as a refused TCP connection would).
        link = self._hub.link(self._peer_id, peer)
        await trio.sleep(2 * link.latency)
        if other is None or not other.online or not self.online:
            raise NetworkError(f"dial {peer_id_to_text(peer)}: unreachable")
        if self.is_banned(peer) or other.is_banned(self._peer_id):
            raise NetworkError(f"dial {peer_id_to_text(peer)}: refused (banned)")
        self._neighbours[peer] = None
        other._neighbours[self._peer_id] = None
        return peer

    def peers(self) -> list[bytes]:
        return sorted(self._neighbours)

    def remote_host(self, peer: bytes) -> str | None:
        # A memory node's only address is its PeerId: the host is the address itself.
        return ADDR_PREFIX + peer_id_to_text(peer) if peer in self._neighbours else None

    async def disconnect(self, peer: bytes) -> None:
        self._neighbours.pop(peer, None)
        other = self._hub._nodes.get(peer)
        if other is not None:
            other._neighbours.pop(self._peer_id, None)

    async def ban(self, peer: bytes, seconds: float) -> None:
        self._banned[peer] = trio.current_time() + seconds
        await self.disconnect(peer)

    def is_banned(self, peer: bytes) -> bool:
        until = self._banned.get(peer)
        if until is None:
            return False
        if trio.current_time() >= until:
            del self._banned[peer]
            return False
        return True

    async def go_offline(self) -> None:
        """Simulate a crash: drop every link; messages in flight to us are lost."""
        self.online = False
        for peer in self.peers():
            await self.disconnect(peer)

    # --- gossip ---------------------------------------------------------------------------
    async def subscribe(self, topic: str, handler: TopicHandler) -> None:
        self._topics[topic] = handler

    async def publish(self, topic: str, data: bytes) -> None:
        msg_id = message_cid_bytes(data)
        self._mark_seen(msg_id)
        self._forward(topic, data, msg_id, exclude=None)

    def _forward(self, topic: str, data: bytes, msg_id: bytes, exclude: bytes | None) -> None:
        hub = self._hub
        for peer in self.peers():
            if peer == exclude:
                continue
            other = hub._nodes[peer]
            if topic not in other._topics:
                continue
            delay = hub._delay(self._peer_id, peer)
            if delay is None:
                continue
            hub._schedule(delay, _Deliver(other, self._peer_id, topic, data, msg_id))

    def _mark_seen(self, msg_id: bytes) -> None:
        now = trio.current_time()
        self._seen[msg_id] = now
        # Expire in insertion order (oldest first): amortized O(1), no set iteration.
        ttl = self._hub.seen_ttl
        while self._seen:
            first = next(iter(self._seen))
            if now - self._seen[first] <= ttl:
                break
            del self._seen[first]

    async def _receive(self, src: bytes, topic: str, data: bytes, msg_id: bytes) -> None:
        if not self.online or src not in self._neighbours or self.is_banned(src):
            return
        handler = self._topics.get(topic)
        if handler is None or msg_id in self._seen:
            return
        verdict = await handler(src, data)
        self._hub.trace.append((trio.current_time(), "gossip", src, self._peer_id, verdict.value))
        if verdict is Verdict.ACCEPT:
            self._mark_seen(msg_id)
            self._forward(topic, data, msg_id, exclude=src)

    # --- request/response -----------------------------------------------------------------
    def serve(
        self, protocol: str, handler: RequestHandler, *, max_request: int = MAX_REQUEST
    ) -> None:
        self._services[protocol] = (handler, max_request)

    async def request(
        self,
        peer: bytes,
        protocol: str,
        data: bytes,
        *,
        timeout: float = REQUEST_TIMEOUT,
        max_response: int = MAX_RESPONSE,
    ) -> bytes:
        if peer not in self._neighbours:
            raise NetworkError(f"not connected to {peer_id_to_text(peer)}")
        hub = self._hub
        done = trio.Event()
        slot: list[bytes | Exception] = []

        def reply(result: bytes | Exception) -> None:
            if not done.is_set():
                slot.append(result)
                done.set()

        delay = hub._delay(self._peer_id, peer)
        if delay is not None:
            server = hub._nodes[peer]
            hub._schedule(delay, _Request(server, self._peer_id, protocol, data, reply))
        with trio.move_on_after(timeout):
            await done.wait()
        if not slot:
            raise Timeout(f"{protocol} to {peer_id_to_text(peer)}: no response in {timeout}s")
        result = slot[0]
        if isinstance(result, Exception):
            raise result
        if len(result) > max_response:
            raise TooLarge(f"response of {len(result)} bytes > limit {max_response}")
        return framing.raise_if_error(result)

    async def _serve_one(
        self, src: bytes, protocol: str, data: bytes, reply: Callable[[bytes | Exception], None]
    ) -> None:
        hub = self._hub
        if not self.online or src not in self._neighbours or self.is_banned(src):
            return  # the requester times out, as with a dead or refusing libp2p peer
        service = self._services.get(protocol)
        if service is None:
            reply_with: bytes | Exception = NetworkError(f"protocol {protocol} not supported")
        else:
            handler, max_request = service
            try:
                if len(data) > max_request:
                    raise TooLarge(f"request of {len(data)} bytes > limit {max_request}")
                reply_with = await handler(src, data)
            except WireError as exc:
                reply_with = framing.error_frame_for(exc)
            except Exception as exc:  # a bug in our handler: answer, then fail loudly
                internal = framing.error_frame_for(WireError("internal error"))
                hub._schedule(0.0, _Reply(reply, internal))
                raise exc
        delay = hub._delay(self._peer_id, src)
        if delay is not None:
            hub._schedule(delay, _Reply(reply, reply_with))


# Heap events are small classes rather than closures so a trace reads well in a debugger.
@dataclass
class _Deliver:
    node: MemoryNetwork
    src: bytes
    topic: str
    data: bytes
    msg_id: bytes

    async def __call__(self) -> None:
        await self.node._receive(self.src, self.topic, self.data, self.msg_id)


@dataclass
class _Request:
    node: MemoryNetwork
    src: bytes
    protocol: str
    data: bytes
    reply: Callable[[bytes | Exception], None]

    async def __call__(self) -> None:
        # Served in its own task: a handler may await, and must not stall every delivery.
        self.node._hub._spawn(self.node._serve_one, self.src, self.protocol, self.data, self.reply)


@dataclass
class _Reply:
    reply: Callable[[bytes | Exception], None]
    result: bytes | Exception

    async def __call__(self) -> None:
        self.reply(self.result)
