"""`rigmesh devnet`, `rigmesh provide`, `rigmesh offers` and `rigmesh rent` as separate processes,
each with its own home, on anvil: the path a person walks, from an empty directory to a settled
rental; the refusals before money moves; and, in a pseudo-terminal, the confirm prompt, the live
status line and Ctrl-C."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from web3 import Web3

from rigmesh.chain.anvil import ANVIL_DEV_KEY, find_anvil
from rigmesh.chain.devnet import Deployment, fund
from rigmesh.cli import exits
from rigmesh.wire.eip712 import EthKey
from tests.cli.conftest import Cli

pytestmark = [
    pytest.mark.slow, pytest.mark.anvil,
    pytest.mark.skipif(find_anvil() is None, reason="anvil not installed (make setup)"),
]

PRICE = 1000  # 3.60 tUSD per hour at 6 decimals
JOB = ["--", sys.executable, "-c",
       "import time; print('hello from the job', flush=True); time.sleep(3)"]


def read_until(proc: subprocess.Popen[str], pattern: str, seen: list[str]) -> re.Match[str]:
    """Lines of `proc`'s stdout until one matches (the test's timeout bounds the wait)."""
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append(line)
        m = re.search(pattern, line)
        if m:
            return m
    raise AssertionError(f"{pattern!r} never came; output:\n{''.join(seen)}")


def init(cli: Cli) -> str:
    made = cli.call("init", "--light-kdf")
    assert made.returncode == 0, made.stderr
    return re.search(r"account  (0x[0-9a-f]{40})", made.stdout).group(1)  # type: ignore[union-attr]


def interrupt(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    return proc.returncode, out or ""


@dataclass
class Market:
    provider: Cli
    renter: Cli
    broke: Cli
    """A node whose account holds nothing."""
    tty: Cli
    """The renter of the pseudo-terminal tests (an identity of its own: see the report)."""
    bootstrap: str
    serving: subprocess.Popen[str]
    seen: list[str]

    def rent(self, *args: str, cli: Cli | None = None, process: bool = False, **env: str
             ) -> subprocess.CompletedProcess[str]:
        """`rigmesh rent` in a process of its own (`process`), or through `main` here."""
        argv = ("rent", "--bootstrap", self.bootstrap, *args)
        cli = cli or self.renter
        return cli.run(*argv, timeout=180, **env) if process else cli.call(*argv, **env)


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Market]:
    root = tmp_path_factory.mktemp("market")
    provider, renter, broke = Cli(root / "provider"), Cli(root / "renter"), Cli(root / "broke")
    tty = Cli(root / "tty")
    funded = [init(provider), init(renter), init(tty)]
    init(broke)
    chain = Cli(root / "devnet")
    devnet = subprocess.Popen(
        chain.argv("devnet", *(x for a in funded for x in ("--fund", a)), "--tokens", "100"),
        env=chain.environ(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    serving = None
    try:
        seen: list[str] = []
        read_until(devnet, r"^token = ", seen)
        lines = "".join(seen[seen.index("[chain]\n"):])
        for cli in (provider, renter, broke, tty):  # as a person pastes the printed lines
            cli.config.write_text(lines)
        serving = subprocess.Popen(
            provider.argv("provide", "--price-per-hour", "3.60", "--region", "DE/test",
                          "--gpu", "none", "--runner", "subprocess", "--heartbeat-seconds", "2",
                          "--capacity", "2", "--allow-program", Path(sys.executable).name),
            env=provider.environ(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        served: list[str] = []
        bootstrap = read_until(serving, r"renters join with: --bootstrap (\S+)", served).group(1)
        yield Market(provider, renter, broke, tty, bootstrap, serving, served)
    finally:
        if serving is not None and serving.poll() is None:
            code, rest = interrupt(serving)
            # SIGINT: offers withdrawn, a clean stop, exit 0
            assert code == 0 and rest.rstrip().endswith("stopped"), rest
        if devnet.poll() is None:
            code, _ = interrupt(devnet)
            assert code == 0


def test_devnet_without_anvil_says_how_to_get_it(tmp_path: Path) -> None:
    r = Cli(tmp_path).call("devnet", RIGMESH_ANVIL=str(tmp_path / "no-anvil"))
    assert r.returncode == exits.FAILURE
    assert r.stderr.splitlines()[0] == "rigmesh: anvil is not installed"
    assert "run `make setup`" in r.stderr and "RIGMESH_ANVIL" in r.stderr


def amounts(out: str) -> tuple[int, int, int]:
    def grab(pattern: str) -> int:
        m = re.search(pattern, out, re.M)
        assert m, out
        return int(m.group(1))

    return (grab(r"^seconds   (\d+)$"), grab(r"^paid .*\((\d+) base units\)$"),
            grab(r"^refunded .*\((\d+) base units\)$"))


def test_provide_then_rent(market: Market) -> None:
    rented = market.rent("num_gpus=0 dph<=3.6 country=DE", "--duration", "60s", "--yes", *JOB,
                         process=True)
    assert rented.returncode == exits.OK, rented.stdout + rented.stderr
    out = rented.stdout
    assert "hello from the job" in out
    assert "price     3.6 tUSD/h (1000 base units/s)" in out
    assert "deposit   0.06 tUSD for up to 60 s; the most it can cost is 0.06 tUSD" in out
    seconds, paid, refunded = amounts(out)
    assert 2 <= seconds <= 10
    assert paid == PRICE * seconds and paid + refunded == PRICE * 60
    assert re.search(r"^tx        open     0x[0-9a-f]{64}$", out, re.M)
    assert re.search(r"^tx        settled  0x[0-9a-f]{64}$", out, re.M)
    assert "ended     JOB_EXITED" in out
    assert "funded: the rental is open on chain" in rented.stderr

    status = market.provider.run("status", "--json")
    assert status.returncode == 0, status.stderr
    doc = json.loads(status.stdout)
    assert doc["running"] is True and doc["provider"]["offers"][0]["price_per_hour"] == "3.6"
    assert paid in [r["paid"] for r in doc["rentals"]]


def test_prepaid_part_is_topped_up_after_a_low_balance_warning(market: Market) -> None:
    """--prepay locks 20 of the 60 s at the start: the first receipt finds less than
    budget.low_balance_seconds (600 s) left, so the renter is warned, and less than 5 min, so
    the node tops the deposit up from the wallet to what the whole minute costs."""
    job = ["--", sys.executable, "-c", "import time; print('running', flush=True); time.sleep(6)"]
    rented = market.rent("num_gpus=0", "--yes", "--duration", "60s", "--prepay", "20s", *job,
                         process=True)
    assert rented.returncode == exits.OK, rented.stdout + rented.stderr
    out = rented.stdout
    assert ("deposit   0.02 tUSD now, covering 20 s; topped up from your wallet as it runs for "
            "up to 60 s; the most it can cost is 0.06 tUSD") in out
    assert re.search(r"^warning: low-balance: \d+ s left at this rate", rented.stderr, re.M), \
        rented.stderr
    assert re.search(r"^tx        topup    0x[0-9a-f]{64}$", out, re.M), out
    seconds, paid, refunded = amounts(out)
    assert paid == PRICE * seconds and paid + refunded == PRICE * 60  # the topped-up deposit
    too_long = market.rent("num_gpus=0", "--yes", "--duration", "60s", "--prepay", "2m", *JOB)
    assert too_long.returncode == exits.USAGE
    assert "--prepay 2m is longer than --duration 60s" in too_long.stderr


def test_gasless_rental_costs_the_renter_no_gas(market: Market, tmp_path: Path) -> None:
    """A renter with test stablecoins and no native gas token rents with --gasless: it signs a
    permit and the agreement, the provider submits openFor (paying the gas), the job runs and
    settles. The renter paid no gas, and of its tokens exactly what the receipts say."""
    chain = tomllib.loads(market.renter.config.read_text())["chain"]
    w3 = Web3(Web3.HTTPProvider(chain["rpc"]))
    deployment = Deployment(chain["chain_id"], bytes.fromhex(chain["escrow"][2:]),
                            bytes.fromhex(chain["token"][2:]))
    gasless = Cli(tmp_path / "gasless")
    account = bytes.fromhex(init(gasless)[2:])
    gasless.config.write_text(market.renter.config.read_text())
    fund(w3, EthKey(ANVIL_DEV_KEY), deployment, account, wei=0, tokens=PRICE * 60)

    rented = market.rent("num_gpus=0", "--yes", "--gasless", "--duration", "60s", *JOB,
                         cli=gasless, process=True)
    assert rented.returncode == exits.OK, rented.stdout + rented.stderr
    assert "hello from the job" in rented.stdout
    seconds, paid, refunded = amounts(rented.stdout)
    assert paid == PRICE * seconds and paid + refunded == PRICE * 60
    balance = gasless.run("balance", "--json")
    assert balance.returncode == 0, balance.stderr
    doc = json.loads(balance.stdout)
    # The permit moved the whole deposit out of the wallet; the refund waits in the escrow.
    assert (int(doc["gas_wei"]), int(doc["wallet"]), int(doc["escrow_free"])) == (0, 0, refunded)


def test_offers_table_json_and_no_match(market: Market) -> None:
    listed = market.renter.call("offers", "num_gpus=0", "--json", "--bootstrap", market.bootstrap)
    assert listed.returncode == 0, listed.stderr
    (offer,) = json.loads(listed.stdout)
    assert offer["price_per_second"] == PRICE and offer["price_per_hour"] == "3.6"
    assert offer["region"] == {"country": "DE", "zone": "test"} and offer["reputation"] == 500
    assert "syncing offers" in listed.stderr
    table = market.renter.call("offers", "num_gpus>=0 country in [NL,DE]", "--bootstrap",
                              market.bootstrap)
    assert table.returncode == 0, table.stderr
    assert "tUSD/h" in table.stdout and "DE/test" in table.stdout and "3.6" in table.stdout
    gpu_only = market.renter.call("offers", "--bootstrap", market.bootstrap)
    assert gpu_only.returncode == exits.NO_OFFER
    none = market.renter.call("offers", "num_gpus=0 dph<3", "--bootstrap", market.bootstrap)
    assert none.returncode == exits.NO_OFFER
    assert "rigmesh: no offer matches (1 offer(s) in the book)" in none.stderr
    assert "dropping `dph<3` would find 1 offer(s)" in none.stderr


def test_refusals_before_money_moves(market: Market) -> None:
    q = "num_gpus=0"
    wrong_chain = market.rent(q, "--yes", "--chain-id", "5", *JOB)
    assert wrong_chain.returncode == exits.CHAIN
    assert "wrong chain: the RPC reports chain id 31337, the config says 5" in wrong_chain.stderr
    no_escrow = market.rent(q, "--yes", "--escrow", "0x" + "00" * 19 + "01", *JOB)
    assert no_escrow.returncode == exits.CHAIN
    assert "no escrow deployed at 0x0000000000000000000000000000000000000001" in no_escrow.stderr
    budget = market.rent(q, "--yes", "--duration", "60s", "--budget-per-rental", "59999", *JOB)
    assert budget.returncode == exits.BUDGET
    assert "budget exceeded: the rental would lock 60000, budget.per_rental is 59999" \
        in budget.stderr
    no_gas = market.rent(q, "--yes", *JOB, cli=market.broke)
    assert no_gas.returncode == exits.FUNDS
    assert "has no native gas token" in no_gas.stderr and "--gasless" in no_gas.stderr
    no_tokens = market.rent(q, "--yes", "--gasless", "--duration", "60s", *JOB, cli=market.broke)
    assert no_tokens.returncode == exits.FUNDS
    assert "insufficient tUSD: the rental locks 60000 base units" in no_tokens.stderr
    no_match = market.rent("num_gpus=0 country=NL", "--yes", *JOB)
    assert no_match.returncode == exits.NO_OFFER
    assert "dropping `country=NL` would find 1 offer(s)" in no_match.stderr
    for r in (wrong_chain, no_escrow, budget, no_gas, no_tokens):
        assert "rigmesh rent" not in r.stdout and "rental    0x" not in r.stdout


def test_provider_refusal_is_a_peer_exit(market: Market) -> None:
    """The provider runs only the programs it allows (the fixture's: this Python): a proposal
    for another one is rejected in negotiation, before any money moves, and `rent` says why."""
    refused = market.rent("num_gpus=0", "--yes", "--duration", "60s", "--", "sh", "-c", "true")
    assert refused.returncode == exits.PEER, refused.stdout + refused.stderr
    assert "the provider did not rent" in refused.stderr, refused.stderr
    assert "program 'sh' not allowed" in refused.stderr, refused.stderr
    assert "rental    0x" not in refused.stdout


def test_bad_flags_and_input_are_refused(market: Market) -> None:
    no_yes = market.rent("num_gpus=0", *JOB)
    assert no_yes.returncode == exits.USAGE
    assert "refusing to rent without confirmation" in no_yes.stderr and "--yes" in no_yes.stderr
    no_cmd = market.rent("num_gpus=0", "--yes")
    assert no_cmd.returncode == exits.USAGE and "no command to run" in no_cmd.stderr
    bad_query = market.rent("num_gpus=0 vram<80", "--yes", *JOB)
    assert bad_query.returncode == exits.USAGE
    assert "bad query: vram takes >= >, not <" in bad_query.stderr
    assert "\n  num_gpus=0 vram<80\n" + " " * 17 + "^\n" in bad_query.stderr  # under the <
    bad_duration = market.rent("num_gpus=0", "--yes", "--duration", "soon", *JOB)
    assert bad_duration.returncode == exits.USAGE
    assert "--duration: 'soon' is not a duration" in bad_duration.stderr
    bad_price = market.provider.call("provide", "--price-per-hour", "2.50", "--region", "DE")
    assert bad_price.returncode == exits.USAGE
    assert ("the nearest valid prices per hour are 2.4984 (694 units/s) or 2.502 "
            "(695 units/s)") in bad_price.stderr
    bad_region = market.provider.call("provide", "--price-per-hour", "3.6", "--region", "Germany")
    assert bad_region.returncode == exits.USAGE
    assert "--region: 'Germany' does not start with a two-letter country code" \
        in bad_region.stderr


# -- in a pseudo-terminal: the prompt, the live line, Ctrl-C ------------------------------------

pexpect = pytest.importorskip("pexpect")


def spawn(market: Market, *args: str) -> pexpect.spawn:
    cli = market.tty
    argv = cli.argv("rent", "--bootstrap", market.bootstrap, *args)
    child = pexpect.spawn(argv[0], argv[1:], env=cli.environ(), encoding="utf-8", timeout=90,
                          dimensions=(40, 200))
    child.logfile_read = sys.stderr  # the whole session in the test's report if it fails
    return child


def test_confirm_prompt_answered_no_rents_nothing(market: Market) -> None:
    child = spawn(market, "num_gpus=0", *JOB)
    child.expect(r"deposit   3\.6 tUSD for up to 3600 s")
    child.expect_exact("rent it? [y/N] ")
    child.sendline("n")
    child.expect_exact("not rented")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_live_line_and_ctrl_c_stops_and_settles(market: Market) -> None:
    job = ["--", sys.executable, "-c",
           "import time\nfor i in range(120):\n    print('tick', i, flush=True); time.sleep(1)"]
    child = spawn(market, "num_gpus=0", "--duration", "5m", *job)
    child.expect_exact("rent it? [y/N] ")
    child.sendline("y")
    child.expect("tick 1")
    child.expect(r"elapsed \d+ s \| cost so far [\d.]+ tUSD \| deposit left [\d.]+ tUSD \| "
                 r"projected total 0\.3 tUSD")
    child.sendintr()
    child.expect_exact("stop the rental? (closes it and settles) [y/N] ")
    child.sendline("n")
    child.expect_exact("continuing")
    child.expect(r"tick \d+")
    child.sendintr()
    child.expect_exact("stop the rental? (closes it and settles) [y/N] ")
    child.sendline("y")
    child.expect_exact("stopping the rental: closing and settling")
    child.expect(r"ended     RENTER_STOPPED")
    child.expect(pexpect.EOF)
    out = child.before
    child.close()
    assert child.exitstatus == 0, out
    seconds, paid, refunded = amounts(out.replace("\r\n", "\n"))
    assert 2 <= seconds < 120 and paid == PRICE * seconds
    assert paid + refunded == PRICE * 300
