"""`make demo` end to end, as a user runs it: a real subprocess with real libp2p hosts on
loopback, the embedded chain and the on-disk book. The demo asserts the money rules itself."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_runs_end_to_end() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "rigmesh.cli", "demo"],
        capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "renter's book: 2 offers" in out
    assert "NVIDIA H100 80GB HBM3" in out
    assert "paid exactly what the renter signed" in out
    assert "2 offers at once" in out
    assert out.rstrip().endswith("demo complete")
