"""One run, start to finish: a scenario in, the result and its timing out (what `rigmesh sim run`
and every task of a sweep do)."""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable
from typing import Any

from rigsim.chain import Chain
from rigsim.market import Market
from rigsim.scenario import Scenario


def run(sc: Scenario, *, progress: bool = False, chain: Chain | None = None,
        on_tick: Callable[[int, int], None] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Simulate `sc`. Returns (result, timing): the result is a function of the scenario alone
    (the same bytes for the same seed); the timing is this machine's, and only for people."""
    bar = _Bar(sc.name, int(sc["run.duration"])) if progress else None

    def tick(ms: int, duration_ms: int) -> None:
        if bar is not None:
            bar.update(ms)
        if on_tick is not None:
            on_tick(ms, duration_ms)

    wall = time.perf_counter()
    cpu = time.process_time()
    market = Market(sc, chain=chain, tick=tick)
    market.run()
    wall = time.perf_counter() - wall
    cpu = time.process_time() - cpu
    if bar is not None:
        bar.close()
    result = market.recorder.result
    sim_s = result["measures"]["sim_seconds"]
    timing = {
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "sim_s": sim_s,
        "sim_s_per_wall_s": round(sim_s / wall, 1) if wall else None,
        "events": market.loop.events,
        "events_per_wall_s": round(market.loop.events / wall) if wall else None,
        "peak_rss_mib": peak_rss_mib(),
    }
    return result, timing


def peak_rss_mib() -> float:
    """This process's peak resident memory (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


class _Bar:
    """A progress bar over simulated time (tqdm on stderr); the drain phase extends it."""

    def __init__(self, name: str, duration: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=duration, desc=name, unit="sim s", file=sys.stderr,
                        dynamic_ncols=True, mininterval=0.5)
        self.duration = duration
        self.shown = 0

    def update(self, ms: int) -> None:
        s = ms // 1000
        if s > self.duration and self.bar.total is not None:
            # Draining: how long is not known in advance, so the bar just counts on.
            self.bar.total = None
            self.bar.set_description(f"{self.bar.desc} (draining)", refresh=False)
        if s > self.shown:
            self.bar.update(s - self.shown)
            self.shown = s

    def close(self) -> None:
        self.bar.close()
