"""Configuration: a TOML file, environment variables and flags, merged into `Settings`.

Every key has one name in three spellings, and the first found wins:

    flag      --rpc URL                      (on any command)
    env       RIGMESH_CHAIN_RPC=URL          (RIGMESH_<SECTION>_<KEY>)
    file      [chain] rpc = "URL"            ($XDG_CONFIG_HOME/rigmesh/config.toml, or --config)
    default   the value in `KEYS`

`load(args)` reads them (refusing an unknown key, a wrong type or a malformed address with a
`CliError` that names the key, where it came from and what to do); `Settings.node_config` turns
the result into the node's `NodeConfig`. `rigmesh config show` prints each effective value and
its source, `rigmesh config set` writes the file.

Amounts are integers in the token's base units (a budget of 25 tUSD is 25000000 at 6 decimals).
"""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tomli_w

from rigmesh.cli.exits import CONFIG, CliError
from rigmesh.escrow.contract import default_escrow_address

if TYPE_CHECKING:  # the node's modules take seconds to import: `config show` needs none
    from rigmesh.node.config import ChainSettings, NodeConfig, ProviderSettings, RenterSettings
    from rigmesh.store.keys import NodeKeys

ENV_PREFIX = "RIGMESH_"
#: Where the config file is when neither --config nor $RIGMESH_CONFIG says.
CONFIG_ENV = "RIGMESH_CONFIG"


@dataclass(frozen=True)
class Key:
    """One setting: where it lives in the file, its type, default, flag and help."""

    section: str
    name: str
    kind: str
    """"text", "url", "int", "address" (0x + 40 hex -> 20 bytes), "addrs" (multiaddrs), "path"."""
    default: Any
    flag: str
    help: str

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.name}"

    @property
    def env(self) -> str:
        return f"{ENV_PREFIX}{self.section.upper()}_{self.name.upper()}"

    @property
    def dest(self) -> str:
        return f"setting_{self.section}_{self.name}"


KEYS: tuple[Key, ...] = (
    Key("chain", "rpc", "url", None, "--rpc",
        "JSON-RPC URL of the chain (`rigmesh devnet` prints one)"),
    Key("chain", "chain_id", "int", 31337, "--chain-id",
        "the chain id the RPC must report (31337: anvil)"),
    Key("chain", "escrow", "address", default_escrow_address(), "--escrow",
        "the escrow contract (default: its canonical CREATE2 address)"),
    Key("chain", "token", "address", None, "--token",
        "the ERC-20 token rentals are paid in"),
    Key("chain", "confirmations", "int", 0, "--confirmations",
        "blocks an escrow event must be deep before the node acts on it"),
    Key("budget", "per_rental", "int", None, "--budget-per-rental",
        "most one rental may lock (deposit plus top-ups), token base units; unset: no cap"),
    Key("budget", "per_month", "int", None, "--budget-per-month",
        "most the rentals opened in a calendar month (UTC) may lock, token base units"),
    Key("budget", "low_balance_seconds", "int", 600, "--low-balance-seconds",
        "warn when the deposit covers fewer seconds than this"),
    Key("node", "home", "path", Path.home() / ".rigmesh", "--home",
        "the node's directory: keys, ledger, offer book, job data"),
    Key("node", "listen", "addrs", ("/ip4/127.0.0.1/tcp/0",), "--listen",
        "multiaddrs to listen on (repeat the flag; a provider others reach needs a public one)"),
    Key("node", "bootstrap", "addrs", (), "--bootstrap",
        "peers to join the network through (a provider prints its address)"),
    Key("node", "heartbeat_seconds", "int", 30, "--heartbeat-seconds",
        "a provider's heartbeat interval (its offers say it; renters follow)"),
)
BY_NAME: dict[str, Key] = {k.dotted: k for k in KEYS}


@dataclass(frozen=True)
class Setting:
    key: Key
    value: Any
    source: str
    """One of: default, file <path>, env RIGMESH_..., flag --... ."""


