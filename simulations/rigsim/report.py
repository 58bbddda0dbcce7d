"""Writing results: JSON, tidy CSV tables and plots, for one run or a sweep of many.

Every file here is a function of the results alone, so the same seed writes the same bytes
(floats as Python's shortest repr, keys sorted, plots through Agg with no timestamp). Wall-clock
timings go to `timing.json` only, beside them and outside that promise.

Tables (tidy: one observation per row, every parameter beside it):

- ``measures.csv``: run, scenario, seed, every parameter, measure, value;
- ``series.csv``: the same, plus t (seconds), for every time series;
- ``rentals.csv``: one row per funded rental (``run`` joins it to the parameters).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display; set before pyplot is imported

import matplotlib.pyplot as plt

from rigsim.metrics import SERIES

PNG_METADATA = {"Software": "rigsim"}


class Run:
    """One run's result, the label of its parameter point, and its id in the tables."""

    def __init__(self, run_id: str, label: str, result: dict[str, Any]) -> None:
        self.id, self.label, self.result = run_id, label, result


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, dict | list):
        return json.dumps(v, sort_keys=True, separators=(",", ":"))
    return str(v)


def _csv(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for row in rows:
        w.writerow([_cell(v) for v in row])
    return buf.getvalue()


def _tidy(runs: Sequence[Run], extra: Sequence[str],
          rows_of: Callable[[dict[str, Any]], Iterable[Sequence[Any]]]) -> str:
    """One table: run, scenario, seed, every parameter, then `extra` columns per row."""
    params = list(runs[0].result["parameters"]) if runs else []
    rows = []
    for run in runs:
        r = run.result
        p = [r["parameters"][k] for k in params]
        rows += [[run.id, r["scenario"], r["seed"], *p, *row] for row in rows_of(r)]
    return _csv(["run", "scenario", "seed", *params, *extra], rows)


def measures_table(runs: Sequence[Run]) -> str:
    return _tidy(runs, ["measure", "value"], lambda r: r["measures"].items())


def series_table(runs: Sequence[Run]) -> str:
    def rows(r: dict[str, Any]) -> Iterable[Sequence[Any]]:
        s = r["series"]
        for name in SERIES:
            for t, value in zip(s["t"], s[name], strict=True):
                yield name, t, value

    return _tidy(runs, ["measure", "t", "value"], rows)


def rentals_table(runs: Sequence[Run]) -> str:
    fields: list[str] = []
    for run in runs:
        if run.result["rentals"]:
            fields = list(run.result["rentals"][0])
            break
    rows = []
    for run in runs:
        for rec in run.result["rentals"]:
            rows.append([run.id, run.result["seed"], *(rec[k] for k in fields)])
    return _csv(["run", "seed", *fields], rows)


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, indent=1, ensure_ascii=True) + "\n"


