"""`Network` over py-libp2p 0.8.1: TCP, Noise, Yamux, GossipSub v1.1.

Settings (DESIGN.md, "py-libp2p 0.8.1: settings that matter"; spec/p2p.md, "GossipSub"):

- Security is Noise only: the library default also offers TLS, secio and plaintext, and a dialer
  may pick plaintext. Muxer is Yamux only.
- GossipSub: D = 6 / 4 / 12, 1 s heartbeat, protocols v1.1 and v1.0, not v1.2 (py-libp2p's
  v1.2 sends an IDONTWANT control message to every mesh peer for every message, however small;
  go-libp2p does so only from 1 KiB, and for our sub-2 KiB offers it doubled the CPU a message
  costs);
  spam protection off (it dropped our own publishes past 10/s), adaptive gossip off (it
  stretched the heartbeat to 30 s), eclipse protection off (its IP-diversity rule fights a
  loopback test mesh). Rate limits and scores are ours (rigmesh.p2p.score).
- The message id is the CID of the message data (an offer's id, in its ``bafy…`` text form),
  so a republished identical offer is one message to the whole network, whoever relays it.
- Topic validators return a bool and also run on our own publishes; ours accepts our own
  publishes (the gossip layer validated them) and hands every other message to the gossip
  layer's handler BEFORE GossipSub forwards it. libp2p's validation-result cache is disabled:
  it is keyed by message id alone, so a rate-limit drop from one peer would have rejected the
  same offer from every other peer for five minutes.
- Yamux: py-libp2p's default (``PY_YAMUX_RELEASE_ON_READ`` on) writes a WINDOW_UPDATE frame
  after every read, one more encrypted frame per gossip message received; we switch it off,
  which gives go-yamux's rule (an update once half the window is consumed).
- Outbound per-peer queues (32) and the subscription channel (32) drop silently when full; both
  are raised (process-wide: py-libp2p reads them from module globals), and the book sync's
  anti-entropy repairs what is still lost.
- Direct protocols: one request per stream, varint-framed, each side bounded by a size limit and
  the whole exchange by a deadline (trio.fail_after).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Sequence
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetConn, INetStream, INetwork, INotifee
from libp2p.crypto.ed25519 import Ed25519PrivateKey
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as create_new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub import pubsub as pubsub_mod
from libp2p.pubsub import rpc_queue
from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.tools.anyio_service import background_trio_service

from rigmesh.p2p import framing
from rigmesh.p2p.network import (
    MAX_REQUEST,
    MAX_RESPONSE,
    REQUEST_TIMEOUT,
    NetworkError,
    RequestHandler,
    TopicHandler,
    Verdict,
    host_of,
)
from rigmesh.wire.cid import message_cid
from rigmesh.wire.errors import Timeout, UnknownProtocol, WireError
from rigmesh.wire.identity import PeerKey, peer_id_to_text

log = logging.getLogger(__name__)

#: Raised from py-libp2p's 32; a full queue drops messages without a word.
OUTBOUND_QUEUE = 1024
SUBSCRIPTION_CHANNEL = 1024
#: How often connected peers missing from pubsub are registered again (see _repair_pubsub).
PUBSUB_REPAIR_INTERVAL = 2.0


class _BigRpcQueue(rpc_queue.RpcQueue):
    def __init__(self, max_size: int = OUTBOUND_QUEUE) -> None:
        super().__init__(max_size)


def _tune_library() -> None:
    # py-libp2p builds these with module-level defaults and offers no parameter.
    pubsub_mod.RpcQueue = _BigRpcQueue  # type: ignore[misc]
    pubsub_mod.SUBSCRIPTION_CHANNEL_SIZE = SUBSCRIPTION_CHANNEL
    # Read by py-libp2p's Yamux at call time; an operator's own setting wins.
    os.environ.setdefault("PY_YAMUX_RELEASE_ON_READ", "0")


def key_pair_from(peer_key: PeerKey) -> KeyPair:
    private = Ed25519PrivateKey.from_bytes(peer_key.seed)
    return KeyPair(private, private.get_public_key())


def make_host(key: PeerKey, *, mdns: bool = False) -> IHost:
    """A py-libp2p host as the node runs it: Noise only, Yamux only (see the module docstring).
    Not started: run it with ``host.run(listen_addrs=...)``."""
    _tune_library()
    kp = key_pair_from(key)
    noise_key = create_new_x25519_key_pair().private_key
    return new_host(
        key_pair=kp,
        sec_opt={NOISE_PROTOCOL_ID: NoiseTransport(kp, noise_privkey=noise_key)},
        muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
        enable_mDNS=mdns,
    )


def _msg_id(msg: rpc_pb2.Message) -> bytes:
    # The text form: GossipSub carries message ids in protobuf `string` fields (IHAVE, IWANT,
    # IDONTWANT), and binary CIDs are not UTF-8. With binary ids the first message went through
    # and control messages then broke per-peer sending, so later messages reached only some peers.
    return message_cid(msg.data).encode()


#: GossipSub versions we speak, best first: v1.1, and v1.0 for peers with nothing newer (no
#: IDONTWANT in either; spec/p2p.md 2.2 says what each gets). v1.2 is left out on purpose.
GOSSIP_PROTOCOLS: tuple[str, ...] = (PROTOCOL_ID_V11, PROTOCOL_ID)


def make_gossipsub(protocols: Sequence[str] = GOSSIP_PROTOCOLS) -> GossipSub:
    return GossipSub(
        protocols=[TProtocol(p) for p in protocols],
        degree=6,
        degree_low=4,
        degree_high=12,
        heartbeat_interval=1,
        heartbeat_initial_delay=0.1,
        time_to_live=60,
        gossip_window=3,
        gossip_history=5,
        spam_protection_enabled=False,
        adaptive_gossip_enabled=False,
        eclipse_protection_enabled=False,
        max_pending_messages_per_peer=1000,
    )


class _BanGate(INotifee):
    """Closes connections from banned peers as soon as they are up (py-libp2p has no gater
    keyed by PeerId)."""

    def __init__(self, net: Libp2pNetwork) -> None:
        self._net = net

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        peer = conn.muxed_conn.peer_id.to_bytes()
        if self._net.is_banned(peer):
            self._net._spawn(self._net._drop, peer)

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        pass

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def listen(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        pass

    async def listen_close(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        pass


class Libp2pNetwork:
    """Implements `rigmesh.p2p.network.Network`. Use `open_libp2p_network` to run one."""

    #: Hosts alive in this process. Dials from two hosts of one process at once stalled in
    #: multistream-select until its 10 s timeout, and pubsub then never registered those peers
    #: (seen with 10 hosts a process; one host dialling many peers at once is fine). A real node
    #: runs one host, so only tests and the benchmark serialize dials, through `_dial_lock`.
    _live = 0
    _dial_lock: trio.Lock | None = None

    def __init__(
        self,
        key: PeerKey,
        *,
        mdns: bool = False,
        gossip_protocols: Sequence[str] = GOSSIP_PROTOCOLS,
    ) -> None:
        self._key = key
        self.host = make_host(key, mdns=mdns)
        self.router = make_gossipsub(gossip_protocols)
        self.pubsub = Pubsub(
            self.host,
            self.router,
            msg_id_constructor=_msg_id,
            validation_cache_ttl=0,
            validation_cache_size=1,
            seen_ttl=120,
        )
        self._banned: dict[bytes, float] = {}
        self._registering: set[bytes] = set()
        self._nursery: trio.Nursery | None = None
        self.host.get_network().register_notifee(_BanGate(self))

    # --- identity -------------------------------------------------------------------------
    @property
    def peer_id(self) -> bytes:
        return self._key.peer_id

    def addrs(self) -> list[str]:
        text = peer_id_to_text(self.peer_id)
        out = []
        for a in self.host.get_addrs():
            s = str(a)
            out.append(s if "/p2p/" in s else f"{s}/p2p/{text}")
        return out

    def _spawn(self, fn: Any, *args: Any) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(fn, *args)

    # --- connections ----------------------------------------------------------------------
    async def _repair_pubsub(self) -> None:
        """Register connected peers that pubsub failed to register.

        py-libp2p opens its pubsub stream to a new peer once, and gives up for good on a
        non-retryable error; with many dials at once (or a starved CPU) the multistream-select
        answer can take over 10 s and the peer then never gets a single gossip message over a
        live connection. Seen here with 10 hosts per process dialling concurrently.
        """
        while True:
            await trio.sleep(PUBSUB_REPAIR_INTERVAL)
            for pid in self.host.get_connected_peers():
                peer = pid.to_bytes()
                if pid in self.pubsub.peers or peer in self._registering or self.is_banned(peer):
                    continue
                self._registering.add(peer)
                self._spawn(self._register, pid)

    async def _register(self, pid: ID) -> None:
        try:
            with contextlib.suppress(Exception):
                await self.pubsub.ensure_peer_stream(pid, timeout=REQUEST_TIMEOUT)
        finally:
            self._registering.discard(pid.to_bytes())

    async def connect(self, addr: str) -> bytes:
        try:
            info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
        except Exception as exc:
            raise NetworkError(f"bad address {addr!r}: {exc}") from None
        peer = info.peer_id.to_bytes()
        if self.is_banned(peer):
            raise NetworkError(f"dial {addr}: peer is banned")
        try:
            if Libp2pNetwork._live > 1:
                if Libp2pNetwork._dial_lock is None:
                    Libp2pNetwork._dial_lock = trio.Lock()
                async with Libp2pNetwork._dial_lock:
                    await self.host.connect(info)
            else:
                await self.host.connect(info)
        except Exception as exc:  # py-libp2p raises many types for one failed dial
            raise NetworkError(f"dial {addr}: {exc}") from None
        return peer

    def peers(self) -> list[bytes]:
        return sorted(p.to_bytes() for p in self.host.get_connected_peers())

    def remote_host(self, peer: bytes) -> str | None:
        for conn in self.host.get_network().get_connections(ID(peer)):
            with contextlib.suppress(Exception):  # a connection closing under us
                for addr in conn.get_transport_addresses():
                    host = host_of(str(addr))
                    if host:
                        return host
        return None

    async def disconnect(self, peer: bytes) -> None:
        with contextlib.suppress(Exception):
            await self.host.disconnect(ID(peer))

    async def _drop(self, peer: bytes) -> None:
        await self.disconnect(peer)

    async def ban(self, peer: bytes, seconds: float) -> None:
        self._banned[peer] = trio.current_time() + seconds
        self.pubsub.add_to_blacklist(ID(peer))
        await self.disconnect(peer)

    def is_banned(self, peer: bytes) -> bool:
        until = self._banned.get(peer)
        if until is None:
            return False
        if trio.current_time() >= until:
            del self._banned[peer]
            self.pubsub.remove_from_blacklist(ID(peer))
            return False
        return True

    # --- gossip ---------------------------------------------------------------------------
    async def subscribe(self, topic: str, handler: TopicHandler) -> None:
        me = self.host.get_id()

        async def validator(forwarder: ID, msg: rpc_pb2.Message) -> bool:
            if forwarder == me:
                return True  # our own publish: the gossip layer validated it before publishing
            try:
                return await handler(forwarder.to_bytes(), msg.data) is Verdict.ACCEPT
            except Exception:
                # A bug in the handler must not read as "valid" and must not kill pubsub.
                log.exception("gossip handler failed")
                return False

        self.pubsub.set_topic_validator(topic, validator, is_async_validator=True)
        sub = await self.pubsub.subscribe(topic)
        # Accepted messages were handled in the validator; drain the channel so it never fills.
        self._spawn(self._drain, sub)

    async def _drain(self, sub: Any) -> None:
        with contextlib.suppress(Exception):
            while True:
                await sub.get()

    async def publish(self, topic: str, data: bytes) -> None:
        await self.pubsub.publish(topic, data)

    async def drain_gossip(self, timeout: float) -> None:
        """Wait (at most `timeout`) until pubsub has written what it queued for its peers: a
        node leaving publishes its withdrawals last. The queues have no event to wait on, so
        this looks every 10 ms."""
        with trio.move_on_after(timeout):
            while any(len(q) for q in self.pubsub.peer_queues.values()):
                await trio.sleep(0.01)
            await trio.sleep(0.05)  # the last message taken may still be in its write

    # --- request/response -----------------------------------------------------------------
    def serve(
        self, protocol: str, handler: RequestHandler, *, max_request: int = MAX_REQUEST
    ) -> None:
        async def on_stream(stream: INetStream) -> None:
            peer = stream.muxed_conn.peer_id.to_bytes()
            if self.is_banned(peer):
                await _reset(stream)
                return
            try:
                with trio.fail_after(REQUEST_TIMEOUT):
                    try:
                        request = await framing.read_frame(stream, max_request)
                        response = await handler(peer, request)
                    except WireError as exc:
                        # A refusal is answered like a request: one frame, then our write side
                        # closes. No reset: one after the write discarded the unread frame
                        # (Yamux), so a slow requester never learnt why (spec/p2p.md 4.3).
                        response = framing.error_frame_for(exc)
                    await stream.write(framing.frame(response))
                    await stream.close()
            except trio.TooSlowError:
                await _reset(stream)
            except Exception as exc:  # stream errors: the peer went away; nothing to answer
                log.debug("serving %s to %s: %r", protocol, peer_id_to_text(peer), exc)
                await _reset(stream)

        self.host.set_stream_handler(TProtocol(protocol), on_stream)

    async def request(
        self,
        peer: bytes,
        protocol: str,
        data: bytes,
        *,
        timeout: float = REQUEST_TIMEOUT,
        max_response: int = MAX_RESPONSE,
    ) -> bytes:
        if self.is_banned(peer):
            raise NetworkError("peer is banned")
        stream: INetStream | None = None
        try:
            with trio.fail_after(timeout):
                try:
                    stream = await self.host.new_stream(ID(peer), [TProtocol(protocol)])
                except Exception as exc:
                    # multistream-select answered "na": the peer does not speak it.
                    if _not_supported(exc):
                        raise UnknownProtocol(protocol) from None
                    raise NetworkError(f"{protocol} to {peer_id_to_text(peer)}: {exc!r}") from None
                try:
                    await stream.write(framing.frame(data))
                    response = await framing.read_frame(stream, max_response)
                except WireError:
                    raise
                except Exception as exc:
                    raise NetworkError(f"{protocol} to {peer_id_to_text(peer)}: {exc!r}") from None
        except trio.TooSlowError:
            if stream is not None:
                await _reset(stream)
            else:
                # Not even a stream opened: the connection is dead (a peer gone without
                # closing it). Drop it, so that the next request dials afresh.
                with trio.CancelScope(shield=True), trio.move_on_after(2), \
                        contextlib.suppress(Exception):
                    await self.host.disconnect(ID(peer))
            raise Timeout(f"{protocol}: no response in {timeout}s") from None
        with contextlib.suppress(Exception):
            await stream.close()  # type: ignore[union-attr]
        return framing.raise_if_error(response)


def _not_supported(exc: BaseException | None) -> bool:
    """py-libp2p wraps the multistream-select refusal in StreamFailure; look down the chain."""
    for _ in range(8):
        if exc is None:
            return False
        if "not supported" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


async def _reset(stream: INetStream) -> None:
    with contextlib.suppress(Exception):
        await stream.reset()


@contextlib.asynccontextmanager
async def open_libp2p_network(
    key: PeerKey,
    listen: Sequence[str] = ("/ip4/127.0.0.1/tcp/0",),
    *,
    mdns: bool = False,
    gossip_protocols: Sequence[str] = GOSSIP_PROTOCOLS,
) -> AsyncIterator[Libp2pNetwork]:
    """Start a host, listen, run pubsub; yield the `Network`; tear everything down on exit."""
    net = Libp2pNetwork(key, mdns=mdns, gossip_protocols=gossip_protocols)
    addrs = [multiaddr.Multiaddr(a) for a in listen]
    Libp2pNetwork._live += 1
    leaving = False
    try:
        async with _running(net, addrs):
            try:
                yield net
            finally:
                leaving = True
    except BaseExceptionGroup as group:
        # py-libp2p's pubsub may take a message while its service stops and fail to start a
        # task for it ("Nursery is closed to new arrivals"): harmless once we are leaving.
        # Anything else, or that error at any other time, goes up unchanged.
        if not leaving or group.subgroup(lambda e: not isinstance(e, BaseExceptionGroup) and not (
                isinstance(e, RuntimeError) and "closed to new arrivals" in str(e))) is not None:
            raise
        log.debug("libp2p: a message arrived while pubsub stopped; dropped")
    finally:
        Libp2pNetwork._live -= 1
        if Libp2pNetwork._live == 0:
            Libp2pNetwork._dial_lock = None  # a lock belongs to one trio run


@contextlib.asynccontextmanager
async def _running(net: Libp2pNetwork, addrs: list[multiaddr.Multiaddr]) -> AsyncIterator[None]:
    async with (
        net.host.run(listen_addrs=addrs),
        background_trio_service(net.pubsub),
        background_trio_service(net.router),
        trio.open_nursery() as nursery,
    ):
        net._nursery = nursery
        await net.pubsub.wait_until_ready()
        nursery.start_soon(net._repair_pubsub)
        try:
            yield
        finally:
            net._nursery = None
            # host.run cancels the swarm without closing its connections: close them (and its
            # listeners) so that peers see this node leave at once (a peer holding a dead
            # connection would open its next stream on it and wait) and no socket outlives it.
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await net.drain_gossip(1.0)
                await net.host.get_network().close()
            nursery.cancel_scope.cancel()
