"""The one network interface the protocol core and the node use.

Two implementations: `rigmesh.p2p.host.Libp2pNetwork` (py-libp2p over TCP, Noise, Yamux,
GossipSub) and `rigmesh.p2p.memory.MemoryNetwork` (trio memory, virtual time, seeded loss and
latency). Everything above this file (gossip, sync, negotiation) is written against `Network`
only, so the tests run the same code as a real node (the simulator calls the decisions under it,
`rigmesh.p2p.policy`).

Peers are named by their 38-byte PeerId bytes (rigmesh.wire.identity), never by a library type.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

#: Topic of the offer gossip of one chain (spec/p2p.md, "Topics").
OFFER_TOPIC_PREFIX = "/rigmesh/offers/1/chain/"
#: Direct protocols. negotiate and usage are reserved for the rental lifecycle.
SYNC_PROTOCOL = "/rigmesh/sync/1"
NEGOTIATE_PROTOCOL = "/rigmesh/negotiate/1"
USAGE_PROTOCOL = "/rigmesh/usage/1"

#: Default size limits of one direct-protocol frame.
MAX_REQUEST = 64 * 1024
MAX_RESPONSE = 1024 * 1024
#: Default deadline of one request/response exchange, seconds.
REQUEST_TIMEOUT = 10.0


def offer_topic(chain_id: int) -> str:
    return f"{OFFER_TOPIC_PREFIX}{chain_id}"


def host_of(addr: str) -> str:
    """The host part of a multiaddr, its first two components (``/ip4/10.0.0.1``,
    ``/dns4/example.org``, ``/memory/<PeerId>``); "" if it has fewer."""
    parts = addr.split("/")
    return "/".join(parts[:3]) if len(parts) >= 3 and not parts[0] and parts[2] else ""


class Verdict(enum.Enum):
    """What a topic handler decided about one gossip message.

    ACCEPT: valid and new; deliver and forward. IGNORE: drop without forwarding, no fault of the
    sender (a duplicate, or a newer offer already held). REJECT: drop, the sender misbehaved.
    Scoring is the handler's business; the network only forwards ACCEPTed messages.
    """

    ACCEPT = "accept"
    IGNORE = "ignore"
    REJECT = "reject"


#: Called for every gossip message the network has not seen before, with the peer that sent it
#: to us (the forwarder, not the origin), BEFORE the message is forwarded to anyone.
TopicHandler = Callable[[bytes, bytes], Awaitable[Verdict]]
#: Serves one request: (peer, request bytes) -> response bytes. Raising a `WireError` sends the
#: peer a typed error frame instead (spec/p2p.md 4.3).
RequestHandler = Callable[[bytes, bytes], Awaitable[bytes]]


class NetworkError(Exception):
    """A transport-level failure (cannot dial, stream reset, peer gone). Not the peer's protocol
    error: those arrive as `WireError`s decoded from an error frame."""


@runtime_checkable
class Network(Protocol):
    @property
    def peer_id(self) -> bytes:
        """Our own PeerId bytes."""
        ...

    def addrs(self) -> list[str]:
        """Addresses other peers can `connect` to (libp2p: multiaddrs ending in /p2p/<id>)."""
        ...

    async def subscribe(self, topic: str, handler: TopicHandler) -> None:
        """Join `topic`; `handler` validates every new message before it is forwarded."""
        ...

    async def publish(self, topic: str, data: bytes) -> None:
        """Send `data` to the topic. The caller validated it: the network does not."""
        ...

    async def request(
        self,
        peer: bytes,
        protocol: str,
        data: bytes,
        *,
        timeout: float = REQUEST_TIMEOUT,
        max_response: int = MAX_RESPONSE,
    ) -> bytes:
        """One request, one response, on a fresh stream. Raises NetworkError, a `WireError` the
        peer sent in an error frame, `Timeout` past `timeout`, `TooLarge` past `max_response`."""
        ...

    def serve(
        self, protocol: str, handler: RequestHandler, *, max_request: int = MAX_REQUEST
    ) -> None:
        ...

    async def connect(self, addr: str) -> bytes:
        """Dial `addr` (unless connected already) and return the peer's id."""
        ...

    def peers(self) -> list[bytes]:
        """Connected peers, in a deterministic order (sorted)."""
        ...

    def remote_host(self, peer: bytes) -> str | None:
        """`host_of` the address our connection to `peer` runs to (inbound or outbound), or None
        when not connected: the host a peer has shown it is on."""
        ...

    async def disconnect(self, peer: bytes) -> None:
        ...

    async def ban(self, peer: bytes, seconds: float) -> None:
        """Disconnect `peer` and refuse it (dials both ways, gossip, requests) for `seconds`."""
        ...

    def is_banned(self, peer: bytes) -> bool:
        ...
