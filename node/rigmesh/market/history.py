"""Provider reputation from objective history: the escrow contract's public events.

Anyone can read the escrow's logs, so anyone can count, per provider (the payee address an offer
binds to its PeerId, the `provider` of every `Opened`):

- **settled**: rentals the provider closed itself, before the deadline, without the renter
  having asked (the normal end: the provider settles with the last receipt);
- **closed on request**: the renter asked to close (`CloseRequested`) and the rental was then
  closed before the deadline (the provider answered within the challenge window);
- **finalized**: the rental was closed after its deadline (`finalize`, by anyone): the provider
  did not settle in time, so it was paid only what it had claimed before;
- **seconds paid**: per rental, the highest `uptimeSeconds` a claim or settle proved with a
  renter-signed receipt, summed;
- **volume**: what providers were paid in total (`Settled.toProvider`), per token;
- **renters**: how many distinct renter addresses it served.

How a close is told apart: `Settled` carries no reason. A receipt-backed settle is refused after
the deadline and `finalize` is refused before it, so the block time against the rental's deadline
(opened at + max seconds + challenge window, or earlier after a close request) says which it was.
A provider's settle without a receipt after the deadline pays exactly what finalize would: it
counts as finalized.

The score (`score`, 0..1000 like `rigmesh.market.reputation`) is a smoothed share of good
closes. Each settled rental weighs 2 good, each closed-on-request 1 good and 1 bad (the renter
ended it early: a mild signal either way), each finalized 2 bad, and `PRIOR` neutral points on
each side keep a provider with little history near 500:

    score = 1000 * (good + PRIOR) // (good + bad + 2 * PRIOR)

No history gives exactly 500 (`DEFAULT_SCORE`); 100 settled rentals give 954; 10 finalized and
nothing else give 250.

What the chain cannot tell: the escrow charges no fee and does not know who is behind an address,
so a provider can rent to itself from a second address. Each such rental costs it only gas
(deposit, open and settle: a few hundred thousand gas; the measured cost is in the tests) and the
deposit locked for as long as the rental runs; the money itself comes back. The score therefore
counts rentals, never volume or seconds (which self-dealing inflates at no cost beyond locked
capital), and `renters` is shown beside it, but distinct renter addresses cost nothing either.
Nor can the chain tell whether a job did useful work, whether a renter requested a close because
the provider was bad, or why a provider missed a deadline. Treat the score as a floor against
providers that vanish, not as proof of quality.

Pure: `History.apply` takes events and block times; `History.scan` reads them through any reader
with the escrow client's `events` and `block` methods (the caller owns the connection).
Incremental and idempotent: `scan` continues from `next_block`, and an event already applied
(same transaction hash and log index) is skipped, so re-reading overlapping blocks counts nothing
twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from rigmesh.escrow.model import MAX_TIMESTAMP, Event
from rigmesh.market.reputation import MAX_SCORE, Reputation

#: Neutral weight on each side of the score (five rentals' worth at two points each).
PRIOR = 10
GOOD_SETTLED = 2
GOOD_ON_REQUEST = 1
BAD_ON_REQUEST = 1
BAD_FINALIZED = 2


class LogEvent(Protocol):
    """One escrow log (`rigmesh.escrow.client.ChainEvent` has this shape)."""

    @property
    def block_number(self) -> int: ...
    @property
    def log_index(self) -> int: ...
    @property
    def tx_hash(self) -> bytes: ...
    @property
    def event(self) -> Event: ...


class EventReader(Protocol):
    """What `scan` needs from the chain (`rigmesh.escrow.client.EscrowClient` has it)."""

    def events(self, from_block: int = 0, to_block: int | None = None, *,
               confirmations: int = 0) -> Iterable[LogEvent]: ...
    def block(self, number: int) -> tuple[bytes, int]: ...
    def head(self) -> int: ...


@dataclass
class ProviderStats:
    """One provider's record, from the chain alone."""

    provider: bytes
    opened: int = 0
    settled: int = 0
    closed_on_request: int = 0
    finalized: int = 0
    seconds_paid: int = 0
    volume: dict[bytes, int] = field(default_factory=dict)  # token -> base units paid
    renters: set[bytes] = field(default_factory=set)

    @property
    def closed(self) -> int:
        return self.settled + self.closed_on_request + self.finalized

    @property
    def open_now(self) -> int:
        return self.opened - self.closed

    def score(self) -> int:
        return score(self.settled, self.closed_on_request, self.finalized)

    def to_json(self) -> dict[str, object]:
        return {
            "provider": "0x" + self.provider.hex(),
            "opened": self.opened,
            "open_now": self.open_now,
            "settled": self.settled,
            "closed_on_request": self.closed_on_request,
            "finalized": self.finalized,
            "seconds_paid": self.seconds_paid,
            # Amounts as decimal strings: JSON readers that parse numbers as doubles lose
            # base units above 2**53.
            "volume": {"0x" + t.hex(): str(v) for t, v in sorted(self.volume.items())},
            "renters": len(self.renters),
            "score": self.score(),
        }


