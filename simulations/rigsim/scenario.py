"""Scenarios: what a run simulates, read from TOML, every parameter with a default and a reason.

A scenario file sets any of the sections below; what it leaves out takes the default. Unknown
sections and keys are refused (a typo must not silently fall back to a default). `flatten()`
gives every parameter as one ``section.key`` column, which is what the result tables carry
beside each measure, and `apply()` changes parameters by those names (``--set`` and sweeps).

Quantities people think in are written that way: prices in dollars per GPU-hour, money in
dollars, durations in seconds. The simulator turns them into the protocol's integers (token base
units per second, 6 decimals, as USDC) when it builds offers and wants.

A value that varies is a distribution, an inline table with a ``dist`` key:

    {dist = "uniform", low = 1, high = 5}
    {dist = "exponential", mean = 300}
    {dist = "lognormal", median = 1200, sigma = 0.8, low = 300, high = 14400}
    {dist = "choice", values = [1, 2, 4], weights = [0.6, 0.3, 0.1]}

``low`` and ``high`` clip any of them. A plain number is a constant.
"""

from __future__ import annotations

import copy
import json
import math
import random
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Dist = float | int | dict[str, Any]

#: The reference market: three GPU models at about their 2026 rental prices.
DEFAULT_MODELS = [
    {"model": "NVIDIA H100 80GB HBM3", "vram_mib": 81559, "share": 0.3, "price": 2.49},
    {"model": "NVIDIA A100-SXM4-80GB", "vram_mib": 81920, "share": 0.3, "price": 1.29},
    {"model": "NVIDIA GeForce RTX 4090", "vram_mib": 24564, "share": 0.4, "price": 0.39},
]

