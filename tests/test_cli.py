"""The `rigmesh` command, run as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

RIGMESH = [sys.executable, "-m", "rigmesh.cli"]


def run(home: Path, *args: str, password: str | None = "pw") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "RIGMESH_PASSWORD"}
    if password is not None:
        env["RIGMESH_PASSWORD"] = password
    return subprocess.run(
        [*RIGMESH, "--home", str(home), *args],
        env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )


def test_keys_init_then_show(tmp_path: Path) -> None:
    made = run(tmp_path, "keys", "init", "--light-kdf")
    assert made.returncode == 0, made.stderr
    assert made.stdout.startswith("peer id  12D3KooW")
    shown = run(tmp_path, "keys", "show")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == made.stdout


def test_keys_errors_are_reported_not_raised(tmp_path: Path) -> None:
    missing = run(tmp_path, "keys", "show")
    assert missing.returncode == 1 and "no keys" in missing.stderr
    assert run(tmp_path, "keys", "init", "--light-kdf").returncode == 0
    wrong = run(tmp_path, "keys", "show", password="nope")
    assert wrong.returncode == 1 and "wrong password" in wrong.stderr
    again = run(tmp_path, "keys", "init", "--light-kdf")
    assert again.returncode == 1 and "already exist" in again.stderr
    no_tty = run(tmp_path, "keys", "show", password=None)
    assert no_tty.returncode != 0 and "RIGMESH_PASSWORD" in no_tty.stderr
