"""Scenario files: every shipped one loads, typos are refused, every parameter reaches the
tables, and `rigmesh sim` finds the simulator from the repository."""

from __future__ import annotations

import random
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from rigsim import scenario
from rigsim.scenario import PARAMETERS, Sampler, ScenarioError

from tests.sim.conftest import SIMULATIONS

SHIPPED = ("baseline", "faulty_providers", "withholding_renters", "spam_attack", "churn_storm",
           "price_competition")


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_scenarios_load_with_thousands_of_peers(name: str) -> None:
    sc = scenario.load(scenario.resolve(name))
    assert sc.name == name
    assert sc["providers.count"] + sc["renters.count"] >= 1000
    assert scenario.from_dict(tomllib.loads(sc.to_toml())).data == sc.data  # round trip


def test_what_each_shipped_scenario_is_about() -> None:
    sc = {name: scenario.load(scenario.resolve(name)) for name in SHIPPED}
    faulty = sc["faulty_providers"]
    assert sum(faulty[f"adversaries.{k}"] for k in scenario.PROVIDER_ADVERSARIES) == 0.2
    assert sc["withholding_renters"]["adversaries.withhold"] > 0
    assert sc["spam_attack"]["adversaries.spam"] > 0
    assert sc["churn_storm"]["churn.storm_at"] >= 0
    assert sc["price_competition"]["providers.pricing"] == "adaptive"


def test_typos_and_bad_values_are_refused() -> None:
    with pytest.raises(ScenarioError, match=r"unknown parameter demand\.rat"):
        scenario.from_dict({"demand": {"rat": 3}})
    with pytest.raises(ScenarioError, match="unknown section"):
        scenario.from_dict({"demnd": {}})
    with pytest.raises(ScenarioError, match="share"):
        scenario.from_dict({"network": {"loss": 1.5}})
    with pytest.raises(ScenarioError, match="more than 1"):
        scenario.from_dict({"adversaries": {"vanish": 0.6, "gpu_lie": 0.6}})
    with pytest.raises(ScenarioError, match="dist"):
        scenario.from_dict({"demand": {"duration": {"dist": "zipf"}}})
    with pytest.raises(ScenarioError, match="takes"):
        scenario.from_dict({"demand": {"duration": {"dist": "uniform", "low": 1}}})
    with pytest.raises(ScenarioError, match="no scenario"):
        scenario.resolve("no-such-scenario")


def test_every_parameter_is_a_table_column() -> None:
    flat = scenario.from_dict({}).flatten()
    assert list(flat) == [f"{s}.{k}" for s, keys in PARAMETERS.items() for k in keys]
    assert all(isinstance(v, str | int | float | bool) for v in flat.values())
    changed = scenario.from_dict({}).apply({"demand.rate": 5.0, "run.seed": 9})
    assert (changed["demand.rate"], changed.seed) == (5.0, 9)
    assert scenario.parse_value("{dist = \"uniform\", low = 1, high = 2}") == {
        "dist": "uniform", "low": 1, "high": 2}
    assert scenario.parse_value("0.5") == 0.5 and scenario.parse_value("adaptive") == "adaptive"


def test_distributions_draw_within_their_clips() -> None:
    rng = random.Random(1)
    logn = Sampler({"dist": "lognormal", "median": 100, "sigma": 2, "low": 50, "high": 300})
    assert all(50 <= logn(rng) <= 300 for _ in range(500))
    choice = Sampler({"dist": "choice", "values": [1, 8], "weights": [1, 0]})
    assert {choice(rng) for _ in range(50)} == {1.0}
    assert Sampler(7)(rng) == 7.0


def rigmesh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rigmesh.cli", *args], capture_output=True,
                          text=True, cwd=Path(SIMULATIONS).parent, timeout=120)


def test_rigmesh_sim_finds_the_simulator_from_the_repository() -> None:
    listed = rigmesh("sim", "list")
    assert listed.returncode == 0
    assert [line.split()[0] for line in listed.stdout.splitlines()] == sorted(SHIPPED)
    shown = rigmesh("sim", "show", "baseline", "--set", "demand.rate=7")
    assert shown.returncode == 0 and "rate = 7\n" in shown.stdout
    bad = rigmesh("sim", "run", "baseline", "--set", "demand.rat=7")
    assert bad.returncode == 2 and "unknown parameter 'demand.rat'" in bad.stderr


def test_the_readme_lists_every_parameter() -> None:
    readme = (SIMULATIONS / "README.md").read_text()
    missing = [f"{s}.{k}" for s, keys in PARAMETERS.items() for k in keys
               if f"| `{s}.{k}` |" not in readme]
    assert missing == []
