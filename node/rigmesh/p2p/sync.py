"""The book sync protocol ``/rigmesh/sync/1`` (spec/p2p.md, "Book sync").

A joining node asks a few peers for their current books instead of waiting up to a republish
interval, and every node periodically asks one random peer (anti-entropy), which repairs gossip
that libp2p dropped from a full queue. Paged and bounded: one request asks for at most
`MAX_PAGE` offers after an opaque cursor; the response carries the offers' signed encodings as
is (the requester verifies every one, exactly as it would a gossiped one) and the next cursor.

    sync_req  = {v: 1, kind: "sync_req", chain_id: uint, after: bstr / null, limit: uint}
    sync_page = {v: 1, kind: "sync_page", offers: [* bstr], next: bstr / null}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rigmesh.market.offer import MAX_OFFER_SIZE
from rigmesh.p2p import framing
from rigmesh.wire import fields
from rigmesh.wire.errors import InvalidField, Malformed, TooLarge, WrongChain
from rigmesh.wire.message import open_envelope

REQ_KIND = "sync_req"
PAGE_KIND = "sync_page"
MAX_PAGE = 256
MAX_CURSOR = 128
MAX_REQ_SIZE = 256
#: A full page of maximal offers plus the envelope; below the 1 MiB response limit.
MAX_PAGE_SIZE = MAX_PAGE * (MAX_OFFER_SIZE + 3) + MAX_CURSOR + 64
_REQ_KEYS = frozenset({"v", "kind", "chain_id", "after", "limit"})
_PAGE_KEYS = frozenset({"v", "kind", "offers", "next"})


@dataclass(frozen=True)
class SyncRequest:
    chain_id: int
    after: bytes | None
    limit: int

    def encode(self) -> bytes:
        return framing.envelope(
            REQ_KIND, {"chain_id": self.chain_id, "after": self.after, "limit": self.limit}
        )


@dataclass(frozen=True)
class SyncPage:
    offers: list[bytes]
    next: bytes | None

    def encode(self) -> bytes:
        return framing.envelope(PAGE_KIND, {"offers": self.offers, "next": self.next})


def _cursor(m: dict[str, Any], key: str) -> bytes | None:
    v = m[key]
    if v is None:
        return None
    if type(v) is not bytes:
        raise Malformed(f"{key}: expected bytes or null")
    if not 0 < len(v) <= MAX_CURSOR:
        raise InvalidField(f"{key}: cursor of {len(v)} bytes")
    return v


def decode_request(data: bytes, chain_id: int) -> SyncRequest:
    m = open_envelope(data, max_size=MAX_REQ_SIZE, kinds=frozenset({REQ_KIND}))
    fields.exact_keys(m, _REQ_KEYS, REQ_KIND)
    req = SyncRequest(
        chain_id=fields.uint(m, "chain_id", low=1),
        after=_cursor(m, "after"),
        limit=fields.uint(m, "limit", low=1, high=MAX_PAGE),
    )
    if req.chain_id != chain_id:
        raise WrongChain(f"this node serves chain {chain_id}, not {req.chain_id}")
    return req


def decode_page(data: bytes, limit: int) -> SyncPage:
    m = open_envelope(data, max_size=MAX_PAGE_SIZE, kinds=frozenset({PAGE_KIND}))
    fields.exact_keys(m, _PAGE_KEYS, PAGE_KIND)
    offers = m["offers"]
    if type(offers) is not list:
        raise Malformed("offers: expected array")
    if len(offers) > limit:
        raise TooLarge(f"page of {len(offers)} offers > requested {limit}")
    for o in offers:
        if type(o) is not bytes:
            raise Malformed("offers: expected array of bytes")
        if len(o) > MAX_OFFER_SIZE:
            raise TooLarge(f"offer of {len(o)} bytes")
    return SyncPage(offers=offers, next=_cursor(m, "next"))