def score(settled: int, closed_on_request: int, finalized: int) -> int:
    """The 0..1000 score of a record (see the module docstring for the formula)."""
    good = GOOD_SETTLED * settled + GOOD_ON_REQUEST * closed_on_request
    bad = BAD_ON_REQUEST * closed_on_request + BAD_FINALIZED * finalized
    return MAX_SCORE * (good + PRIOR) // (good + bad + 2 * PRIOR)


@dataclass
class _Rental:
    provider: bytes
    deadline: int  # 0 until the Opened block's time is known
    close_requested: bool = False
    uptime: int = 0
    token: bytes = b""
    closed: bool = False


class History:
    """Per-provider counts over the escrow's events, applied in chain order."""

    def __init__(self, start_block: int = 0) -> None:
        self.next_block = start_block
        self.providers: dict[bytes, ProviderStats] = {}
        self._rentals: dict[bytes, _Rental] = {}
        self._applied: set[tuple[bytes, int]] = set()

    def stats(self, provider: bytes) -> ProviderStats:
        return self.providers.get(provider) or ProviderStats(provider)

    def apply(self, events: Iterable[LogEvent], block_time: Mapping[int, int]) -> int:
        """Apply events (in chain order); `block_time[n]` is block n's timestamp, needed for the
        blocks of `Opened` and `Settled`. Returns how many were new."""
        new = 0
        for log in events:
            key = (log.tx_hash, log.log_index)
            if key in self._applied:
                continue
            self._applied.add(key)
            new += 1
            self._apply(log.event, log.block_number, block_time)
        return new

    def _apply(self, event: Event, block: int, block_time: Mapping[int, int]) -> None:
        name = event.name
        a: tuple[Any, ...] = event.args
        if name == "Opened":
            rid, renter, provider, token, _deposit, _price, max_s, window = a[:8]
            deadline = min(block_time[block] + int(max_s) + int(window), MAX_TIMESTAMP)
            self._rentals[rid] = _Rental(provider, deadline, token=token)
            stats = self.providers.setdefault(provider, ProviderStats(provider))
            stats.opened += 1
            stats.renters.add(renter)
            return
        r = self._rentals.get(a[0])
        if r is None or r.closed:
            return  # opened before the scan's first block: its record is incomplete
        if name == "CloseRequested":
            r.close_requested = True
            r.deadline = min(r.deadline, int(a[1]))
        elif name == "Claimed":
            r.uptime = max(r.uptime, int(a[2]))
        elif name == "Settled":
            _rid, to_provider, _to_renter, uptime, _closed_by = a
            r.closed = True
            r.uptime = max(r.uptime, int(uptime))
            stats = self.providers[r.provider]
            if block_time[block] > r.deadline:
                stats.finalized += 1
            elif r.close_requested:
                stats.closed_on_request += 1
            else:
                stats.settled += 1
            stats.seconds_paid += r.uptime
            stats.volume[r.token] = stats.volume.get(r.token, 0) + int(to_provider)

    def scan(self, reader: EventReader, to_block: int | None = None, *,
             confirmations: int = 0) -> int:
        """Read and apply the escrow's events from `next_block` on; returns how many were new."""
        last = reader.head() - confirmations
        if to_block is not None:
            last = min(last, to_block)
        if last < self.next_block:
            return 0
        events = list(reader.events(self.next_block, last))
        times = {
            log.block_number: reader.block(log.block_number)[1]
            for log in events
            if log.event.name in ("Opened", "Settled")
        }
        new = self.apply(events, times)
        self.next_block = last + 1
        return new

    def apply_scores(self, reputation: Reputation, peers: Mapping[bytes, bytes]) -> None:
        """Set `reputation` for each PeerId in `peers` (PeerId -> the payee its offers bind)."""
        for peer, payee in peers.items():
            reputation.set(peer, self.stats(payee).score())
