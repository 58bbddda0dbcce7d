"""Bounded, line-oriented buffering of a job's stdout and stderr (pure, no I/O).

The runner always drains the child's pipes, so a job that prints faster than the consumer reads can
never block on a full pipe (no deadlock, no backpressure into the job). Memory stays bounded
instead by dropping: when the queue holds `max_bytes`, new lines are dropped and counted, and the
consumer later sees one `OutputDropped` marker saying how many bytes of which stream it missed.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass


class Stream(enum.Enum):
    STDOUT = "stdout"
    STDERR = "stderr"


@dataclass(frozen=True, slots=True)
class OutputLine:
    """One line (with its b"\\n" unless it was cut at `max_line_bytes` or at end of stream)."""

    stream: Stream
    data: bytes
    t_ns: int  # monotonic nanoseconds since the job started, when the runner read it


@dataclass(frozen=True, slots=True)
class OutputDropped:
    """Marker: `nbytes` of `stream` were dropped here because the consumer fell behind."""

    stream: Stream
    nbytes: int
    t_ns: int


OutputEvent = OutputLine | OutputDropped


class LineSplitter:
    """Cuts a byte stream into lines of at most `max_line` bytes; holds at most one partial line."""

    def __init__(self, max_line: int) -> None:
        self._max = max_line
        self._partial = bytearray()

    def feed(self, chunk: bytes) -> list[bytes]:
        out: list[bytes] = []
        start = 0
        while start < len(chunk):
            nl = chunk.find(b"\n", start)
            end = len(chunk) if nl < 0 else nl + 1
            room = self._max - len(self._partial)
            if end - start > room:  # the line is too long: cut it at max_line
                self._partial += chunk[start : start + room]
                out.append(bytes(self._partial))
                self._partial.clear()
                start += room
                continue
            self._partial += chunk[start:end]
            start = end
            if nl >= 0:
                out.append(bytes(self._partial))
                self._partial.clear()
        return out

    def flush(self) -> list[bytes]:
        if not self._partial:
            return []
        line = bytes(self._partial)
        self._partial.clear()
        return [line]


class OutputBuffer:
    """FIFO of output events holding at most `max_bytes` of line payload."""

    def __init__(self, max_bytes: int) -> None:
        self._max = max_bytes
        self._q: deque[OutputEvent] = deque()
        self._held = 0
        self._pending_drop: dict[Stream, int] = {}
        self.total_bytes = {Stream.STDOUT: 0, Stream.STDERR: 0}
        self.dropped_bytes = 0
        self.closed = False

    def push(self, stream: Stream, data: bytes, t_ns: int) -> None:
        self.total_bytes[stream] += len(data)
        if self._held + len(data) > self._max:
            self._pending_drop[stream] = self._pending_drop.get(stream, 0) + len(data)
            self.dropped_bytes += len(data)
            return
        self._flush_markers(t_ns)
        self._q.append(OutputLine(stream, data, t_ns))
        self._held += len(data)

    def _flush_markers(self, t_ns: int) -> None:
        # Markers carry no payload, and at most one per stream sits between accepted lines, so
        # they cannot grow the queue without bound.
        for stream, n in self._pending_drop.items():
            self._q.append(OutputDropped(stream, n, t_ns))
        self._pending_drop.clear()

    def close(self, t_ns: int) -> None:
        self._flush_markers(t_ns)
        self.closed = True

    def pop(self) -> OutputEvent | None:
        if not self._q:
            return None
        ev = self._q.popleft()
        if isinstance(ev, OutputLine):
            self._held -= len(ev.data)
        return ev

    @property
    def held_bytes(self) -> int:
        return self._held
