"""Shared fixtures for the exec tests: real H100 captures and a fake nvidia-smi executable."""

from __future__ import annotations

import os

import pytest
from exec_fixtures import FIXTURES

from rigmesh.exec.gpu import ReplayNvml


@pytest.fixture
def replay_nvml() -> ReplayNvml:
    return ReplayNvml.recorded_h100()


@pytest.fixture
def fake_smi() -> str:
    path = FIXTURES / "fake-nvidia-smi"
    # A checkout may lose the exec bit; the script must run as a real executable.
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return str(path)
