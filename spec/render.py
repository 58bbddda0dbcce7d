#!/usr/bin/env python3
"""Render the generated sections of spec/*.md from the code's own tables.

Each generated section sits between ``<!-- BEGIN generated:NAME -->`` and
``<!-- END generated:NAME -->``; everything else is written by hand. Run `make spec` after a
change to a transition table, a reason code or a timer; tests/rental/test_spec.py fails while a
section differs from what this script renders (the text cannot drift from the behaviour).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path

from rigmesh.rental import negotiation, usage
from rigmesh.rental.codes import CloseReason, RejectReason
from rigmesh.rental.table import markdown_table, mermaid
from rigmesh.rental.timers import Timers

HERE = Path(__file__).resolve().parent
FILES = ("rental.md",)

_REJECT_MEANING = {
    RejectReason.PRICE_TOO_LOW: "below the provider's minimum price",
    RejectReason.NO_CAPACITY: "the listing's capacity is taken",
    RejectReason.WORKLOAD_NOT_ALLOWED: "kind, program, network access, GPUs or input size",
    RejectReason.TOO_MANY_RENTALS: "this renter holds as many rentals as the provider allows",
    RejectReason.DURATION: "outside the offer's (or provider's) rental length bounds",
    RejectReason.DEPOSIT_TOO_SMALL: "the deposit does not cover the provider's exposure",
    RejectReason.UNKNOWN_OFFER: "no such live offer",
    RejectReason.TERMS: "chain, escrow, token, payee, heartbeat, grace or challenge window",
    RejectReason.ROUNDS_EXCEEDED: "the counter rounds are used up",
    RejectReason.DECLINED: "the other side walks away",
    RejectReason.BUDGET: "the renter's price or deposit cap does not reach the counter",
}


def _codes(enum: type[CloseReason] | type[RejectReason], meaning: Callable[[object], str]) -> str:
    rows = ["| code | name | meaning |", "|---:|---|---|"]
    rows += [f"| {int(c)} | {c.name} | {meaning(c)} |" for c in enum]
    return "\n".join(rows)


def _close_meaning(c: object) -> str:
    assert isinstance(c, CloseReason)
    return f"closed by the {c.closed_by.value}"


def _timers() -> str:
    rows = ["| timer | default | why |", "|---|---:|---|"]
    rows += [f"| `{name}` | {secs} s | {why} |" for name, secs, why in Timers.reasons()]
    return "\n".join(rows)


SECTIONS: dict[str, Callable[[], str]] = {
    "negotiation-table": lambda: markdown_table(negotiation.TABLE, negotiation.NegState),
    "negotiation-diagram": lambda: "```mermaid\n" + mermaid(
        negotiation.TABLE, negotiation.NegState, negotiation.NegState.IDLE) + "\n```",
    "usage-table": lambda: markdown_table(usage.TABLE, usage.UseState),
    "usage-diagram": lambda: "```mermaid\n" + mermaid(
        usage.TABLE, usage.UseState, usage.UseState.STARTING) + "\n```",
    "reject-reasons": lambda: _codes(RejectReason, lambda c: _REJECT_MEANING[c]),  # type: ignore[index]
    "close-reasons": lambda: _codes(CloseReason, _close_meaning),
    "timers": _timers,
}

_BLOCK = re.compile(
    r"(<!-- BEGIN generated:(?P<name>[a-z-]+) -->\n)(?P<body>.*?)"
    r"(<!-- END generated:(?P=name) -->)",
    re.S,
)


def render(text: str) -> str:
    def fill(m: re.Match[str]) -> str:
        return f"{m.group(1)}{SECTIONS[m.group('name')]()}\n{m.group(4)}"

    return _BLOCK.sub(fill, text)


def sections_in(text: str) -> set[str]:
    return {m.group("name") for m in _BLOCK.finditer(text)}


def main(directory: Path = HERE) -> None:
    for name in FILES:
        path = directory / name
        path.write_text(render(path.read_text(encoding="utf-8")), encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
