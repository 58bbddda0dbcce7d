"""Sweeps: a grid of parameter points times seeds, run in parallel with dask, written as one set
of tables and plots.

A sweep file names a base scenario, the seeds, and the grid:

    base = "baseline"            # a shipped scenario, or a path relative to this file
    seeds = [1, 2, 3]
    [set]                        # optional: changes for every run
    "run.duration" = 1800
    [grid]                       # every combination of these values is one point
    "adversaries.withhold" = [0.0, 0.1, 0.2]
    "network.loss" = [0.0, 0.05]

Runs go to a dask cluster: a `LocalCluster` of worker processes on this machine by default, or
an existing scheduler by address (``tcp://host:8786``), whose workers must be able to import
`rigsim` and `rigmesh` (install the project and put ``simulations/`` on their PYTHONPATH, as
`rigmesh sim` does for itself). Each task is one run, independent of where it runs: its result
depends on its scenario and seed only, so a sweep on a laptop and on a cluster writes the same
tables.
"""

from __future__ import annotations

import itertools
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rigsim import scenario as scenario_mod
from rigsim.report import Run
from rigsim.scenario import Scenario, ScenarioError


@dataclass(frozen=True)
class Task:
    """One run of a sweep: picklable, so it can go to any worker."""

    run_id: str
    label: str
    point: int
    seed: int
    data: dict[str, dict[str, Any]]


@dataclass
class Sweep:
    name: str
    base: Scenario
    seeds: list[int]
    grid: dict[str, list[Any]]

    def tasks(self) -> list[Task]:
        keys = list(self.grid)
        out = []
        for point, values in enumerate(itertools.product(*(self.grid[k] for k in keys))):
            changes = dict(zip(keys, values, strict=True))
            label = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in changes.items())
            for seed in self.seeds:
                sc = self.base.apply({**changes, "run.seed": seed})
                out.append(Task(f"p{point:03d}-s{seed}", label, point, seed, sc.data))
        return out


def load(path: str | Path) -> Sweep:
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{p}: {exc}") from None
    unknown = set(raw) - {"base", "seeds", "set", "grid", "name"}
    if unknown:
        raise ScenarioError(f"{p}: unknown sweep keys {sorted(unknown)}")
    base_name = str(raw.get("base", "baseline"))
    base_path = p.parent / base_name
    base = scenario_mod.load(base_path if base_path.exists() else scenario_mod.resolve(base_name))
    base = base.apply(dict(raw.get("set", {})))
    seeds = [int(s) for s in raw.get("seeds", [base.seed])]
    grid = {str(k): list(v) for k, v in raw.get("grid", {}).items()}
    for k, values in grid.items():
        if not values:
            raise ScenarioError(f"grid {k}: no values")
        base.apply({k: values[0]})  # names a real parameter, of a valid value
    return Sweep(str(raw.get("name", p.stem)), base, seeds, grid)


def run_task(task: Task) -> tuple[str, str, int, dict[str, Any], dict[str, Any]]:
    """What a worker runs (module-level, so dask pickles it by reference)."""
    from rigsim.runner import run

    result, timing = run(scenario_mod.from_dict(task.data))
    return task.run_id, task.label, task.point, result, timing


def execute(sweep: Sweep, *, scheduler: str | None = None, workers: int | None = None,
            on_done: Callable[[int, int], None] | None = None) -> tuple[list[Run], list[dict]]:
    """Run every task on dask; the runs come back in task order whatever order they finish."""
    from dask.distributed import Client, LocalCluster, as_completed

    tasks = sweep.tasks()
    cluster = None
    if scheduler is None:
        cluster = LocalCluster(n_workers=workers or 2, threads_per_worker=1, processes=True,
                               dashboard_address=None)
        client = Client(cluster)
    else:
        client = Client(scheduler)
    try:
        futures = client.map(run_task, tasks, pure=False)
        done: dict[str, tuple[str, str, int, dict[str, Any], dict[str, Any]]] = {}
        for k, future in enumerate(as_completed(futures), 1):
            out = future.result()
            done[out[0]] = out
            if on_done is not None:
                on_done(k, len(tasks))
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    runs = [Run(t.run_id, t.label, done[t.run_id][3]) for t in tasks]
    timings = [{"run": t.run_id, **done[t.run_id][4]} for t in tasks]
    return runs, timings
