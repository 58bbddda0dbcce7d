"""Two nodes the test starts and stops at will, and what both hold, to check balances exactly."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio

from rigmesh.escrow.model import Status
from rigmesh.market.offer import SignedOffer
from rigmesh.node import ChainSettings, NodeConfig, ProviderSettings, open_node
from rigmesh.node.node import Engine, Node, NodeEvent
from rigmesh.rental.codes import CloseReason
from rigmesh.rental.usage import UseState
from rigmesh.store.keys import NodeKeys
from tests.node.conftest import Net, an_offer, new_keys


def closed(e: Engine) -> bool:
    return e.use is not None and e.use.state is UseState.CLOSED


def running_with(amount: int) -> Callable[[Engine], bool]:
    """Running, with a receipt for at least `amount` signed (renter) or held (provider)."""
    return lambda e: (e.use is not None and e.use.state is UseState.RUNNING
                      and e.use.amount >= amount)


async def holdings(node: Node, account: bytes) -> int:
    """What `account` holds of the stablecoin: its wallet plus its free escrow balance."""
    sync = node.escrow.sync
    return await trio.to_thread.run_sync(
        lambda: sync.token_balance(node.token, account) + sync.balance_of(node.token, account),
        limiter=node.escrow.limiter)


@dataclasses.dataclass
class Parties:
    """A provider and a renter whose nodes the test starts and stops at will (each node runs
    in a task of its own, so either can stop first)."""

    net: Net
    pkeys: NodeKeys
    rkeys: NodeKeys
    provider_settings: ProviderSettings
    nursery: trio.Nursery
    provider: Node | None = None
    renter: Node | None = None
    before: tuple[int, int] = (0, 0)
    chains: dict[str, ChainSettings] = dataclasses.field(default_factory=dict)
    """How a role's node watches the chain, where not as `net.settings` says."""
    _stops: dict[str, tuple[trio.Event, trio.Event]] = dataclasses.field(default_factory=dict)

    def _config(self, role: str) -> NodeConfig:
        if role == "provider":
            return self.net.config("provider", self.pkeys, provider=self.provider_settings,
                                   chain=self.chains.get(role))
        assert self.provider is not None
        return self.net.config("renter", self.rkeys, bootstrap=tuple(self.provider.addrs()),
                               chain=self.chains.get(role))

    async def _run(self, role: str, task_status: trio.TaskStatus[Node]) -> None:
        stop, stopped = self._stops[role] = trio.Event(), trio.Event()
        try:
            async with open_node(self._config(role), chain=self.net.chain) as node:
                task_status.started(node)
                await stop.wait()
        finally:
            stopped.set()

    async def start(self, role: str) -> Node:
        node: Node = await self.nursery.start(self._run, role)
        setattr(self, role, node)
        return node

    async def stop(self, role: str) -> None:
        """The node leaves (its tasks cancelled, its jobs stopped); its ledger stays."""
        stop, stopped = self._stops.pop(role)
        stop.set()
        await stopped.wait()

    async def books(self) -> tuple[int, int]:
        """(renter's holdings, provider's holdings), read through whichever node is up."""
        node = self.renter or self.provider
        assert node is not None
        return (await holdings(node, self.rkeys.account.address),
                await holdings(node, self.pkeys.account.address))

    async def settled(self, node: Node, key: bytes, reason: CloseReason) -> tuple[int, int]:
        """Wait for `node`'s side of the rental to close by `reason`; check the chain agrees and
        that the stablecoin moved from renter to provider by exactly what was paid."""
        engine = await node.wait_until(key, closed, timeout=90)
        use = engine.use
        assert use is not None and use.settled is not None, use
        assert use.ended_by() is reason, (use.ended_by(), reason)
        paid, refunded = use.settled
        assert paid + refunded == use.deposit
        state = await node.escrow.rental_state(use.rental_id)
        assert state.status is Status.CLOSED and state.paid == paid
        renter_now, provider_now = await self.books()
        assert renter_now == self.before[0] - paid
        assert provider_now == self.before[1] + paid
        return paid, refunded


@asynccontextmanager
async def parties(net: Net, **policy: object) -> AsyncIterator[Parties]:
    pkeys, rkeys = new_keys(), new_keys()
    net.chain.fund(pkeys.account.address, wei=10**18)
    net.chain.fund(rkeys.account.address, wei=10**18, tokens=10**12)
    async with trio.open_nursery() as nursery:
        yield Parties(net, pkeys, rkeys, net.provider_settings(**policy), nursery)
        nursery.cancel_scope.cancel()


async def started(p: Parties) -> tuple[Node, Node, SignedOffer]:
    provider = await p.start("provider")
    renter = await p.start("renter")
    p.before = await p.books()
    return provider, renter, await an_offer(renter)


async def collect(node: Node, into: list[NodeEvent],
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Keep every event `node` tells its user (the notices with their reasons)."""
    async with node.events() as events:
        task_status.started()
        async for event in events:
            into.append(event)


async def advance_chain(net: Net, node: Node, seconds: int) -> None:
    await trio.to_thread.run_sync(net.chain.advance, seconds, limiter=node.escrow.limiter)