def write(out: Path, runs: Sequence[Run], *, summary: dict[str, Any]) -> list[Path]:
    """Write the tables, `result(s).json` and the plots of `runs` under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    files = {
        "measures.csv": measures_table(runs),
        "series.csv": series_table(runs),
        "rentals.csv": rentals_table(runs),
        "results.json": dumps({**summary, "runs": {run.id: run.result for run in runs}}),
    }
    for name, text in files.items():
        (out / name).write_text(text)
        written.append(out / name)
    written += plot_all(out / "plots", runs)
    return written


# -- plots -------------------------------------------------------------------------------------


def _groups(runs: Sequence[Run]) -> dict[str, list[Run]]:
    out: dict[str, list[Run]] = {}
    for run in runs:
        out.setdefault(run.label, []).append(run)
    return out


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata=PNG_METADATA)
    plt.close(fig)
    return path


def _mean_series(runs: Sequence[Run], name: str) -> tuple[list[float], list[float]]:
    """The series averaged over a point's seeds (on the first run's sample times)."""
    t = runs[0].result["series"]["t"]
    cols = [r.result["series"][name] for r in runs]
    n = min(len(c) for c in cols)
    return t[:n], [sum(c[i] for c in cols) / len(cols) for i in range(n)]


def _cdf(ax: Any, runs: Sequence[Run], key: str, xlabel: str) -> None:
    groups = _groups(runs)
    for i, (label, group) in enumerate(groups.items()):
        for k, run in enumerate(group):
            q = run.result["cdf"][key]
            if q:
                ys = [j / (len(q) - 1) for j in range(len(q))]
                ax.step(q, ys, where="post", alpha=0.8, label=label if k == 0 else None,
                        color=f"C{i % 10}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction")
    ax.grid(alpha=0.3)
    if any(groups):
        ax.legend(fontsize="small")


def plot_all(folder: Path, runs: Sequence[Run]) -> list[Path]:
    if not runs:
        return []
    groups = _groups(runs)
    labels = list(groups)
    paths = []

    fig, ax = plt.subplots(figsize=(6, 4))
    _cdf(ax, runs, "gossip_delay_ms", "offer propagation delay to each peer (ms)")
    ax.set_title("Offer propagation (traced publications)")
    paths.append(_save(fig, folder / "propagation_cdf.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    _cdf(ax, runs, "time_to_match_s", "time from demand to funded rental (s)")
    ax.set_xscale("symlog", linthresh=10)
    ax.set_title("Time to match")
    paths.append(_save(fig, folder / "time_to_match_cdf.png"))

    fig, ax = plt.subplots(figsize=(max(4, 1 + 0.8 * len(labels)), 4))
    for i, label in enumerate(labels):
        rates = [r.result["measures"]["match_rate"] or 0.0 for r in groups[label]]
        mean = sum(rates) / len(rates)
        ax.bar(i, mean, color=f"C{i % 10}")
        ax.plot([i] * len(rates), rates, "k.", alpha=0.6)
    ax.set_xticks(range(len(labels)), [lb or "run" for lb in labels], rotation=30, ha="right",
                  fontsize="small")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("demands that got a rental")
    ax.set_title("Match rate (bar: mean; dots: seeds)")
    paths.append(_save(fig, folder / "match_rate.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, label in enumerate(labels):
        t, u = _mean_series(groups[label], "utilization")
        ax.plot([x / 60 for x in t], u, label=label or None, color=f"C{i % 10}")
    ax.set_xlabel("minutes")
    ax.set_ylabel("busy GPUs / GPUs online")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    ax.set_title("GPU utilization")
    if any(labels):
        ax.legend(fontsize="small")
    paths.append(_save(fig, folder / "utilization.png"))

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for i, label in enumerate(labels):
        xs, ys = [], []
        for run in groups[label]:
            for rec in run.result["rentals"]:
                if rec["paid_per_hour"] is not None:
                    xs.append(rec["offered"] * 3600 / 1e6)
                    ys.append(rec["paid_per_hour"])
        a1.scatter(xs, ys, s=6, alpha=0.5, label=label or None, color=f"C{i % 10}")
        t, price = _mean_series(groups[label], "offer_price")
        a2.plot([x / 60 for x in t], price, label=label or None, color=f"C{i % 10}")
    lim = a1.get_xlim()
    a1.plot(lim, lim, "k--", lw=0.8)
    a1.set_xlabel("offered price ($/GPU-h)")
    a1.set_ylabel("paid per delivered hour ($)")
    a1.set_title("Price paid against offered")
    a2.set_xlabel("minutes")
    a2.set_ylabel("mean offered price in the book ($/GPU-h)")
    a2.set_title("Offered prices over time")
    for a in (a1, a2):
        a.grid(alpha=0.3)
    if any(labels):
        a1.legend(fontsize="small")
    paths.append(_save(fig, folder / "price.png"))

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for i, label in enumerate(labels):
        t, paid = _mean_series(groups[label], "paid")
        _, refunded = _mean_series(groups[label], "refunded")
        a1.plot([x / 60 for x in t], paid, color=f"C{i % 10}", label=f"{label} paid".strip())
        a1.plot([x / 60 for x in t], refunded, color=f"C{i % 10}", ls="--",
                label=f"{label} refunded".strip())
        earnings = sorted(
            (e for run in groups[label] for e in _per_provider(run.result)), reverse=True
        )
        a2.plot(range(len(earnings)), earnings, color=f"C{i % 10}", label=label or None)
    a1.set_xlabel("minutes")
    a1.set_ylabel("$ (cumulative)")
    a1.set_title("Renter spend = provider earnings; refunds")
    a2.set_xlabel("providers that earned, by earnings")
    a2.set_ylabel("$ earned")
    a2.set_title("Provider earnings")
    for a in (a1, a2):
        a.grid(alpha=0.3)
    a1.legend(fontsize="small")
    paths.append(_save(fig, folder / "money.png"))

    paths.append(_plot_losses(folder / "loss_bound.png", runs))

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    first = groups[labels[0]]
    t, renters = _mean_series(first, "escrow_renters_free")
    _, locked = _mean_series(first, "escrow_locked")
    _, providers = _mean_series(first, "escrow_providers_free")
    minutes = [x / 60 for x in t]
    # What left renters' free balances is exactly what open rentals lock plus what providers
    # were paid: the stack and the dashed line coincide at every sample.
    out = [renters[0] - r for r in renters] if renters else []
    a1.stackplot(minutes, locked, providers, alpha=0.6,
                 labels=["locked in open rentals", "providers' earnings"])
    a1.plot(minutes, out, "k--", lw=1.2, label="gone from renters' free balances")
    for i, label in enumerate(labels):
        t, held = _mean_series(groups[label], "escrow_held")
        _, owed = _mean_series(groups[label], "escrow_owed")
        a2.plot([x / 60 for x in t], [h - o for h, o in zip(held, owed, strict=True)],
                color=f"C{i % 10}", label=label or None)
    bad = sum(r.result["measures"]["conservation.rentals_unbalanced"]
              + r.result["measures"]["conservation.escrow_errors"]
              + abs(r.result["measures"]["conservation.minted_minus_held"]) for r in runs)
    a1.set_title(f"Money in the escrow{' (' + labels[0] + ')' if labels[0] else ''}")
    a1.set_xlabel("minutes")
    a1.set_ylabel("$")
    a2.set_title(f"held - owed (violations in all runs: {bad})")
    a2.set_xlabel("minutes")
    a2.set_ylabel("$")
    for a in (a1, a2):
        a.grid(alpha=0.3)
    a1.legend(fontsize="small", loc="upper left")
    paths.append(_save(fig, folder / "conservation.png"))
    return paths


def _per_provider(result: dict[str, Any]) -> list[float]:
    earned: dict[int, float] = {}
    for rec in result["rentals"]:
        earned[rec["provider"]] = earned.get(rec["provider"], 0.0) + rec["paid"] / 1e6
    return list(earned.values())


def _plot_losses(path: Path, runs: Sequence[Run]) -> Path:
    """Each honest party's largest loss per counterparty type, as a share of its bound (the
    protocol promises at most 1), and every rental's loss against its bound."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.5))
    groups: list[tuple[str, str]] = []
    for party, kinds in (("renter", ("honest", "vanish", "gpu_lie", "job_dead", "never_start")),
                         ("provider", ("honest", "withhold"))):
        for kind in kinds:
            groups.append((party, kind))
    labels = list(_groups(runs))
    width = 0.8 / max(1, len(labels))
    for j, label in enumerate(labels):
        rs = _groups(runs)[label]
        vals = []
        for party, kind in groups:
            key = f"loss.{party}.vs_{kind}.max_share_of_bound"
            vals.append(max(r.result["measures"].get(key) or 0.0 for r in rs))
        a1.bar([i + j * width for i in range(len(groups))], vals, width=width,
               color=f"C{j % 10}", label=label or None)
        xs, ys, cs = [], [], []
        for r in rs:
            for rec in r.result["rentals"]:
                if rec["renter_bound_applies"] and rec["settled"]:
                    xs.append(rec["renter_bound"] / 1e6)
                    ys.append(rec["renter_loss"] / 1e6)
                    cs.append("C0")
                if rec["provider_bound_applies"] and rec["settled"]:
                    xs.append(rec["provider_bound"] / 1e6)
                    ys.append(rec["provider_loss"] / 1e6)
                    cs.append("C3")
        a2.scatter(xs, ys, s=6, c=cs, alpha=0.5)
    a1.axhline(1.0, color="k", ls="--", lw=0.8)
    a1.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))],
                  [f"{p}\nvs {k}" for p, k in groups], fontsize="x-small")
    a1.set_ylabel("largest loss / bound")
    a1.set_title("Loss per party and adversary (bound = 1)")
    if any(labels):
        a1.legend(fontsize="small")
    lim = max([*a2.get_xlim(), *a2.get_ylim()])
    a2.plot([0, lim], [0, lim], "k--", lw=0.8)
    a2.set_xlabel("bound ($): renter I·p (blue), provider (I+G)·p (red)")
    a2.set_ylabel("loss ($)")
    a2.set_title("Every settled rental's loss against its bound")
    for a in (a1, a2):
        a.grid(alpha=0.3)
    return _save(fig, path)