#: section -> key -> (default, why). The single place parameters are defined: loading,
#: validation, flattening and the README's table read it.
PARAMETERS: dict[str, dict[str, tuple[Any, str]]] = {
    "run": {
        "name": ("scenario", "a label for tables and plots"),
        "seed": (1, "every random choice of the run comes from it"),
        "duration": (3600, "simulated seconds of demand, churn and attacks"),
        "drain": (True, "afterwards, run on (no new demand) until every funded rental is "
                        "settled on chain, so money and losses are final"),
        "drain_limit": (86_400, "at most this many simulated seconds of draining"),
        "start": (1_767_225_600, "Unix time of t = 0 (chain time and offer times)"),
        "sample_interval": (60, "seconds between points of the time series"),
    },
    "providers": {
        "count": (100, "provider peers"),
        "gpus": ({"dist": "choice", "values": [1, 2, 4, 8], "weights": [0.5, 0.2, 0.2, 0.1]},
                 "GPUs per provider (one listing of single-GPU rentals, capacity = GPUs)"),
        "models": (DEFAULT_MODELS, "GPU models: name, VRAM, share of providers, $/GPU-hour"),
        "price_spread": ({"dist": "lognormal", "median": 1.0, "sigma": 0.15},
                         "each provider's factor on its model's price"),
        "pricing": ("fixed", "fixed, or adaptive: at each republish an idle provider lowers "
                             "its price by price_step, a full one raises it"),
        "price_step": (0.05, "relative change of an adaptive provider's price"),
        "price_floor": (0.5, "an adaptive provider never goes below this share of its model's "
                             "price"),
        "withdraw_when_full": (True, "withdraw the listing while every GPU is taken, list it "
                                     "again when one frees"),
        "offer_ttl": (1800, "seconds an offer lives; a provider that vanished stays in books "
                            "this long"),
        "republish": (300, "seconds between re-signed offers (spec/p2p.md 2.5)"),
        "telemetry_interval": (10, "seconds between a node's GPU samples; a failure shows in "
                                   "the evidence up to this late"),
        "job_start": ({"dist": "uniform", "low": 1, "high": 5},
                      "seconds from the open seen on chain to the job running"),
    },
    "renters": {
        "count": (400, "renter peers"),
        "wallet": (1000.0, "dollars each renter holds in the escrow at t = 0"),
    },
    "demand": {
        "rate": (200.0, "rentals asked for per hour, whole market (Poisson arrivals, each "
                        "from a random online renter)"),
        "duration": ({"dist": "lognormal", "median": 1200, "sigma": 0.7, "low": 300,
                      "high": 14_400}, "seconds of GPU time a renter asks for"),
        "vram_mib": ({"dist": "choice", "values": [16_000, 40_000, 80_000],
                      "weights": [0.5, 0.3, 0.2]}, "VRAM per GPU a renter needs"),
        "max_price": ({"dist": "lognormal", "median": 2.0, "sigma": 0.5, "low": 0.2},
                      "$/GPU-hour a renter pays at most"),
        "strategy": ("random_top", "random_top: pick at random among the `top` cheapest "
                                   "fitting offers; cheapest: always the cheapest"),
        "top": (8, "how many of the cheapest offers random_top picks from"),
        "attempts": (6, "offers a renter proposes to before it gives up"),
        "patience": (300, "seconds a renter keeps looking when nothing fits"),
        "retry": (30, "seconds between looks when nothing fits"),
        "deposit": (0, "seconds the first deposit covers (0: the whole rental); the renter "
                       "tops up within its budget for the rest"),
    },
    "network": {
        "latency_ms": (40.0, "one-way delay of every message"),
        "jitter_ms": (20.0, "uniform extra delay per message"),
        "loss": (0.0, "probability a message is lost (gossip, requests and answers)"),
        "degree": (6, "mean neighbours in the gossip graph (GossipSub's D)"),
        "traced_offers": (12, "offer publications whose gossip runs message by message "
                              "through every peer's policy; the rest enter books at once"),
    },
    "protocol": {
        "heartbeat": (30, "seconds between heartbeats (the offers' heartbeat_seconds)"),
        "grace": (15, "timers.grace_seconds"),
        "challenge_window": (600, "timers.challenge_window"),
        "block_time": (2, "seconds between blocks"),
        "confirmations": (1, "blocks before a node acts on an event"),
        "claim_interval": (600, "ClaimPolicy.min_interval: a provider claims mid-rental at "
                                "most this often"),
        "signed": (False, "real Ed25519 and EIP-712 signatures and checks (slow: small runs)"),
    },
    "churn": {
        "share": (0.0, "share of peers that go offline and come back, over and over"),
        "online": ({"dist": "exponential", "mean": 3600}, "seconds a churning peer stays up"),
        "offline": ({"dist": "exponential", "mean": 300}, "seconds it stays down"),
        "storm_at": (-1, "seconds: when a churn storm takes peers down at once (-1: none)"),
        "storm_share": (0.3, "share of peers the storm takes down"),
        "storm_down": ({"dist": "uniform", "low": 60, "high": 600},
                       "seconds each of them stays down"),
    },
    "adversaries": {
        "vanish": (0.0, "share of providers that go dark for good in their first rental"),
        "gpu_lie": (0.0, "share of providers whose heartbeats show another GPU from a point "
                         "in each rental"),
        "job_dead": (0.0, "share of providers whose job dies while heartbeats go on"),
        "never_start": (0.0, "share of providers that never start the job"),
        "withhold": (0.0, "share of renters that stop signing receipts mid-rental"),
        "spam": (0.0, "share of peers (taken from renters) that gossip forged offers"),
        "spam_rate": (5.0, "forged offers a second from each spammer"),
    },
}

PROVIDER_ADVERSARIES = ("vanish", "gpu_lie", "job_dead", "never_start")
RENTER_ADVERSARIES = ("withhold",)


class ScenarioError(ValueError):
    pass


