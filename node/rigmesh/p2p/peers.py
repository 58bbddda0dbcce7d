"""Peer exchange ``/rigmesh/peers/1``: how a node that knows one bootstrap peer meets the rest
(spec/p2p.md, "Discovery").

A node with fewer than `target` connections asks a connected peer for others. The request
carries the asker's own listen addresses, so the answerer can pass them on to later askers;
the answer lists up to `limit` other connected peers with the addresses they announced. The
asker dials the ones it is not connected to, concurrently, until it has `target` connections.

Addresses are hints, never trusted: a dial to ``…/p2p/<PeerId>`` is authenticated by the
transport (Noise proves the PeerId; the memory network checks it too), so a lying peer can make
us waste at most `limit` dials per exchange, each under the dial timeout. Only peers that are
connected at the moment and announced themselves are passed on.

    peers_req = {v: 1, kind: "peers_req", addrs: [* tstr], limit: uint}
    peers     = {v: 1, kind: "peers", peers: [* {peer: bstr, addrs: [* tstr]}]}
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from rigmesh.p2p import framing
from rigmesh.p2p.network import Network, NetworkError
from rigmesh.p2p.score import TokenBucket
from rigmesh.wire import fields, identity
from rigmesh.wire.errors import InvalidField, Malformed, RateLimited, TooLarge, WireError
from rigmesh.wire.message import open_envelope

PROTOCOL = "/rigmesh/peers/1"
REQ_KIND = "peers_req"
ANSWER_KIND = "peers"
MAX_PEERS = 32
MAX_ADDRS = 4
MAX_ADDR = 200
MAX_REQ_SIZE = 1024
#: 32 entries of a PeerId and 4 maximal addresses each, plus the envelope.
MAX_ANSWER_SIZE = MAX_PEERS * (identity.PEER_ID_SIZE + MAX_ADDRS * (MAX_ADDR + 2) + 24) + 64
_REQ_KEYS = frozenset({"v", "kind", "addrs", "limit"})
_ANSWER_KEYS = frozenset({"v", "kind", "peers"})
_ENTRY_KEYS = frozenset({"peer", "addrs"})

EventSink = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class PeersRequest:
    addrs: tuple[str, ...]
    """The asker's own listen addresses (may be empty: then it is not passed on)."""
    limit: int

    def encode(self) -> bytes:
        return framing.envelope(REQ_KIND, {"addrs": list(self.addrs), "limit": self.limit})


@dataclass(frozen=True)
class PeerEntry:
    peer: bytes
    addrs: tuple[str, ...]


@dataclass(frozen=True)
class PeersAnswer:
    peers: tuple[PeerEntry, ...]

    def encode(self) -> bytes:
        entries = [{"peer": e.peer, "addrs": list(e.addrs)} for e in self.peers]
        return framing.envelope(ANSWER_KIND, {"peers": entries})


def _addrs(m: dict[str, Any], *, min_count: int) -> tuple[str, ...]:
    v = m["addrs"]
    if type(v) is not list:
        raise Malformed("addrs: expected array")
    if not min_count <= len(v) <= MAX_ADDRS:
        raise InvalidField(f"addrs: {len(v)} addresses, expected {min_count}..{MAX_ADDRS}")
    for a in v:
        if type(a) is not str:
            raise Malformed("addrs: expected array of text")
        if not 0 < len(a.encode()) <= MAX_ADDR:
            raise InvalidField(f"addrs: an address of 1..{MAX_ADDR} bytes expected")
    return tuple(v)


def decode_request(data: bytes) -> PeersRequest:
    m = open_envelope(data, max_size=MAX_REQ_SIZE, kinds=frozenset({REQ_KIND}))
    fields.exact_keys(m, _REQ_KEYS, REQ_KIND)
    return PeersRequest(
        addrs=_addrs(m, min_count=0), limit=fields.uint(m, "limit", low=1, high=MAX_PEERS)
    )


def decode_answer(data: bytes, limit: int) -> PeersAnswer:
    m = open_envelope(data, max_size=MAX_ANSWER_SIZE, kinds=frozenset({ANSWER_KIND}))
    fields.exact_keys(m, _ANSWER_KEYS, ANSWER_KIND)
    raw = m["peers"]
    if type(raw) is not list:
        raise Malformed("peers: expected array")
    if len(raw) > limit:
        raise TooLarge(f"{len(raw)} peers > requested {limit}")
    entries = []
    for e in raw:
        if type(e) is not dict:
            raise Malformed("peers: expected array of maps")
        fields.exact_keys(e, _ENTRY_KEYS, "peer entry")
        peer = fields.fixed_bytes(e, "peer", identity.PEER_ID_SIZE)
        identity.public_key_from_peer_id(peer)
        entries.append(PeerEntry(peer, _addrs(e, min_count=1)))
    return PeersAnswer(tuple(entries))


