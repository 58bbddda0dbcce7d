"""Per-peer rate limits and misbehaviour scores for gossip and the direct protocols.

GossipSub's own spam protection and scoring are off (DESIGN.md: they dropped our own publishes
and stretched the heartbeat); this is the replacement. It is pure and takes the clock as an
argument, so the simulator and a real node score identically.

Each rejected message adds a penalty by error code (spec/p2p.md, "Scoring"); penalties decay
exponentially with a half-life. A peer whose decayed penalty reaches `ban_threshold` is banned.
Replayed (a duplicate or an older seq) is not penalized: in gossip it happens to honest peers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rigmesh.wire.errors import ErrorCode, WireError
from rigmesh.wire.identity import peer_id_to_text

if TYPE_CHECKING:
    from rigmesh.p2p.network import Network

#: Penalty per rejected message. Forgery and garbage cost the most; stale or early messages and
#: rate-limit overflows are what an honest but slow or busy peer sends now and then.
PENALTY: dict[ErrorCode, float] = {
    ErrorCode.TooLarge: 10.0,
    ErrorCode.Malformed: 10.0,
    ErrorCode.NotCanonical: 10.0,
    ErrorCode.UnknownVersion: 2.0,
    ErrorCode.UnknownKind: 10.0,
    ErrorCode.BadSignature: 10.0,
    ErrorCode.InvalidField: 10.0,
    ErrorCode.WrongChain: 5.0,
    ErrorCode.Expired: 1.0,
    ErrorCode.NotYetValid: 1.0,
    ErrorCode.RateLimited: 0.5,
    ErrorCode.Replayed: 0.0,
    # A request it left unanswered past the deadline: an honest peer is sometimes just slow.
    ErrorCode.Timeout: 2.0,
}
DEFAULT_PENALTY = 5.0


@dataclass
class TokenBucket:
    rate: float
    """Tokens added per second."""
    burst: float
    """Bucket size."""
    tokens: float = -1.0
    stamp: float = 0.0

    def take(self, now: float, n: float = 1.0) -> bool:
        if self.tokens < 0:
            self.tokens, self.stamp = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= n:
            self.tokens -= n
            return True
        return False


@dataclass
class ScoreConfig:
    rate: float = 200.0
    """Gossip messages a second one peer may forward to us, sustained."""
    burst: float = 2000.0
    """... and in a burst (a republish round of a large book comes as one burst)."""
    half_life: float = 300.0
    ban_threshold: float = 50.0
    ban_seconds: float = 600.0


@dataclass
class _Peer:
    bucket: TokenBucket
    penalty: float = 0.0
    stamp: float = 0.0
    rejected: int = 0


@dataclass
class PeerScores:
    config: ScoreConfig = field(default_factory=ScoreConfig)
    _peers: dict[bytes, _Peer] = field(default_factory=dict)

    def _get(self, peer: bytes) -> _Peer:
        p = self._peers.get(peer)
        if p is None:
            p = self._peers[peer] = _Peer(TokenBucket(self.config.rate, self.config.burst))
        return p

    def allow(self, peer: bytes, now: float) -> bool:
        """Take one token from the peer's bucket."""
        return self._get(peer).bucket.take(now)

    def penalty(self, peer: bytes, now: float) -> float:
        p = self._peers.get(peer)
        if p is None:
            return 0.0
        return p.penalty * math.exp2(-(now - p.stamp) / self.config.half_life)

    def punish(self, peer: bytes, code: ErrorCode, now: float) -> bool:
        """Record a rejected message; True when the peer has now earned a ban."""
        weight = PENALTY.get(code, DEFAULT_PENALTY)
        p = self._get(peer)
        p.penalty = self.penalty(peer, now) + weight
        p.stamp = now
        if weight:
            p.rejected += 1
        return p.penalty >= self.config.ban_threshold

    def forget(self, peer: bytes) -> None:
        self._peers.pop(peer, None)

    def __len__(self) -> int:
        return len(self._peers)


class Penalizer:
    """Counts a peer's rejected message against it and bans it at the threshold: the one place
    gossip, sync and peer exchange hold a peer to its misbehaviour (`PeerScores` decides, the
    `Network` enforces the ban)."""

    def __init__(
        self,
        network: Network,
        scores: PeerScores,
        on_event: Callable[..., None] | None = None,
    ) -> None:
        self.network = network
        self.scores = scores
        self._emit = on_event

    async def __call__(self, peer: bytes, exc: WireError, now: float) -> bool:
        """`now`: the monotonic clock the scores decay on (trio.current_time()). True when the
        peer is banned (now or before)."""
        self._event("rejected", peer=peer_id_to_text(peer), code=exc.code.name)
        if not self.scores.punish(peer, exc.code, now):
            return False
        if not self.network.is_banned(peer):
            await self.network.ban(peer, self.scores.config.ban_seconds)
            self._event("banned", peer=peer_id_to_text(peer))
        return True

    def _event(self, event: str, **kw: Any) -> None:
        if self._emit is not None:
            self._emit(event, **kw)
