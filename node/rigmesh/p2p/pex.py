"""The peer-exchange messages of ``/rigmesh/peers/1`` (spec/p2p.md, "Discovery"): codec and
limits, pure. The answering and dialling decisions are in `rigmesh.p2p.policy`, the trio shell
that performs them in `rigmesh.p2p.peers`.

    peers_req = {v: 1, kind: "peers_req", addrs: [* tstr], limit: uint}
    peers     = {v: 1, kind: "peers", peers: [* {peer: bstr, addrs: [* tstr]}]}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rigmesh.p2p import framing
from rigmesh.wire import fields, identity
from rigmesh.wire.errors import InvalidField, Malformed, TooLarge
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
