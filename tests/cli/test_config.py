"""Settings: flag > environment > file > default, `config show` and `config set`, bad config
refused with the key, its source and what to do."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from rigmesh.cli import exits, settings
from rigmesh.cli.exits import CliError
from tests.cli.conftest import Cli

TOKEN = "0x" + "ab" * 20


def _args(**kw: object) -> argparse.Namespace:
    return argparse.Namespace(**kw)


def test_precedence_flag_env_file_default(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[chain]\nrpc = "http://file:1"\nchain_id = 5\n'
                    '[node]\nbootstrap = ["/ip4/127.0.0.1/tcp/1"]\n')
    env = {"RIGMESH_CHAIN_RPC": "http://env:2", "RIGMESH_CHAIN_TOKEN": TOKEN}
    s = settings.load(_args(config=path, setting_chain_rpc="http://flag:3"), env)
    assert s["chain.rpc"] == "http://flag:3" and s.source("chain.rpc") == "flag --rpc"
    assert s["chain.token"] == bytes.fromhex("ab" * 20)
    assert s.source("chain.token") == "env RIGMESH_CHAIN_TOKEN"
    assert s["chain.chain_id"] == 5 and s.source("chain.chain_id") == f"file {path}"
    assert s["chain.confirmations"] == 0 and s.source("chain.confirmations") == "default"
    assert s["node.bootstrap"] == ("/ip4/127.0.0.1/tcp/1",)
    env_only = settings.load(_args(config=path), env)
    assert env_only["chain.rpc"] == "http://env:2"


def test_node_config_from_settings(tmp_path: Path) -> None:
    from tests.node.conftest import new_keys

    env = {"RIGMESH_CHAIN_RPC": "http://127.0.0.1:8545", "RIGMESH_CHAIN_TOKEN": TOKEN,
           "RIGMESH_NODE_HOME": str(tmp_path / "h"), "RIGMESH_CHAIN_CONFIRMATIONS": "2"}
    s = settings.load(_args(config=tmp_path / "none.toml",
                            setting_node_bootstrap=["/ip4/127.0.0.1/tcp/9"]), env)
    keys = new_keys()
    config = s.node_config(keys, bootstrap=("/ip4/127.0.0.1/tcp/8",))
    assert config.home == tmp_path / "h" and config.keys is keys
    assert config.chain.rpc == "http://127.0.0.1:8545" and config.chain.confirmations == 2
    assert config.chain.chain_id == 31337 and config.chain.token == bytes.fromhex("ab" * 20)
    assert config.bootstrap == ("/ip4/127.0.0.1/tcp/9", "/ip4/127.0.0.1/tcp/8")
    unset = settings.load(_args(config=tmp_path / "none.toml"), {})
    with pytest.raises(CliError) as e:
        unset.node_config(keys)
    assert e.value.code == exits.CONFIG
    assert e.value.message == "config: chain.rpc is not set (the chain's JSON-RPC URL)"
    assert "rigmesh devnet --write-config" in e.value.hint


@pytest.mark.parametrize(("file_text", "env", "message"), [
    ('[chain]\nfoo = 1\n', {}, "config: unknown key chain.foo in {path}"),
    ('[chain]\nchain_id = "five"\n', {},
     "config: chain.chain_id from file {path}: expected a non-negative whole number, got 'five'"),
    ('[chain]\nescrow = "0x1234"\n', {},
     "config: chain.escrow from file {path}: '0x1234' is not an address (0x and 40 hex digits)"),
    ('', {"RIGMESH_CHAIN_TOKEN": "0x" + "zz" * 20},
     "config: chain.token from env RIGMESH_CHAIN_TOKEN: '0x" + "zz" * 20
     + "' is not an address (0x and 40 hex digits)"),
    ('', {"RIGMESH_BUDGET_PER_RENTAL": "-3"},
     "config: budget.per_rental from env RIGMESH_BUDGET_PER_RENTAL: expected a non-negative "
     "whole number, got -3"),
    ('[node]\nbootstrap = ["not a multiaddr"]\n', {},
     "config: node.bootstrap from file {path}: 'not a multiaddr' is not a multiaddr"),
    ('[chain\n', {}, "config: {path} is not valid TOML"),
])
def test_bad_config_names_key_source_and_fix(cli: Cli, file_text: str, env: dict[str, str],
                                             message: str) -> None:
    cli.config.write_text(file_text)
    r = cli.run("config", "show", **env)
    assert r.returncode == exits.CONFIG, r.stderr
    first, hint = r.stderr.splitlines()[:2]
    assert first.startswith("rigmesh: " + message.format(path=cli.config))
    assert hint.startswith("  ") and hint.strip()


def test_hints_follow_the_source(tmp_path: Path) -> None:
    with pytest.raises(CliError) as e:
        settings.load(_args(config=tmp_path / "c.toml", setting_chain_chain_id="x"), {})
    assert e.value.message == (
        "config: chain.chain_id from flag --chain-id: 'x' is not a whole number")
    assert e.value.hint.startswith("pass a valid value to --chain-id")
    (tmp_path / "c.toml").write_text('[chain]\nchain_id = -1\n')
    with pytest.raises(CliError) as e:
        settings.load(_args(config=tmp_path / "c.toml"), {})
    assert e.value.hint == (f"fix it in {tmp_path / 'c.toml'}, or run "
                            "`rigmesh config set chain.chain_id VALUE`")


def test_config_set_then_show_json(cli: Cli) -> None:
    assert cli.run("config", "set", "chain.rpc", "http://127.0.0.1:8545").returncode == 0
    assert cli.run("config", "set", "node.bootstrap",
                   "/ip4/127.0.0.1/tcp/1,/ip4/127.0.0.1/tcp/2").returncode == 0
    r = cli.run("config", "show", "--json", RIGMESH_CHAIN_CONFIRMATIONS="3")
    assert r.returncode == 0, r.stderr
    rows = {row["key"]: row for row in json.loads(r.stdout)["settings"]}
    assert rows["chain.rpc"]["value"] == "http://127.0.0.1:8545"
    assert rows["chain.rpc"]["source"] == f"file {cli.config}"
    assert rows["node.bootstrap"]["value"] == ["/ip4/127.0.0.1/tcp/1", "/ip4/127.0.0.1/tcp/2"]
    assert rows["chain.confirmations"] == {
        "key": "chain.confirmations", "value": 3, "source": "env RIGMESH_CHAIN_CONFIRMATIONS",
        "env": "RIGMESH_CHAIN_CONFIRMATIONS", "flag": "--confirmations"}
    assert rows["node.home"]["source"] == "flag --home"
    bad = cli.run("config", "set", "chain.chain_id", "many")
    assert bad.returncode == exits.CONFIG and "'many' is not a whole number" in bad.stderr
    unknown = cli.run("config", "set", "chain.nope", "1")
    assert unknown.returncode == exits.CONFIG and "unknown key chain.nope" in unknown.stderr
    assert "chain_id" not in cli.config.read_text()  # a refused value never reaches the file


def test_bad_flags_are_usage_errors(cli: Cli) -> None:
    r = cli.run("config", "frobnicate")
    assert r.returncode == exits.USAGE
    assert "config: argument ACTION: invalid choice: 'frobnicate'" in r.stderr
    assert "see `rigmesh config --help`" in r.stderr
    r = cli.run("nonsense")
    assert r.returncode == exits.USAGE and "invalid choice: 'nonsense'" in r.stderr
