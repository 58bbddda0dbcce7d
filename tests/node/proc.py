"""A node as its own OS process, for tests that kill it: ``python -m tests.node.proc SPEC_JSON``.

The spec (JSON) says who the node is (its keys, its home), where the chain is (an anvil URL and
the deployment), where it listens (a fixed port, so the peer finds it again after a restart),
whom it dials, and whether it provides or rents (``rent``: the job's code and seconds, rented
once: a restarted renter resumes the rental its ledger holds instead). A crash point comes in
``RIGMESH_FAULT`` (rigmesh.node.faults).

The node writes JSON lines on stdout: ``ready``, ``rented``, then one line per notice of a
rental (with the rental's state after it), and at start one ``row`` line per rental its ledger
holds. It stops (leaves `open_node`) when its stdin closes.

`NodeProc` runs one from a trio test and waits on its lines and on its exit.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import trio

from rigmesh.node import ChainSettings, open_node
from rigmesh.node.faults import ENV as FAULT_ENV
from rigmesh.node.node import Engine, Node
from rigmesh.store.keys import NodeKeys
from rigmesh.wire.eip712 import EthKey
from rigmesh.wire.identity import PeerKey, peer_id_to_text
from tests.node.conftest import TIMERS, Net, an_offer, job, wants

ROOT = Path(__file__).resolve().parents[2]
Line = dict[str, Any]


@dataclass(frozen=True)
class Spec:
    home: str
    peer_seed: str
    account: str
    port: int
    rpc: str
    chain_id: int
    escrow: str
    token: str
    provider: bool
    bootstrap: tuple[str, ...] = ()
    rent: tuple[str, int] | None = None  # (the job's Python code, seconds)
    timers: dict[str, int] | None = None  # both sides' changes to the node tests' TIMERS

    @property
    def keys(self) -> NodeKeys:
        return NodeKeys(PeerKey(bytes.fromhex(self.peer_seed)),
                        EthKey(bytes.fromhex(self.account)))

    @property
    def addr(self) -> str:
        return f"/ip4/127.0.0.1/tcp/{self.port}/p2p/{peer_id_to_text(self.keys.peer.peer_id)}"

    def encode(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def decode(cls, text: str) -> Spec:
        d = json.loads(text)
        d["bootstrap"] = tuple(d["bootstrap"])
        d["rent"] = None if d["rent"] is None else tuple(d["rent"])
        return cls(**d)


def summary(engine: Engine) -> Line:
    use = engine.use
    if use is None:
        return {"state": f"negotiation:{engine.neg.state.value}", "ended_by": None}
    ended = use.ended_by()
    return {"state": f"usage:{use.state.value}", "ended_by": None if ended is None else int(ended)}


def emit(line: Line) -> None:
    print(json.dumps(line), flush=True)


async def serve(spec: Spec) -> None:
    settings = ChainSettings(spec.rpc, spec.chain_id, bytes.fromhex(spec.escrow),
                             bytes.fromhex(spec.token), poll=0.2)
    # Net builds a test node's config and provider settings (short timers); no chain needed.
    net = Net(None, settings, Path(spec.home).parent)  # type: ignore[arg-type]
    timers = replace(TIMERS, **(spec.timers or {}))
    provider = None
    if spec.provider:
        provider = net.provider_settings()
        provider = replace(provider, policy=replace(provider.policy, timers=timers))
    config = net.config(Path(spec.home).name, spec.keys, bootstrap=spec.bootstrap,
                        provider=provider)
    config = replace(config, listen=(f"/ip4/127.0.0.1/tcp/{spec.port}",))
    async with open_node(config) as node, trio.open_nursery() as nursery:
        await nursery.start(_notices, node)
        # After subscribing: what ended before is in the ledger, what ends after is a notice.
        for row in node.ledger.rentals():
            emit({"event": "row", "key": row.key.hex(), "state": row.state,
                  "ended_by": row.ended_by})
        emit({"event": "ready", "peer": node.peer_id.hex()})
        if spec.rent is not None and not node.ledger.rentals(role="renter"):
            code, seconds = spec.rent
            offer = await an_offer(node)
            key = await node.rent(offer, replace(wants(job(code), seconds=seconds),
                                                 timers=timers))
            emit({"event": "rented", "key": key.hex()})
        stdin = trio.lowlevel.FdStream(os.dup(0))
        while await stdin.receive_some():
            pass
        nursery.cancel_scope.cancel()


async def _notices(node: Node, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                   ) -> None:
    async with node.events() as events:
        task_status.started()
        async for ev in events:
            engine = node.engine(ev.rental)
            emit({"event": "notice", "key": ev.rental.hex(), "kind": ev.kind, "text": ev.text,
                  **({} if engine is None else summary(engine))})


class NodeProc:
    """One run of a node process: its lines as they come, its exit."""

    def __init__(self, spec: Spec, *, fault: str | None = None) -> None:
        self.spec = spec
        self.fault = fault
        self.lines: list[Line] = []
        self.returncode: int | None = None
        self._changed = trio.Event()
        self._proc: trio.Process | None = None
        self.stderr = Path(spec.home + f".{len(list(Path(spec.home).parent.glob('*.log')))}.log")

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        env = {**os.environ, "PYTHONPATH": f"{ROOT / 'node'}:{ROOT}"}
        env.pop(FAULT_ENV, None)
        if self.fault is not None:
            env[FAULT_ENV] = self.fault
        self.stderr.parent.mkdir(parents=True, exist_ok=True)
        with self.stderr.open("wb") as err:
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "tests.node.proc", self.spec.encode()], cwd=ROOT,
                env=env, stdin=-1, stdout=-1, stderr=err)
        self._proc = proc
        task_status.started()
        assert proc.stdout is not None
        buffer = b""
        async for data in proc.stdout:
            buffer += data
            *complete, buffer = buffer.split(b"\n")
            for raw in complete:
                if raw.startswith(b"{"):
                    self.lines.append(json.loads(raw))
            self._changed.set()
            self._changed = trio.Event()
        self.returncode = await proc.wait()
        self._changed.set()

    async def wait_for(self, pred: Callable[[Line], bool], timeout: float = 60) -> Line:
        """The first line that satisfies `pred` (waiting for it); fails if the node exits."""
        with trio.fail_after(timeout):
            while True:
                found = next((x for x in self.lines if pred(x)), None)
                if found is not None:
                    return found
                if self.returncode is not None:
                    raise AssertionError(f"node exited with {self.returncode}: {self.tail()}")
                await self._changed.wait()

    async def died(self, timeout: float = 60) -> int:
        with trio.fail_after(timeout):
            while self.returncode is None:
                await self._changed.wait()
        return self.returncode

    async def close_stdin(self) -> None:
        """The node leaves open_node (then exits: wait with `died`)."""
        if self._proc is not None and self._proc.stdin is not None:
            await self._proc.stdin.aclose()

    def kill(self) -> None:
        if self._proc is not None and self.returncode is None:
            self._proc.kill()

    def tail(self) -> str:
        return self.stderr.read_text(errors="replace")[-3000:] if self.stderr.exists() else ""


#: The states a rental ends in: closed after use, or a negotiation that never became one.
ENDED = ("usage:closed", "negotiation:rejected", "negotiation:expired")


def ended(key: str) -> Callable[[Line], bool]:
    """A line saying rental `key` has ended (a notice, or a ledger row at start)."""
    return lambda x: x.get("key") == key and x.get("state") in ENDED


if __name__ == "__main__":
    # The node's log, with times, goes to stderr (a file per run: NodeProc.stderr).
    logging.basicConfig(level=logging.DEBUG if os.environ.get("RIGMESH_DEBUG") else logging.INFO,
                        format="%(asctime)s %(name)s %(message)s")
    trio.run(serve, Spec.decode(sys.argv[1]))
