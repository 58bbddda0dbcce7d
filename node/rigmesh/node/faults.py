"""Named crash points, in the manner of Core Lightning's ``--dev-disconnect``: a node started with
``faults=("after-persist:receipt",)`` (or ``RIGMESH_FAULT`` in its environment) kills itself
with SIGKILL the first time it reaches that point. The crash matrix test runs a rental once per
point, restarts the node and checks that no token unit was lost.

Points (``<when>-<step>:<what>``), each hit by the node's engine driver:

- ``before-send:<request>`` / ``after-send:<request>``: around a request to the peer (proposal,
  agreement, fund, heartbeat, close, ...), the second once its answer has arrived (before the
  answer is persisted);
- ``before-reply:<kind>``: after persisting, before answering a request (the acceptance an
  `agreement` is, the `receipt` a heartbeat gets, an `ack`);
- ``after-persist:<kind>``: right after a heartbeat or receipt was written to the ledger;
- ``before-submit:<operation>`` / ``after-submit:<operation>``: around an escrow transaction
  (open, openfor, claim, settle, requestclose, finalize, topup), the second once it was mined.
"""

from __future__ import annotations

import os
import signal
import sys

ENV = "RIGMESH_FAULT"


class Faults:
    def __init__(self, points: tuple[str, ...] = ()) -> None:
        env = os.environ.get(ENV, "")
        self.points = set(points) | {p for p in env.split(",") if p}

    def hit(self, point: str) -> None:
        if point in self.points:
            print(f"rigmesh: fault point {point}: killing this node", file=sys.stderr,
                  flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    def __bool__(self) -> bool:
        return bool(self.points)
