"""`make demo` as a user runs it: `rigmesh demo` in a subprocess. The demo checks the books
itself (the renter's loss equals the providers' gain equals the receipts paid, read on chain)
and exits 1 when they do not balance; this test also reads its table."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from rigmesh.chain.anvil import find_anvil


def demo(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-W", "error::ResourceWarning", "-m", "rigmesh.cli", "demo", *args],
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "ResourceWarning" not in done.stderr, done.stderr[-4000:]
    return done.stdout


@pytest.mark.slow
@pytest.mark.anvil
@pytest.mark.skipif(find_anvil() is None, reason="anvil not installed (make setup)")
def test_demo_processes_on_anvil() -> None:
    out = demo()
    assert "3. `rigmesh provide` x3" in out
    # The cheapest of the three offers (2.88 tUSD/h = 800 base units a second) is taken.
    assert out.count("price     2.88 tUSD/h (800 base units/s)") == 2
    rows = re.findall(r"^   (a workload to its end|provider killed mid-run)\s+(\w+)\s+(\d+)"
                      r"\s+(\d+)\s+(\d+)$", out, re.M)
    assert [r[0] for r in rows] == ["a workload to its end", "provider killed mid-run"]
    for _, _ended, seconds, paid, refunded in rows:
        assert int(paid) == 800 * int(seconds)  # exactly the signed seconds at the price
        assert int(paid) + int(refunded) == 800 * 120  # the deposit: two minutes
    assert rows[0][1] == "JOB_EXITED"
    assert int(rows[0][2]) >= 3  # the workload runs six steps of a second: paid for, not free
    assert rows[1][1] in ("HEARTBEAT_MISSED", "PROVIDER_RESTARTED")
    assert re.search(r"renter's tUSD down by (\d+), providers' up by \1, receipts paid \1", out)
    assert "every token unit accounted for" in out


def test_demo_embedded_in_one_process() -> None:
    out = demo("--embedded")
    m = re.search(r"paid (\d+), refunded (\d+)", out)
    assert m and int(m.group(1)) + int(m.group(2)) == 1000 * 120
    assert re.search(r"renter's tUSD down by (\d+), provider's up by \1", out)
    assert out.rstrip().endswith("demo complete")
