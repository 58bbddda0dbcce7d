"""``rigmesh sim``: run a scenario, or sweep a grid of them.

    rigmesh sim run SCENARIO [--seed N] [--set section.key=value ...] [--out DIR]
    rigmesh sim sweep SWEEP.toml [--scheduler tcp://host:8786 | --workers N] [--out DIR]
    rigmesh sim list              # the shipped scenarios
    rigmesh sim show SCENARIO     # every parameter it runs with, as TOML

SCENARIO is a path to a TOML file or the name of one in simulations/scenarios/. Results go to
DIR (default ``sim-results/<name>-seed<seed>`` or ``sim-results/<sweep>``): results.json,
measures.csv, series.csv, rentals.csv, scenario.toml, plots/*.png, and timing.json (wall-clock
numbers, the one file that differs between runs of the same seed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rigsim import report, scenario
from rigsim.scenario import ScenarioError

#: What `run` prints when it is done: the headline measures.
HEADLINE = (
    "demands", "match_rate", "time_to_match.p50", "utilization.mean", "rentals.funded",
    "money.renter_spend", "money.refunded", "price.agreed_mean", "gossip.delay_ms.p50",
    "gossip.delay_ms.p99", "conservation.escrow_errors", "conservation.rentals_unbalanced",
)


def _overrides(pairs: list[str]) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ScenarioError(f"--set takes section.key=value, not {pair!r}")
        out[key.strip()] = scenario.parse_value(value.strip())
    return out


def cmd_run(args: argparse.Namespace) -> int:
    from rigsim.runner import run

    changes = _overrides(args.set)
    if args.seed is not None:
        changes["run.seed"] = args.seed
    sc = scenario.load(scenario.resolve(args.scenario), changes)
    out = Path(args.out or f"sim-results/{sc.name}-seed{sc.seed}")
    result, timing = run(sc, progress=not args.quiet)
    runs = [report.Run(f"{sc.name}-s{sc.seed}", "", result)]
    report.write(out, runs, summary={"scenario": sc.name, "seeds": [sc.seed]})
    (out / "scenario.toml").write_text(sc.to_toml())
    (out / "timing.json").write_text(json.dumps(timing, indent=1, sort_keys=True) + "\n")
    m = result["measures"]
    width = max(len(k) for k in HEADLINE)
    for k in HEADLINE:
        print(f"{k:<{width}}  {m.get(k)}")
    print(f"{'wall seconds':<{width}}  {timing['wall_s']} ({timing['sim_s_per_wall_s']} "
          f"simulated seconds per second, peak {timing['peak_rss_mib']} MiB)")
    print(f"results in {out}/")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from rigsim import sweep as sweep_mod

    sw = sweep_mod.load(args.sweep)
    out = Path(args.out or f"sim-results/{sw.name}")
    tasks = sw.tasks()
    print(f"{sw.name}: {len(tasks)} runs ({len(tasks) // len(sw.seeds)} points x "
          f"{len(sw.seeds)} seeds) on {args.scheduler or 'a local cluster'}", file=sys.stderr)
    bar = None
    if not args.quiet:
        from tqdm import tqdm

        bar = tqdm(total=len(tasks), desc=sw.name, unit="run", file=sys.stderr)

    def done(k: int, n: int) -> None:
        if bar is not None:
            bar.update(1)

    runs, timings = sweep_mod.execute(sw, scheduler=args.scheduler, workers=args.workers,
                                      on_done=done)
    if bar is not None:
        bar.close()
    report.write(out, runs, summary={"sweep": sw.name, "seeds": sw.seeds,
                                     "grid": sw.grid, "base": sw.base.name})
    (out / "base.toml").write_text(sw.base.to_toml())
    (out / "timing.json").write_text(json.dumps(timings, indent=1, sort_keys=True) + "\n")
    print(f"{len(runs)} runs; results in {out}/")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    for path in sorted(scenario.SCENARIOS_DIR.glob("*.toml")):
        first = path.read_text().splitlines()[0].lstrip("# ").strip()
        print(f"{path.stem:<24} {first}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    print(scenario.load(scenario.resolve(args.scenario), _overrides(args.set)).to_toml(), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rigmesh sim", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run one scenario")
    r.add_argument("scenario")
    r.add_argument("--seed", type=int)
    r.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    r.add_argument("--out")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=cmd_run)
    s = sub.add_parser("sweep", help="run a grid of scenarios and seeds on dask")
    s.add_argument("sweep")
    s.add_argument("--scheduler", help="address of a running dask scheduler")
    s.add_argument("--workers", type=int, help="local cluster size (default 2)")
    s.add_argument("--out")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_sweep)
    sub.add_parser("list", help="the shipped scenarios").set_defaults(func=cmd_list)
    sh = sub.add_parser("show", help="a scenario with every parameter")
    sh.add_argument("scenario")
    sh.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    sh.set_defaults(func=cmd_show)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ScenarioError as exc:
        print(f"rigmesh sim: {exc}", file=sys.stderr)
        return 2
