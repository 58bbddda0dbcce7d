"""Sweeps: a grid times seeds on dask, on a local cluster (the default, through the CLI) and on a
scheduler and a worker started as separate processes (what a cluster is), with the same results
as running each task here."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from rigsim import sweep
from rigsim.report import dumps

from tests.sim.conftest import SIMULATIONS

pytestmark = pytest.mark.slow

ROOT = SIMULATIONS.parent
DASK = Path(sys.executable).with_name("dask")

SWEEP = """
base = "baseline"
seeds = [1, 2]
[set]
"providers.count" = 12
"renters.count" = 30
"demand.rate" = 60
"run.duration" = 600
"run.drain" = false
"network.traced_offers" = 2
[grid]
"adversaries.withhold" = [0.0, 0.5]
"""


@pytest.fixture
def sweep_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(SWEEP)
    return path


def test_a_grid_expands_to_points_times_seeds(sweep_file: Path) -> None:
    sw = sweep.load(sweep_file)
    tasks = sw.tasks()
    assert [t.run_id for t in tasks] == ["p000-s1", "p000-s2", "p001-s1", "p001-s2"]
    assert tasks[2].label == "withhold=0.5"
    assert tasks[2].data["adversaries"]["withhold"] == 0.5
    assert tasks[3].data["run"]["seed"] == 2 and tasks[3].data["providers"]["count"] == 12


def test_sweep_on_a_local_cluster_writes_one_table_and_one_set_of_plots(
    sweep_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    subprocess.run(
        [sys.executable, "-m", "rigmesh.cli", "sim", "sweep", str(sweep_file), "--workers", "1",
         "--out", str(out), "--quiet"],
        check=True, cwd=ROOT, capture_output=True, timeout=600,
    )
    rows = (out / "measures.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert header[:3] == ["run", "scenario", "seed"] and header[-2:] == ["measure", "value"]
    assert "adversaries.withhold" in header
    assert {r.split(",")[0] for r in rows[1:]} == {"p000-s1", "p000-s2", "p001-s1", "p001-s2"}
    assert len(list((out / "plots").glob("*.png"))) == 8
    results = json.loads((out / "results.json").read_text())
    assert results["grid"] == {"adversaries.withhold": [0.0, 0.5]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[str]:
    """`dask scheduler` and `dask worker` as their own processes on 127.0.0.1."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SIMULATIONS), str(ROOT)])}
    common = ["--no-dashboard"]
    scheduler = subprocess.Popen(
        [str(DASK), "scheduler", "--host", "127.0.0.1", "--port", str(port), *common],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
    )
    worker = None
    listening = threading.Event()

    def drain() -> None:
        # Read the scheduler's log to the end (a full pipe would stall it), noting when it
        # says it listens.
        assert scheduler.stderr is not None
        for line in scheduler.stderr:
            if "Scheduler at" in line:
                listening.set()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        assert listening.wait(timeout=120), "the scheduler did not start listening"
        worker = subprocess.Popen(
            [str(DASK), "worker", address, "--nworkers", "1", "--nthreads", "1", *common],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=tmp_path,
        )
        from dask.distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(1, timeout=120)
        yield address
    finally:
        for proc in (worker, scheduler):
            if proc is not None:
                proc.terminate()
        for proc in (worker, scheduler):
            if proc is not None:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        reader.join(timeout=30)
        if scheduler.stderr is not None:
            scheduler.stderr.close()


def test_sweep_on_a_separate_scheduler_and_worker_matches_a_local_run(
    sweep_file: Path, cluster: str
) -> None:
    sw = sweep.load(sweep_file)
    runs, timings = sweep.execute(sw, scheduler=cluster)
    assert [r.id for r in runs] == [t.run_id for t in sw.tasks()]
    assert all(t["wall_s"] > 0 for t in timings)
    for run, task in zip(runs, sw.tasks(), strict=True):
        here = sweep.run_task(task)[3]
        assert dumps(run.result) == dumps(here)  # bit for bit, wherever it ran
