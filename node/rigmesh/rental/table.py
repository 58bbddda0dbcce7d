"""What the rental machines share: a transition table, and h11's split of protocol errors.

Each machine (negotiation.py, usage.py) is one table of ``state -> {(party, event): next
state}``, the same for both roles: the machine does not know which role it plays when it checks a
move, so the renter and the provider are held to one rule. Anything the table does not list is
refused:

- when we try it (`Machine.send`), it is our bug: `LocalProtocolError`, loudly;
- when the peer does (`Machine.receive`), it is the peer's fault: a `WireError`
  (`UnexpectedMessage` for a move the table does not allow, or the code of the rule the message
  broke), which the shell answers with an error frame and counts against the peer's score.

spec/rental.md's tables and state diagrams are rendered from these tables (`markdown_table`,
`mermaid`); a test fails when the text drifts from the code.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Generic, TypeVar

from rigmesh.rental.codes import Party
from rigmesh.wire.errors import UnexpectedMessage, WireError

S = TypeVar("S", bound=enum.Enum)
E = TypeVar("E", bound=enum.Enum)
Table = Mapping[S, Mapping[tuple[Party, E], S]]


class LocalProtocolError(Exception):
    """We tried a move the table does not allow, or built a message the rules refuse: a bug in
    this node, never the peer's doing."""


class Machine(Generic[S, E]):
    """A state, a role and a table; subclasses add what each event must satisfy."""

    TABLE: Table  # type: ignore[type-arg]
    #: States with no way out.
    TERMINAL: frozenset[S]  # type: ignore[misc]

    def __init__(self, role: Party, state: S) -> None:
        if role not in (Party.RENTER, Party.PROVIDER):
            raise ValueError("a machine is held by the renter or the provider")
        self.role = role
        self.state = state

    @property
    def peer(self) -> Party:
        return self.role.other

    def allows(self, party: Party, event: E) -> bool:
        return (party, event) in self.TABLE.get(self.state, {})

    def _move(self, party: Party, event: E) -> S:
        """The next state, or UnexpectedMessage (which `send` turns into our bug)."""
        nxt = self.TABLE.get(self.state, {}).get((party, event))
        if nxt is None:
            raise UnexpectedMessage(
                f"{party.value} {event.value} not allowed in {self.state.value}"
            )
        return nxt


def local(exc: WireError) -> LocalProtocolError:
    """A rule we broke ourselves."""
    return LocalProtocolError(f"{exc.code.name}: {exc.detail}")


def markdown_table(table: Table, states: type[enum.Enum]) -> str:  # type: ignore[type-arg]
    """Every row of `table` as a Markdown table, states in declaration order."""
    rows = ["| state | party | event | next state |", "|---|---|---|---|"]
    for state in states:
        for (party, event), nxt in table.get(state, {}).items():
            rows.append(f"| {state.value} | {party.value} | {event.value} | {nxt.value} |")
    return "\n".join(rows)


def mermaid(table: Table, states: type[enum.Enum], initial: enum.Enum) -> str:  # type: ignore[type-arg]
    """A Mermaid state diagram of `table` (one edge per state pair, its events as the label)."""
    edges: dict[tuple[str, str], list[str]] = {}
    for state in states:
        for (party, event), nxt in table.get(state, {}).items():
            edges.setdefault((state.value, nxt.value), []).append(f"{party.value} {event.value}")
    lines = ["stateDiagram-v2", f"    [*] --> {initial.value}"]
    for (a, b), labels in edges.items():
        lines.append(f"    {a} --> {b}: {', '.join(labels)}")
    return "\n".join(lines)
