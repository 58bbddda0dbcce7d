"""The discrete-event loop: one heap of (time, sequence, callback), virtual time in integer
milliseconds. No threads, no trio, no sleeping: the next event is simply the next one.

Integer milliseconds keep event order exact (no float ties) and repeatable; the protocol's
machines count whole seconds, and get ``start + ms // 1000``. Events at the same millisecond run
in the order they were scheduled, so one seed gives one history.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any


class EventLoop:
    def __init__(self, start: int) -> None:
        #: Unix seconds at t = 0.
        self.start = start
        self.ms = 0
        self._heap: list[tuple[int, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = 0
        self.events = 0

    @property
    def now(self) -> int:
        """Unix seconds, what the protocol machines are given."""
        return self.start + self.ms // 1000

    def at(self, ms: int, fn: Callable[..., None], *args: Any) -> None:
        """Run `fn(*args)` at `ms` (never in the past: then it runs now, after what is due)."""
        self._seq += 1
        heapq.heappush(self._heap, (max(ms, self.ms), self._seq, fn, args))

    def after(self, delay_ms: int, fn: Callable[..., None], *args: Any) -> None:
        self.at(self.ms + delay_ms, fn, *args)

    def at_second(self, unix: int, fn: Callable[..., None], *args: Any) -> None:
        """At the start of Unix second `unix` (a machine's wakeup)."""
        self.at((unix - self.start) * 1000, fn, *args)

    def run(self, until_ms: int, stop: Callable[[], bool] | None = None,
            tick: Callable[[int], None] | None = None, tick_ms: int = 1000) -> None:
        """Run events up to and including `until_ms`, or until `stop()` (checked each tick);
        `tick(ms)` is called about every `tick_ms` of virtual time (progress bars)."""
        heap = self._heap
        pop = heapq.heappop
        next_tick = self.ms + tick_ms
        while heap and heap[0][0] <= until_ms:
            ms, _, fn, args = pop(heap)
            if ms >= next_tick:
                next_tick = ms + tick_ms
                if tick is not None:
                    tick(ms)
                if stop is not None and stop():
                    heapq.heappush(heap, (ms, 0, fn, args))
                    self.ms = ms
                    return
            self.ms = ms
            self.events += 1
            fn(*args)
        self.ms = max(self.ms, until_ms)

    def __len__(self) -> int:
        return len(self._heap)
