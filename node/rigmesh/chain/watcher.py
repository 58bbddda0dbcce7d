"""The chain watcher: the escrow's events, each applied once, only at a confirmation depth.

Every `poll` it reads the escrow's logs from just past its cursor up to `head - confirmations`,
turns each into the rental engines' event (`rigmesh.rental.actions.chain_event`) and hands it to
the node, then marks the events applied and moves its cursor (block number and hash) in one
ledger commit. So:

- an event is seen only once it is `confirmations` blocks deep: a reorganization shallower than
  that removes it before anyone acted on it;
- a replayed event (a restart between applying and committing, an overlapping read) is never
  applied twice: applied events are kept by (transaction hash, log index), and the engines
  treat a repeated chain event as a no-op as well;
- a reorganization deeper than the depth is detected (the cursor's block hash changed) and
  reported; the watcher then re-reads from before it. What was applied from the dropped blocks
  stays applied (raise `confirmations` on chains where that happens).

The node's chain-anchored clock reads the newest block time the watcher saw (`chain_time`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from rigmesh.escrow.client import AsyncEscrowClient
from rigmesh.rental.actions import ChainEvent, chain_event
from rigmesh.store.ledger import Ledger

log = logging.getLogger(__name__)

#: How far back to re-read after a reorganization deeper than the confirmation depth.
REWIND = 64


@dataclass(frozen=True)
class Applied:
    """Where an applied event came from (for the ledger and for reconciliation)."""

    block: int
    log_index: int
    tx_hash: bytes


class ChainWatcher:
    def __init__(
        self,
        client: AsyncEscrowClient,
        ledger: Ledger,
        on_event: Callable[[ChainEvent, Applied], Awaitable[None]],
        *,
        confirmations: int = 0,
        poll: float = 1.0,
        start_block: int = 0,
    ) -> None:
        self.client = client
        self.ledger = ledger
        self.on_event = on_event
        self.confirmations = confirmations
        self.poll_interval = poll
        self.start_block = start_block
        self.chain_time = 0
        self.reorgs = 0
        self.polled = trio.Event()  # set after each completed poll (tests wait on it)
        self._reading = trio.Lock()  # one poll at a time: an event is applied once

    async def run(self) -> None:
        while True:
            try:
                await self.poll()
            except (OSError, ConnectionError) as exc:  # the chain node is unreachable: retry
                log.warning("chain watcher: %s", exc)
            await trio.sleep(self.poll_interval)

    async def poll(self) -> int:
        """Apply what became confirmed since the last poll; returns how many events. Besides
        the loop of `run`, the node polls at once when a peer's message shows the chain has
        moved (a heartbeat for a rental this node has not seen funded yet)."""
        async with self._reading:
            return await self._poll()

    async def _poll(self) -> int:
        head = await self.client.head()
        _, latest = await self.client.block(head)
        self.chain_time = max(self.chain_time, latest)
        cursor = self.ledger.cursor()
        start = self.start_block if cursor is None else cursor[0] + 1
        if cursor is not None and cursor[0] <= head:
            block_hash, _ = await self.client.block(cursor[0])
            if block_hash != cursor[1]:
                self.reorgs += 1
                start = max(self.start_block, cursor[0] - REWIND)
                log.error("chain reorganized below the confirmation depth at block %d: "
                          "re-reading from %d", cursor[0], start)
        elif cursor is not None:
            start = max(self.start_block, head - REWIND)  # the chain went backwards: re-read
        safe = head - self.confirmations
        if safe < start:
            self._done()
            return 0
        events = await self.client.events(start, safe)
        applied: list[tuple[bytes, int, int]] = []
        times: dict[int, int] = {}
        for ev in events:
            if self.ledger.applied(ev.tx_hash, ev.log_index):
                continue
            if ev.block_number not in times:
                times[ev.block_number] = (await self.client.block(ev.block_number))[1]
            converted = chain_event(ev.event, times[ev.block_number])
            if converted is not None:
                await self.on_event(converted, Applied(ev.block_number, ev.log_index, ev.tx_hash))
            applied.append((ev.tx_hash, ev.log_index, ev.block_number))
        safe_hash, _ = await self.client.block(safe)
        await trio.to_thread.run_sync(self.ledger.advance, safe, safe_hash, applied)
        self._done()
        return len(applied)

    def _done(self) -> None:
        self.polled.set()
        self.polled = trio.Event()
