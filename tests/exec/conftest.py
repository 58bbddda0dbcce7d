"""Shared fixtures for the exec tests: real H100 captures and a fake nvidia-smi executable."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rigmesh.exec.gpu import ReplayNvml

FIXTURES = Path(__file__).parent / "fixtures"
H100_UUID = "GPU-3181bf17-40f0-9f37-c27d-cae48cda3f9f"
H100_NAME = "NVIDIA H100 80GB HBM3"


@pytest.fixture
def replay_nvml() -> ReplayNvml:
    return ReplayNvml.from_file(str(FIXTURES / "nvml-h100.json"))


@pytest.fixture
def fake_smi() -> str:
    path = FIXTURES / "fake-nvidia-smi"
    # A checkout may lose the exec bit; the script must run as a real executable.
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return str(path)