def add_flags(parser: argparse.ArgumentParser) -> None:
    """The shared flags: --config and one flag per key. Absent flags leave no attribute
    (SUPPRESS), so the same flags can sit on the top parser and on every command."""
    group = parser.add_argument_group("settings (flag > RIGMESH_<SECTION>_<KEY> > file > default)")
    group.add_argument("--config", type=Path, default=argparse.SUPPRESS, metavar="FILE",
                       help=f"config file (default: {default_config_path()})")
    for k in KEYS:
        kw: dict[str, Any] = {"dest": k.dest, "default": argparse.SUPPRESS,
                              "help": f"{k.help} [{k.dotted}]", "metavar": k.kind.upper()}
        if k.kind == "addrs":
            kw["action"] = "append"
        group.add_argument(k.flag, **kw)


def default_config_path() -> Path:
    import platformdirs

    return Path(platformdirs.user_config_dir("rigmesh")) / "config.toml"


def config_path(args: argparse.Namespace | None = None,
                environ: Mapping[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    given = getattr(args, "config", None)
    if given is not None:
        return Path(given)
    if environ.get(CONFIG_ENV):
        return Path(environ[CONFIG_ENV])
    return default_config_path()


def _fix(key: Key, source: str, why: str, path: Path) -> CliError:
    if source.startswith("flag"):
        hint = f"pass a valid value to {key.flag} ({key.help})"
    elif source.startswith("env"):
        hint = f"fix or unset {key.env} ({key.help})"
    else:
        hint = f"fix it in {path}, or run `rigmesh config set {key.dotted} VALUE`"
    return CliError(f"config: {key.dotted} from {source}: {why}", hint, CONFIG)


def parse_value(key: Key, raw: Any, source: str, path: Path) -> Any:
    """`raw` (text from a flag or the environment, or a TOML value) as the key's type."""
    text_source = not source.startswith("file")
    kind = key.kind
    if kind == "int":
        if text_source and isinstance(raw, str):
            try:
                raw = int(raw.replace("_", ""))
            except ValueError:
                raise _fix(key, source, f"{raw!r} is not a whole number", path) from None
        if type(raw) is not int or raw < 0:
            raise _fix(key, source, f"expected a non-negative whole number, got {raw!r}", path)
        return raw
    if kind == "addrs":
        items: Any = raw
        if isinstance(raw, str):
            items = [x for x in raw.replace(",", " ").split() if x]
        if not isinstance(items, list | tuple) or not all(isinstance(x, str) for x in items):
            raise _fix(key, source, f"expected a list of multiaddrs, got {raw!r}", path)
        for a in items:
            _check_multiaddr(key, a, source, path)
        return tuple(items)
    if not isinstance(raw, str):
        raise _fix(key, source, f"expected text, got {type(raw).__name__} {raw!r}", path)
    if kind == "address":
        h = raw[2:] if raw.startswith(("0x", "0X")) else ""
        if len(h) != 40:
            raise _fix(key, source, f"{raw!r} is not an address (0x and 40 hex digits)", path)
        try:
            return bytes.fromhex(h)
        except ValueError:
            raise _fix(key, source, f"{raw!r} is not an address (0x and 40 hex digits)",
                       path) from None
    if kind == "url":
        if not raw.startswith(("http://", "https://", "ws://", "wss://")):
            raise _fix(key, source, f"{raw!r} is not an http(s) or ws(s) URL", path)
        return raw
    if kind == "path":
        return Path(raw).expanduser()
    return raw


def _check_multiaddr(key: Key, text: str, source: str, path: Path) -> None:
    from multiaddr import Multiaddr

    try:
        Multiaddr(text)
    except Exception as exc:
        raise _fix(key, source, f"{text!r} is not a multiaddr ({exc})", path) from None


def render(key: Key, value: Any) -> Any:
    """The value as TOML (and `config show --json`) writes it; None for unset."""
    if value is None:
        return None
    if key.kind == "address":
        return "0x" + value.hex()
    if key.kind == "addrs":
        return list(value)
    if key.kind == "path":
        return str(value)
    return value


def read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise CliError(f"config: {path} is not valid TOML: {exc}",
                       "fix the file, or move it away and run `rigmesh config set`",
                       CONFIG) from None


def _file_values(path: Path) -> dict[str, Any]:
    doc = read_file(path)
    out: dict[str, Any] = {}
    for section, table in doc.items():
        if not isinstance(table, dict):
            raise CliError(f"config: {section} = ... in {path} is not a [section]",
                           f"known sections: {sorted({k.section for k in KEYS})}", CONFIG)
        for name, value in table.items():
            dotted = f"{section}.{name}"
            if dotted not in BY_NAME:
                raise CliError(f"config: unknown key {dotted} in {path}",
                               f"remove it; known keys: {', '.join(BY_NAME)}", CONFIG)
            out[dotted] = value
    return out


class Settings:
    """The effective settings and where each came from."""

    def __init__(self, values: dict[str, Setting], path: Path) -> None:
        self.values = values
        self.path = path

    def __getitem__(self, dotted: str) -> Any:
        return self.values[dotted].value

    def source(self, dotted: str) -> str:
        return self.values[dotted].source

    @property
    def home(self) -> Path:
        return Path(self["node.home"])

    def require(self, dotted: str, what: str) -> Any:
        value = self[dotted]
        if value is None:
            key = BY_NAME[dotted]
            raise CliError(
                f"config: {dotted} is not set ({what})",
                f"run `rigmesh devnet --write-config` for a local chain, or `rigmesh config set "
                f"{dotted} VALUE`, or pass {key.flag}", CONFIG)
        return value

    def chain(self) -> ChainSettings:
        from rigmesh.node.config import ChainSettings

        return ChainSettings(
            rpc=self.require("chain.rpc", "the chain's JSON-RPC URL"),
            chain_id=self["chain.chain_id"], escrow=self["chain.escrow"],
            token=self.require("chain.token", "the token rentals are paid in"),
            confirmations=self["chain.confirmations"],
        )

    def node_config(self, keys: NodeKeys, *, provider: ProviderSettings | None = None,
                    renter: RenterSettings | None = None,
                    bootstrap: tuple[str, ...] = ()) -> NodeConfig:
        """The node's configuration from these settings (`bootstrap`: peers beyond the
        configured ones)."""
        from rigmesh.node.config import NodeConfig, RenterSettings

        return NodeConfig(
            home=self.home, keys=keys, chain=self.chain(), listen=self["node.listen"],
            bootstrap=tuple(dict.fromkeys((*self["node.bootstrap"], *bootstrap))),
            provider=provider, renter=renter or RenterSettings(),
        )

    def rows(self) -> list[dict[str, Any]]:
        """One row per key: key, value (as TOML writes it), source, env var, flag."""
        return [{"key": s.key.dotted, "value": render(s.key, s.value), "source": s.source,
                 "env": s.key.env, "flag": s.key.flag} for s in self.values.values()]


def load(args: argparse.Namespace | None = None,
         environ: Mapping[str, str] | None = None) -> Settings:
    """The effective settings: flag > environment > file > default."""
    environ = os.environ if environ is None else environ
    path = config_path(args, environ)
    sections = {k.section.upper() for k in KEYS}
    known_env = {k.env for k in KEYS}
    for name in environ:
        if name.startswith(ENV_PREFIX) and name not in known_env and (
            name[len(ENV_PREFIX):].split("_", 1)[0] in sections
        ):
            raise CliError(f"config: unknown environment variable {name}",
                           f"unset it; known: {', '.join(sorted(known_env))}", CONFIG)
    in_file = _file_values(path)
    values: dict[str, Setting] = {}
    for k in KEYS:
        flag = getattr(args, k.dest, None) if args is not None else None
        if flag is not None:
            source, raw = f"flag {k.flag}", flag
        elif environ.get(k.env):
            source, raw = f"env {k.env}", environ[k.env]
        elif k.dotted in in_file:
            source, raw = f"file {path}", in_file[k.dotted]
        else:
            values[k.dotted] = Setting(k, k.default, "default")
            continue
        values[k.dotted] = Setting(k, parse_value(k, raw, source, path), source)
    return Settings(values, path)


def write(path: Path, changes: Mapping[str, Any]) -> None:
    """Set keys in the config file (text values are parsed as the key's type first, so a bad
    value never reaches the file); other keys and sections stay as they were."""
    doc = read_file(path)
    _file_values(path)  # refuse to rewrite a file that holds unknown keys
    for dotted, raw in changes.items():
        key = BY_NAME.get(dotted)
        if key is None:
            raise CliError(f"config: unknown key {dotted}",
                           f"known keys: {', '.join(BY_NAME)}", CONFIG)
        value = parse_value(key, raw, f"argument {dotted}", path)
        doc.setdefault(key.section, {})[key.name] = render(key, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".toml.tmp")
    tmp.write_text(tomli_w.dumps(doc))
    tmp.replace(path)
