"""The `rigmesh` command run as a person runs it: a subprocess with its own home, config file and
environment (no setting leaks in from the machine running the tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

RIGMESH = [sys.executable, "-m", "rigmesh.cli"]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RIGMESH_")}
    env.update(extra)
    return env


@dataclass
class Cli:
    """One user's node: its home, its config file, its environment."""

    root: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    def argv(self, *args: str) -> list[str]:
        return [*RIGMESH, "--home", str(self.home), "--config", str(self.config), *args]

    def environ(self, password: str | None = "pw", **extra: str) -> dict[str, str]:
        env = clean_env(**self.env, **extra)
        if password is not None:
            env["RIGMESH_PASSWORD"] = password
        return env

    def run(self, *args: str, password: str | None = "pw", timeout: float = 120,
            **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*args), env=self.environ(password, **extra),
                              capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)
