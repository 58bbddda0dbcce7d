"""A node's local opinion of providers: an integer score 0..1000 per provider PeerId.

Reputation is local and unsigned: each renter keeps its own table, fed by what it saw itself
(settlement events: a rental that ran to its end, a provider that stopped heartbeating). Nothing
here crosses the wire. Unknown providers start at `DEFAULT_SCORE` (500, neutral): a new provider is
neither trusted nor punished, and `min_reputation` above 500 means "only providers I have good
experience with".

The offer book ranks by reputation (market/query.py, ``Sort.SCORE``) and keeps an index of that
ranking, so it subscribes to changes here (`subscribe`) instead of polling.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable

MIN_SCORE = 0
MAX_SCORE = 1000
DEFAULT_SCORE = 500

#: Called with (provider, old score, new score) after a score changed.
Listener = Callable[[bytes, int, int], None]


class Reputation:
    """provider PeerId bytes -> integer score in [MIN_SCORE, MAX_SCORE]."""

    def __init__(self, default: int = DEFAULT_SCORE) -> None:
        _check_score(default)
        self.default = default
        self._scores: dict[bytes, int] = {}
        # Bound methods are held weakly: an offer book that subscribed and was dropped (a
        # simulation creates thousands) must not stay alive through this table.
        self._listeners: list[Callable[[], Listener | None]] = []

    def score(self, provider: bytes) -> int:
        return self._scores.get(provider, self.default)

    def set(self, provider: bytes, score: int) -> None:
        _check_score(score)
        old = self.score(provider)
        if score == self.default:
            # Keep the table to the providers we actually have an opinion on.
            self._scores.pop(provider, None)
        else:
            self._scores[provider] = score
        if old != score:
            for ref in list(self._listeners):
                listener = ref()
                if listener is None:
                    self._listeners.remove(ref)
                else:
                    listener(provider, old, score)

    def adjust(self, provider: bytes, delta: int) -> int:
        """Add `delta` (positive: good settlement, negative: a failure), clamped; returns the new
        score. Settlement handling decides the deltas; the table only keeps the bounds."""
        if type(delta) is not int:
            raise TypeError("a reputation delta is an int")
        new = min(MAX_SCORE, max(MIN_SCORE, self.score(provider) + delta))
        self.set(provider, new)
        return new

    def subscribe(self, listener: Listener) -> None:
        if inspect.ismethod(listener):
            self._listeners.append(weakref.WeakMethod(listener))
        else:
            self._listeners.append(lambda: listener)

    def unsubscribe(self, listener: Listener) -> None:
        for ref in self._listeners:
            if ref() == listener:
                self._listeners.remove(ref)
                return
        raise ValueError("not subscribed")

    def __len__(self) -> int:
        return len(self._scores)


def _check_score(score: int) -> None:
    # A score comes from our own settlement code, never from a peer: a bad one is our bug.
    if type(score) is not int or not MIN_SCORE <= score <= MAX_SCORE:
        raise ValueError(f"reputation score must be an int in [{MIN_SCORE}, {MAX_SCORE}]")