class PeerExchange:
    """Serves ``/rigmesh/peers/1`` and keeps this node at `target` connections by asking."""

    def __init__(
        self,
        network: Network,
        *,
        target: int = 8,
        interval: float = 30.0,
        rate: float = 1.0,
        rng: random.Random | None = None,
        on_event: EventSink | None = None,
    ) -> None:
        self.network = network
        self.target = target
        self.interval = interval
        self.rate = rate
        """Requests a second we answer one peer, sustained (burst: 5)."""
        self.rng = rng or random.Random()
        self._announced: dict[bytes, tuple[str, ...]] = {}
        self._buckets: dict[bytes, TokenBucket] = {}
        self._on_event = on_event

    def _emit(self, event: str, **kw: Any) -> None:
        if self._on_event is not None:
            self._on_event({"event": event, **kw})

    def start(self) -> None:
        self.network.serve(PROTOCOL, self._serve, max_request=MAX_REQ_SIZE)

    async def run(self) -> None:
        """Ask again every `interval` while below `target`; run in the node's nursery."""
        await trio.sleep(self.rng.random() * self.interval)  # no lockstep across nodes
        while True:
            await self.top_up()
            await trio.sleep(self.interval)

    async def _serve(self, peer: bytes, data: bytes) -> bytes:
        bucket = self._buckets.get(peer)
        if bucket is None:
            bucket = self._buckets[peer] = TokenBucket(self.rate, 5.0)
        if not bucket.take(trio.current_time()):
            raise RateLimited("peer exchange")
        req = decode_request(data)
        connected = set(self.network.peers())
        # Forget peers that left, so the table stays as small as our connection list.
        for gone in [p for p in self._announced if p not in connected]:
            del self._announced[gone]
        for gone in [p for p in self._buckets if p not in connected and p != peer]:
            del self._buckets[gone]
        if req.addrs:
            self._announced[peer] = req.addrs
        known = sorted(p for p in self._announced if p != peer)
        chosen = self.rng.sample(known, min(req.limit, len(known)))
        return PeersAnswer(tuple(PeerEntry(p, self._announced[p]) for p in chosen)).encode()

    async def top_up(self) -> int:
        """If below `target`, ask one random connected peer and dial what it names. Returns the
        number of new connections."""
        peers = self.network.peers()
        if not peers or len(peers) >= self.target:
            return 0
        return await self.exchange(self.rng.choice(peers))

    async def exchange(self, peer: bytes) -> int:
        """Ask `peer` for peers and dial those we lack, up to `target` connections."""
        want = MAX_PEERS
        try:
            raw = await self.network.request(
                peer, PROTOCOL, PeersRequest(tuple(self.network.addrs()), want).encode(),
                max_response=MAX_ANSWER_SIZE,
            )
            answer = decode_answer(raw, want)
        except (WireError, NetworkError) as exc:
            self._emit("peers_failed", peer=identity.peer_id_to_text(peer), error=str(exc))
            return 0
        connected = set(self.network.peers())
        me = self.network.peer_id
        fresh = [
            e for e in answer.peers
            if e.peer != me and e.peer not in connected and not self.network.is_banned(e.peer)
        ]
        room = max(0, self.target - len(connected))
        dialled: list[bytes] = []

        async def dial(entry: PeerEntry) -> None:
            text = identity.peer_id_to_text(entry.peer)
            for addr in entry.addrs:
                # The address must name the peer it is announced for; the dial proves it.
                if not addr.endswith(text):
                    continue
                try:
                    if await self.network.connect(addr) == entry.peer:
                        dialled.append(entry.peer)
                        return
                except (NetworkError, WireError, OSError):
                    continue

        async with trio.open_nursery() as nursery:
            for entry in fresh[:room]:
                nursery.start_soon(dial, entry)
        self._emit("peers_learned", peer=identity.peer_id_to_text(peer), offered=len(answer.peers),
                   dialled=len(dialled))
        return len(dialled)
