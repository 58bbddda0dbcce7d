"""`rigmesh devnet`, `rigmesh provide` and `rigmesh rent` as three processes, each with its own
home, on anvil: the path a person walks, from an empty directory to a settled rental."""

from __future__ import annotations

import json
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from rigmesh.chain.anvil import find_anvil
from rigmesh.cli import exits
from tests.cli.conftest import Cli

pytestmark = [
    pytest.mark.slow, pytest.mark.anvil,
    pytest.mark.skipif(find_anvil() is None, reason="anvil not installed (make setup)"),
]

PRICE = 1000  # 3.60 tUSD per hour at 6 decimals


def read_until(proc: subprocess.Popen[str], pattern: str, seen: list[str]) -> re.Match[str]:
    """Lines of `proc`'s stdout until one matches (the test's timeout bounds the wait)."""
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append(line)
        m = re.search(pattern, line)
        if m:
            return m
    raise AssertionError(f"{pattern!r} never came; output:\n{''.join(seen)}")


def account(cli: Cli) -> str:
    made = cli.run("init", "--light-kdf")
    assert made.returncode == 0, made.stderr
    return re.search(r"account  (0x[0-9a-f]{40})", made.stdout).group(1)  # type: ignore[union-attr]


def stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    return proc.returncode, out


@pytest.fixture
def devnet(tmp_path: Path) -> Iterator[tuple[Cli, Cli, subprocess.Popen[str]]]:
    provider, renter = Cli(tmp_path / "provider"), Cli(tmp_path / "renter")
    funded = [account(provider), account(renter)]
    chain = Cli(tmp_path / "devnet")
    proc = subprocess.Popen(
        chain.argv("devnet", "--fund", funded[0], "--fund", funded[1], "--tokens", "100"),
        env=chain.environ(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen: list[str] = []
        read_until(proc, r"^token = ", seen)
        lines = "".join(seen[seen.index("[chain]\n"):])
        for cli in (provider, renter):  # as a person pastes the printed lines
            cli.config.write_text(lines)
        yield provider, renter, proc
    finally:
        if proc.poll() is None:
            code, _ = stop(proc)
            assert code == 0


def test_provide_then_rent_on_anvil(devnet: tuple[Cli, Cli, subprocess.Popen[str]]) -> None:
    provider, renter, _ = devnet
    serving = subprocess.Popen(
        provider.argv("provide", "--price-per-hour", "3.60", "--region", "DE/test",
                      "--gpu", "none", "--runner", "subprocess", "--heartbeat-seconds", "2"),
        env=provider.environ(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: list[str] = []
    try:
        bootstrap = read_until(serving, r"renters join with: --bootstrap (\S+)", seen).group(1)
        rented = renter.run(
            "rent", "num_gpus=0 dph<=3.6 country=DE", "--duration", "60s", "--yes",
            "--bootstrap", bootstrap, "--",
            "python3", "-c", "import time; print('hello from the job', flush=True); time.sleep(3)",
            timeout=180)
        assert rented.returncode == exits.OK, rented.stdout + rented.stderr
        out = rented.stdout
        assert "hello from the job" in out
        assert "price     3.6 tUSD/h (1000 base units/s)" in out
        assert "deposit   0.06 tUSD for up to 60 s" in out
        seconds = int(re.search(r"^seconds   (\d+)$", out, re.M).group(1))  # type: ignore[union-attr]
        paid = int(re.search(r"^paid .*\((\d+) base units\)$", out, re.M).group(1))  # type: ignore[union-attr]
        refunded = int(re.search(r"^refunded .*\((\d+) base units\)$", out, re.M).group(1))  # type: ignore[union-attr]
        assert 2 <= seconds <= 10
        assert paid == PRICE * seconds and paid + refunded == PRICE * 60
        assert re.search(r"^tx        open     0x[0-9a-f]{64}$", out, re.M)
        assert re.search(r"^tx        settled  0x[0-9a-f]{64}", out, re.M)
        assert "ended     JOB_EXITED" in out

        status = provider.run("status", "--json")
        assert status.returncode == 0, status.stderr
        doc = json.loads(status.stdout)
        assert doc["running"] is True and doc["earned"] == paid
        assert [r["paid"] for r in doc["rentals"]] == [paid]
    finally:
        code, rest = stop(serving)
    assert code == 0, "".join(seen) + rest
    assert "stopped" in rest
    after = provider.run("status", "--json")
    assert json.loads(after.stdout)["running"] is False
