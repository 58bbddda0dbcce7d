"""spec/rental.md's tables, diagrams, reason codes and timers are rendered from the code: the
text fails here the moment it drifts from the behaviour (run `make spec`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from rigmesh.rental import negotiation, usage
from rigmesh.rental.codes import CloseReason
from rigmesh.rental.timers import Timers

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("spec_render", ROOT / "spec" / "render.py")
assert _spec is not None and _spec.loader is not None
render = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(render)
TEXT = (ROOT / "spec" / "rental.md").read_text(encoding="utf-8")


def test_every_generated_section_is_in_the_text() -> None:
    assert render.sections_in(TEXT) == set(render.SECTIONS)


def test_the_text_is_what_the_code_renders() -> None:
    assert render.render(TEXT) == TEXT, "spec/rental.md is stale: run `make spec`"


def test_rendered_sections_show_the_code() -> None:
    # Not only "the same as last time": the rows and values themselves are there.
    for table in (negotiation.TABLE, usage.TABLE):
        for state, row in table.items():
            for (party, event), nxt in row.items():
                assert f"| {state.value} | {party.value} | {event.value} | {nxt.value} |" in TEXT
    for reason in CloseReason:
        assert f"| {int(reason)} | {reason.name} |" in TEXT
    for name, seconds, _ in Timers.reasons():
        assert f"| `{name}` | {seconds} s |" in TEXT


def test_a_changed_row_would_show() -> None:
    row = "| agreed | chain | opened | funded |"
    stale = TEXT.replace(row, "| agreed | chain | opened | agreed |")
    assert stale != TEXT and render.render(stale) == TEXT
