"""Small scenarios for the suite: every mechanism present, a few seconds each."""

from __future__ import annotations

from typing import Any

from rigsim import scenario
from rigsim.scenario import Scenario

#: A small market with a bit of everything: loss, churn, every adversary, spam.
MIXED: dict[str, dict[str, Any]] = {
    "run": {"name": "mixed", "seed": 7, "duration": 1200},
    "providers": {"count": 40},
    "renters": {"count": 120},
    "demand": {"rate": 240, "duration": {"dist": "uniform", "low": 300, "high": 900}},
    "network": {"loss": 0.02, "traced_offers": 6},
    "churn": {"share": 0.1, "online": {"dist": "exponential", "mean": 600},
              "offline": {"dist": "exponential", "mean": 60}},
    "adversaries": {"vanish": 0.1, "gpu_lie": 0.1, "job_dead": 0.1, "never_start": 0.1,
                    "withhold": 0.2, "spam": 0.02},
}


def small(changes: dict[str, Any] | None = None, base: dict[str, Any] | None = None) -> Scenario:
    sc = scenario.from_dict(base if base is not None else MIXED)
    return sc.apply(changes) if changes else sc
