#!/usr/bin/env python3
"""What refusing hostile input costs beside what accepting valid input costs, per byte.

Every message a node reads from a peer goes through one entry point per kind (book ingest for
gossiped offers, the sync, peer-exchange and error-frame decoders). For each kind this times
valid messages through the receive path (a sync page: decoded and every offer ingested) and
hostile inputs up to that entry point's size limit: deep nesting, arrays whose heads claim as
many items as bytes follow them, wide arrays of one- and two-byte items, value-sharing tags,
invalid UTF-8, forged signatures. spec/protocol.md section 2: refusing any input should cost
about what reading it costs; target: worst refusal per byte <= 2x the median accept per byte.
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import contextlib

from rigmesh.market.book import CURSOR_SIZE, OfferBook
from rigmesh.market.offer import MAX_OFFER_SIZE
from rigmesh.p2p import framing, peers, sync
from rigmesh.wire.errors import ErrorCode, WireError
from rigmesh.wire.identity import peer_id_to_text
from tests.factories import CHAIN_ID, NOW, Provider

TARGET = 2.0
ERROR_FRAME_LIMIT = 512


def per_byte(fn: Callable[[], object], size: int, *, budget: float = 0.05) -> float:
    """Median seconds per byte of `fn` over rounds of about `budget` seconds each."""
    fn()
    reps = 1
    while True:
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        took = time.perf_counter() - t
        if took > budget / 5 or reps > 1 << 20:
            break
        reps *= 2
    rounds = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        rounds.append((time.perf_counter() - t) / reps / size)
    return statistics.median(rounds)


def refuse(decode: Callable[[bytes], object], data: bytes) -> Callable[[], object]:
    def run() -> None:
        try:
            decode(data)
        except WireError:
            return
        raise AssertionError("hostile input accepted")

    return run


def _head(major: int, n: int) -> bytes:
    if n < 24:
        return bytes((major << 5 | n,))
    if n < 256:
        return bytes((major << 5 | 24, n))
    if n < 65536:
        return bytes((major << 5 | 25,)) + n.to_bytes(2, "big")
    return bytes((major << 5 | 26,)) + n.to_bytes(4, "big")


def hostile(limit: int) -> dict[str, bytes]:
    """Inputs of about `limit` bytes that no decoder should take long over."""
    claims = b""
    while len(claims) < limit - 5:  # each array claims as many items as bytes follow it
        claims = _head(4, len(claims)) + claims
    n2 = (limit - 5) // 2
    return {
        "deep arrays": b"\x81" * (limit - 1) + b"\x00",
        "deep maps": b"\xa1\x61a" * ((limit - 1) // 3) + b"\x00",
        "claimed lengths": claims,
        "wide 1-byte items": _head(4, limit - 5) + b"\x00" * (limit - 5),
        "wide 2-byte items": _head(4, n2) + b"\x18\x20" * n2,
        "wide empty maps": _head(4, limit - 5) + b"\xa0" * (limit - 5),
        # a long byte string first: the scan must skip it to find the tags
        "value-sharing tags": b"\xa2\x61a" + _head(2, limit - 20) + bytes(limit - 20)
        + b"\x61b\xd8\x1c\x81\xd8\x1d\x00",
        "invalid UTF-8": _head(3, limit - 5) + b"\xc3\x28" * ((limit - 5) // 2),
    }


def main() -> None:
    gc.collect()
    gc.freeze()
    providers = [Provider(2000 + i) for i in range(256)]
    offers = [p.signed().encoded for p in providers]
    forged = [o[:-64] + bytes(64) for o in offers]  # a zero Ed25519 signature
    book = OfferBook(chain_id=CHAIN_ID)
    for o in offers:  # the payee bindings are known: the steady state
        book.ingest(o, NOW)
    bindings = book.bindings

    def fresh_book() -> OfferBook:
        return OfferBook(chain_id=CHAIN_ID, bindings=bindings)

    req = sync.SyncRequest(CHAIN_ID, None, sync.MAX_PAGE)
    page = sync.SyncPage(offers, None).encode()
    cursor = providers[0].peer_id + b"\x00"
    assert len(cursor) == CURSOR_SIZE
    addr = f"/ip4/192.0.2.1/tcp/4001/p2p/{peer_id_to_text(providers[0].peer_id)}"
    answer = peers.PeersAnswer(
        tuple(peers.PeerEntry(p.peer_id, (addr,) * 2) for p in providers[:32])
    ).encode()

    def ingest_one(book_box: list[OfferBook], i: list[int]) -> Callable[[], object]:
        def run() -> None:
            if i[0] == len(offers):
                book_box[0], i[0] = fresh_book(), 0
            book_box[0].ingest(offers[i[0]], NOW)
            i[0] += 1

        return run

    def sync_page_ingest() -> None:
        b = fresh_book()
        for o in sync.decode_page(page, req).offers:
            b.ingest(o, NOW)

    accept = {
        "offer (gossip ingest)": (ingest_one([fresh_book()], [0]), len(offers[0])),
        "sync_page (decode + ingest)": (sync_page_ingest, len(page)),
        "sync_req": (lambda: sync.decode_request(
            sync.SyncRequest(CHAIN_ID, cursor, 256).encode(), CHAIN_ID), 0),
        "peers_req": (lambda: peers.decode_request(
            peers.PeersRequest((addr,) * 2, 32).encode()), 0),
        "peers": (lambda: peers.decode_answer(answer, 32), len(answer)),
        "error": (lambda: framing.decode_error(
            framing.encode_error(ErrorCode.RateLimited, "sync pages")), 0),
    }
    sizes = {
        "sync_req": len(sync.SyncRequest(CHAIN_ID, cursor, 256).encode()),
        "peers_req": len(peers.PeersRequest((addr,) * 2, 32).encode()),
        "error": len(framing.encode_error(ErrorCode.RateLimited, "sync pages")),
    }
    print("Refusal cost beside accept cost, per byte (medians of 5 rounds)")
    print("\naccept (valid messages through the receive path)")
    accepted = []
    for name, (fn, size) in accept.items():
        size = size or sizes[name]
        # encoding the request is part of the lambda; it is small next to decoding it
        cost = per_byte(fn, size)
        accepted.append(cost)
        print(f"  {name:30s} {size:>8,} B  {cost * 1e9:8.1f} ns/B")
    median = statistics.median(accepted)
    print(f"  {'median':30s} {'':>10}  {median * 1e9:8.1f} ns/B")

    book_for_refusals = OfferBook(chain_id=CHAIN_ID, bindings=bindings)
    entries: dict[str, tuple[int, Callable[[bytes], object]]] = {
        "offer": (MAX_OFFER_SIZE, lambda d: book_for_refusals.ingest(d, NOW)),
        "sync_page": (sync.MAX_PAGE_SIZE, lambda d: sync.decode_page(d, req)),
        "peers": (peers.MAX_ANSWER_SIZE, lambda d: peers.decode_answer(d, 32)),
        "sync_req": (sync.MAX_REQ_SIZE, lambda d: sync.decode_request(d, CHAIN_ID)),
        "peers_req": (peers.MAX_REQ_SIZE, peers.decode_request),
        "error": (ERROR_FRAME_LIMIT, framing.decode_error),
    }
    print("\nrefuse (hostile input, each up to its entry point's size limit)")
    worst = (0.0, "")
    for kind, (limit, decode) in entries.items():
        cases = hostile(limit)
        if kind == "offer":
            cases["forged signature"] = forged[0]
        for name, data in cases.items():
            data = data[:limit]
            cost = per_byte(refuse(decode, data), len(data))
            worst = max(worst, (cost, f"{kind}: {name}"))
            print(f"  {kind + ': ' + name:40s} {len(data):>8,} B  {cost * 1e9:8.1f} ns/B  "
                  f"{cost / median:5.2f}x")
    forged_page = sync.SyncPage(forged, None).encode()

    def forged_sync() -> None:
        b = fresh_book()
        for o in sync.decode_page(forged_page, req).offers:
            with contextlib.suppress(WireError):
                b.ingest(o, NOW)

    cost = per_byte(forged_sync, len(forged_page))
    worst = max(worst, (cost, "sync_page: 256 forged offers (decode + ingest)"))
    print(f"  {'sync_page: 256 forged offers':40s} {len(forged_page):>8,} B  "
          f"{cost * 1e9:8.1f} ns/B  {cost / median:5.2f}x")
    # Per byte means little for the smallest inputs, where every message pays a fixed cost
    # (an exception, a lookup or two): compare those per message instead.
    tiny = b"\xd8\x1c\x81\xd8\x1d\x00"
    tiny_cost = per_byte(refuse(entries["sync_req"][1], tiny), 1)
    small_accept = min(cost * (size or sizes[name])
                       for (name, (_, size)), cost in zip(accept.items(), accepted, strict=True))
    print(f"\nsmallest inputs, per message: 6-byte value-sharing tags refused in "
          f"{tiny_cost * 1e6:.1f} us; the cheapest valid message accepted in "
          f"{small_accept * 1e6:.1f} us")
    ratio = worst[0] / median
    verdict = "PASS" if ratio <= TARGET else "MISS"
    print(f"\nworst refusal {worst[0] * 1e9:.1f} ns/B ({worst[1]}) vs median accept "
          f"{median * 1e9:.1f} ns/B: ratio {ratio:.2f} (target <= {TARGET:.1f}) {verdict}")


if __name__ == "__main__":
    main()
