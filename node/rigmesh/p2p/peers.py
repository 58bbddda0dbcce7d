"""Peer exchange ``/rigmesh/peers/1``: how a node that knows one bootstrap peer meets the rest
(spec/p2p.md, "Discovery").

A node with fewer than `target` connections asks a connected peer for others. The request
carries the asker's own listen addresses, so the answerer can pass them on to later askers;
the answer lists up to `limit` other connected peers with the addresses they announced. The
asker dials the ones it is not connected to, concurrently, until it has `target` connections.

Addresses are hints, never trusted: a dial to ``…/p2p/<PeerId>`` is authenticated by the
transport (Noise proves the PeerId; the memory network checks it too), so a lying answer can make
us waste at most `limit` dials per exchange, each under the dial timeout. What an answerer passes
on is checked first, so nobody can make honest nodes dial a host of its choice: only peers that
are connected at the moment, and of what they announced only the addresses on the host their
connection comes from (`Network.remote_host`), at most `MAX_ADDRS` per peer. Malformed requests
and answers count against the sender (`rigmesh.p2p.score.Penalizer`), as on sync.

The messages are in `rigmesh.p2p.pex` (re-exported here), the decisions (what to answer, whom to
dial) in `rigmesh.p2p.policy`; this is the trio shell that performs them over a `Network`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import trio

from rigmesh.p2p import policy
from rigmesh.p2p.network import Network, NetworkError
from rigmesh.p2p.pex import (
    ANSWER_KIND,
    MAX_ADDR,
    MAX_ADDRS,
    MAX_ANSWER_SIZE,
    MAX_PEERS,
    MAX_REQ_SIZE,
    PROTOCOL,
    REQ_KIND,
    PeerEntry,
    PeersAnswer,
    PeersRequest,
    decode_answer,
    decode_request,
)
from rigmesh.p2p.score import PeerScores, Penalizer
from rigmesh.wire import identity
from rigmesh.wire.errors import WireError

EventSink = Callable[[dict[str, Any]], None]

#: The codec lived here first; its names stay importable from this module.
__all__ = [
    "ANSWER_KIND",
    "MAX_ADDR",
    "MAX_ADDRS",
    "MAX_ANSWER_SIZE",
    "MAX_PEERS",
    "MAX_REQ_SIZE",
    "PROTOCOL",
    "REQ_KIND",
    "PeerEntry",
    "PeerExchange",
    "PeersAnswer",
    "PeersRequest",
    "decode_answer",
    "decode_request",
]


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
        penalize: Penalizer | None = None,
    ) -> None:
        """`penalize`: the node's shared `Penalizer` (the gossip layer's), so misbehaviour here
        and on gossip and sync adds up; by default one of its own."""
        self.network = network
        self.target = target
        self.interval = interval
        self.rate = rate
        """Requests a second we answer one peer, sustained (burst: 5)."""
        self.rng = rng or random.Random()
        self.table = policy.PeerTable(rate)
        self._on_event = on_event
        self.penalize = penalize or Penalizer(network, PeerScores())

    def _emit(self, event: str, **kw: Any) -> None:
        if self._on_event is not None:
            self._on_event({"event": event, **kw})

    def start(self) -> None:
        self.network.serve(PROTOCOL, self._serve, max_request=MAX_REQ_SIZE)

    async def run(self) -> None:
        """Ask again every `interval` while below `target`; run in the node's nursery."""
        await trio.sleep(policy.first_run(self.rng, self.interval))
        while True:
            await self.top_up()
            await trio.sleep(self.interval)

    async def _serve(self, peer: bytes, data: bytes) -> bytes:
        mono = trio.current_time()
        try:
            return self.table.serve(
                peer, data, connected=set(self.network.peers()),
                host=self.network.remote_host(peer), rng=self.rng, mono=mono,
            )
        except WireError as exc:
            await self.penalize(peer, exc, mono)
            raise

    async def top_up(self) -> int:
        """If below `target`, ask one random connected peer and dial what it names. Returns the
        number of new connections."""
        peers = self.network.peers()
        if not policy.wants_peers(len(peers), self.target):
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
            # An error frame it sent is its answer, not garbage; anything else of ours to find
            # (an answer that does not decode, silence, over the limit) counts against it.
            if isinstance(exc, WireError) and not exc.from_peer:
                await self.penalize(peer, exc, trio.current_time())
            return 0
        chosen = policy.to_dial(
            answer, me=self.network.peer_id, connected=set(self.network.peers()),
            is_banned=self.network.is_banned, target=self.target,
        )
        dialled: list[bytes] = []

        async def dial(entry: PeerEntry) -> None:
            for addr in policy.dial_addrs(entry):
                try:
                    if await self.network.connect(addr) == entry.peer:
                        dialled.append(entry.peer)
                        return
                except (NetworkError, WireError, OSError):
                    continue

        async with trio.open_nursery() as nursery:
            for entry in chosen:
                nursery.start_soon(dial, entry)
        self._emit("peers_learned", peer=identity.peer_id_to_text(peer), offered=len(answer.peers),
                   dialled=len(dialled))
        return len(dialled)