@dataclass
class Scenario:
    """A validated scenario: `data` maps section -> key -> value, every key present."""

    data: dict[str, dict[str, Any]]

    def __getitem__(self, path: str) -> Any:
        section, key = path.split(".", 1)
        return self.data[section][key]

    @property
    def name(self) -> str:
        return str(self.data["run"]["name"])

    @property
    def seed(self) -> int:
        return int(self.data["run"]["seed"])

    def flatten(self) -> dict[str, Any]:
        """Every parameter as ``section.key`` -> a scalar (tables and distributions as compact
        canonical JSON), in a fixed order: the columns of the result tables."""
        out: dict[str, Any] = {}
        for section, keys in PARAMETERS.items():
            for key in keys:
                value = self.data[section][key]
                if isinstance(value, dict | list):
                    value = json.dumps(value, sort_keys=True, separators=(",", ":"))
                out[f"{section}.{key}"] = value
        return out

    def apply(self, changes: dict[str, Any]) -> Scenario:
        """A copy with ``section.key`` parameters changed (validated like a file)."""
        data = copy.deepcopy(self.data)
        for path, value in changes.items():
            section, _, key = path.partition(".")
            if section not in PARAMETERS or key not in PARAMETERS[section]:
                raise ScenarioError(f"unknown parameter {path!r}")
            data[section][key] = value
        return from_dict(data)

    def to_toml(self) -> str:
        """The scenario as TOML (every parameter), to store beside results."""
        lines = []
        for section, keys in PARAMETERS.items():
            lines.append(f"[{section}]")
            for key in keys:
                lines.append(f"{key} = {_toml_value(self.data[section][key])}")
            lines.append("")
        return "\n".join(lines)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise ScenarioError(f"cannot write {v!r} as TOML")


def from_dict(raw: dict[str, Any]) -> Scenario:
    data: dict[str, dict[str, Any]] = {}
    for section in raw:
        if section not in PARAMETERS:
            raise ScenarioError(f"unknown section [{section}]")
    for section, keys in PARAMETERS.items():
        given = raw.get(section, {})
        if not isinstance(given, dict):
            raise ScenarioError(f"[{section}] must be a table")
        for key in given:
            if key not in keys:
                raise ScenarioError(f"unknown parameter {section}.{key}")
        data[section] = {key: copy.deepcopy(given.get(key, default))
                         for key, (default, _) in keys.items()}
    sc = Scenario(data)
    _validate(sc)
    return sc


def load(path: str | Path, overrides: dict[str, Any] | None = None) -> Scenario:
    """Read a scenario file; `overrides` (``section.key`` -> value) win over it."""
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{p}: {exc}") from None
    raw.setdefault("run", {}).setdefault("name", p.stem)
    sc = from_dict(raw)
    return sc.apply(overrides) if overrides else sc


