"""What the two role engines share: an outbox of requests that are retried until answered, and
the chain operations in flight.

A request (`Send`) stays in the outbox under its key until its answer arrives; `due` re-emits
it every `retry` seconds. A chain operation (`Submit`) stays until the shell reports it mined,
or refused for good; a transient failure is submitted again after `tx_retry` seconds. Both are
part of the engine's snapshot, so a restarted node resends what it had not finished.
"""

from __future__ import annotations

from typing import Any

from rigmesh.rental.actions import Action, Channel, Send, Submit


class Outbox:
    def __init__(self, retry: int, tx_retry: int) -> None:
        self.retry = retry
        self.tx_retry = tx_retry
        self.requests: dict[str, tuple[Send, int]] = {}  # key -> (request, next try)
        self.ops: dict[str, tuple[Submit, int | None]] = {}  # op_id -> (op, retry at; None: out)
        #: Operations mined: an op_id is done once (a later submit of it is a no-op).
        self.done: set[str] = set()

    def send(self, request: Send, now: int, out: list[Action]) -> None:
        self.requests[request.key] = (request, now + self.retry)
        out.append(request)

    def answered(self, key: str) -> None:
        self.requests.pop(key, None)

    def submit(self, submit: Submit, out: list[Action]) -> None:
        if submit.op_id in self.ops or submit.op_id in self.done:
            return  # already on its way (or waiting for its retry), or mined
        self.ops[submit.op_id] = (submit, None)
        out.append(submit)

    def submitted(self, op_id: str, *, ok: bool, retry: bool, now: int) -> None:
        if op_id not in self.ops:
            return
        if ok:
            self.done.add(op_id)
        if ok or not retry:
            del self.ops[op_id]
        else:
            self.ops[op_id] = (self.ops[op_id][0], now + self.tx_retry)

    def drop_ops(self, prefix: str) -> None:
        for op_id in [k for k in self.ops if k.startswith(prefix)]:
            del self.ops[op_id]

    def due(self, now: int, out: list[Action]) -> None:
        for key, (request, at) in list(self.requests.items()):
            if at <= now:
                self.requests[key] = (request, now + self.retry)
                out.append(request)
        for op_id, (submit, at) in list(self.ops.items()):
            if at is not None and at <= now:
                self.ops[op_id] = (submit, None)
                out.append(submit)

    def next_wakeup(self) -> int | None:
        times = [at for _, at in self.requests.values()]
        times += [at for _, at in self.ops.values() if at is not None]
        return min(times) if times else None

    # -- persistence --------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": [[k, r.to, r.channel.value, r.message, at]
                         for k, (r, at) in self.requests.items()],
            "ops": list(self.ops),
            "done": sorted(self.done),
        }

    def restore(self, snap: dict[str, Any], ops: dict[str, Submit], now: int) -> None:
        """Requests come back due at once; operations are rebuilt by the engine (`ops`: the ones
        it still wants, by op_id) and submitted again at once (the chain client's journal makes
        that a rebroadcast of the same transaction, never a second payment)."""
        self.requests = {
            k: (Send(to, Channel(ch), msg, k), now) for k, to, ch, msg, _ in snap["requests"]
        }
        self.ops = {op_id: (ops[op_id], now) for op_id in snap["ops"] if op_id in ops}
        self.done = set(snap["done"])