def parse_value(text: str) -> Any:
    """A ``--set`` value: anything TOML reads (numbers, booleans, quoted text, inline tables),
    else the text itself."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _validate(sc: Scenario) -> None:
    def positive(path: str, *, zero: bool = False) -> None:
        v = sc[path]
        if not isinstance(v, int | float) or isinstance(v, bool) or v < 0 or (v == 0 and not zero):
            raise ScenarioError(f"{path} must be a {'non-negative' if zero else 'positive'} "
                                f"number, not {v!r}")

    def share(path: str) -> None:
        v = sc[path]
        if not isinstance(v, int | float) or not 0 <= v <= 1:
            raise ScenarioError(f"{path} must be a share in [0, 1], not {v!r}")

    for path in ("run.duration", "run.sample_interval", "providers.telemetry_interval",
                 "providers.offer_ttl", "providers.republish", "protocol.heartbeat",
                 "protocol.grace",
                 "protocol.challenge_window", "protocol.block_time", "demand.top",
                 "demand.attempts", "demand.retry", "network.degree", "adversaries.spam_rate"):
        positive(path)
    for path in ("providers.count", "renters.count", "demand.rate", "demand.patience",
                 "demand.deposit", "network.latency_ms", "network.jitter_ms",
                 "network.traced_offers", "protocol.confirmations", "renters.wallet",
                 "run.drain_limit", "providers.price_step", "providers.price_floor"):
        positive(path, zero=True)
    for path in ("network.loss", "churn.share", "churn.storm_share",
                 *(f"adversaries.{k}" for k in (*PROVIDER_ADVERSARIES, *RENTER_ADVERSARIES,
                                                "spam"))):
        share(path)
    if sum(sc[f"adversaries.{k}"] for k in PROVIDER_ADVERSARIES) > 1:
        raise ScenarioError("provider adversary shares add up to more than 1")
    if sc["providers.pricing"] not in ("fixed", "adaptive"):
        raise ScenarioError("providers.pricing is fixed or adaptive")
    if sc["demand.strategy"] not in ("cheapest", "random_top"):
        raise ScenarioError("demand.strategy is cheapest or random_top")
    models = sc["providers.models"]
    if not isinstance(models, list) or not models:
        raise ScenarioError("providers.models is a non-empty list of tables")
    for m in models:
        if set(m) != {"model", "vram_mib", "share", "price"}:
            raise ScenarioError("each of providers.models has model, vram_mib, share, price")
    if sc["network.loss"] >= 1:
        raise ScenarioError("network.loss must be below 1")
    for key in ("providers.gpus", "providers.price_spread", "providers.job_start",
                "demand.duration", "demand.vram_mib", "demand.max_price", "churn.online",
                "churn.offline", "churn.storm_down"):
        Sampler(sc[key], key)  # checks the form


class Sampler:
    """Draws from one distribution with a given generator (the caller's seeded stream)."""

    #: dist -> (required keys, optional keys); every one also takes low and high (clipping).
    KINDS: dict[str, tuple[set[str], set[str]]] = {
        "uniform": ({"low", "high"}, set()),
        "exponential": ({"mean"}, set()),
        "lognormal": ({"median", "sigma"}, set()),
        "normal": ({"mean", "sd"}, set()),
        "choice": ({"values"}, {"weights"}),
    }

    def __init__(self, spec: Dist, name: str = "value") -> None:
        self.spec = spec
        if isinstance(spec, bool) or not isinstance(spec, int | float | dict):
            raise ScenarioError(f"{name}: a number or a distribution table, not {spec!r}")
        if isinstance(spec, dict):
            kind = spec.get("dist")
            if kind not in self.KINDS:
                raise ScenarioError(f"{name}: dist is one of {sorted(self.KINDS)}")
            need, may = self.KINDS[kind]
            keys = set(spec) - {"dist"}
            if not need <= keys or keys - need - may - {"low", "high"}:
                raise ScenarioError(f"{name}: {kind} takes {sorted(need | may)} "
                                    f"(and low, high)")
            if kind == "choice" and not spec["values"]:
                raise ScenarioError(f"{name}: choice needs values")

    def __call__(self, rng: random.Random) -> float:
        s = self.spec
        if not isinstance(s, dict):
            return float(s)
        kind = s["dist"]
        if kind == "uniform":
            v = rng.uniform(s["low"], s["high"])
        elif kind == "exponential":
            v = rng.expovariate(1.0 / s["mean"]) if s["mean"] > 0 else 0.0
        elif kind == "lognormal":
            v = s["median"] * math.exp(rng.gauss(0.0, s["sigma"]))
        elif kind == "normal":
            v = rng.gauss(s["mean"], s["sd"])
        else:
            v = float(rng.choices(s["values"], weights=s.get("weights"))[0])
        if "low" in s:
            v = max(v, s["low"])
        if "high" in s:
            v = min(v, s["high"])
        return v

    def mean(self) -> float:
        """Roughly: the centre of the distribution (for sizing, not for results)."""
        s = self.spec
        if not isinstance(s, dict):
            return float(s)
        kind = s["dist"]
        if kind == "uniform":
            return (s["low"] + s["high"]) / 2
        if kind in ("exponential", "normal"):
            return float(s["mean"])
        if kind == "lognormal":
            return float(s["median"] * math.exp(s["sigma"] ** 2 / 2))
        w = s.get("weights") or [1] * len(s["values"])
        return sum(v * x for v, x in zip(s["values"], w, strict=True)) / sum(w)


SCENARIOS_DIR = Path(__file__).resolve().parents[1] / "scenarios"


def resolve(name: str) -> Path:
    """A scenario file by path, or by the name of a shipped one (``baseline``)."""
    p = Path(name)
    if p.exists():
        return p
    shipped = SCENARIOS_DIR / f"{name}.toml"
    if shipped.exists():
        return shipped
    known = ", ".join(sorted(f.stem for f in SCENARIOS_DIR.glob("*.toml")))
    raise ScenarioError(f"no scenario {name!r} (a path, or one of: {known})")
