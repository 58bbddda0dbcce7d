"""Shared fixtures for the exec tests: real H100 captures, a fake nvidia-smi executable, and
the confined runner (skipped, with the reason, on hosts that cannot confine)."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator

import pytest
from exec_fixtures import FAKE_GPUS, FIXTURES, JOB_RO_PATHS, TEST_RID

from rigmesh.exec import ConfinedRunner, Confinement, Isolation, detect_confinement
from rigmesh.exec.confined import gpu_table
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


# -- the confined runner ----------------------------------------------------------------------


@pytest.fixture(scope="session")
def confinement() -> Confinement:
    """What this host gives; tests of the confined runner skip (saying why) where it gives none.
    On the project's CI machines (root, cgroup v1, bubblewrap from `make system-deps`) they run."""
    conf = detect_confinement()
    if conf.isolation is not Isolation.NAMESPACES_CGROUP:
        pytest.skip("confined runner tests need bubblewrap and cgroups: " + "; ".join(conf.reasons))
    return conf


@pytest.fixture(scope="session")
def confined_base() -> Iterator[str]:
    """A base directory the job's uid can pass through (pytest's tmp dirs are 0700)."""
    d = tempfile.mkdtemp(prefix="rigmesh-test-")
    os.chmod(d, 0o711)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def fake_dev(confined_base: str) -> str:
    """A /dev stand-in with NVIDIA device nodes (major 195, as the driver's): CI has no GPU.
    Opening one reaches the kernel, which finds no driver: ENXIO, not the data of any GPU."""
    if os.geteuid() != 0:
        pytest.skip("making device nodes needs root")
    d = os.path.join(confined_base, "dev")
    os.mkdir(d, 0o755)
    for name, minor in [*((f"nvidia{m}", m) for m in FAKE_GPUS.values()), ("nvidiactl", 255)]:
        path = os.path.join(d, name)
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(195, minor))
        os.chmod(path, 0o666)  # as the driver's nodes are (mknod's mode went through umask)
    return d


@pytest.fixture
def confined_runner(confinement: Confinement, confined_base: str, fake_dev: str) -> ConfinedRunner:
    return ConfinedRunner(
        confined_base,
        runner_id=TEST_RID,
        confinement=confinement,
        ro_paths=JOB_RO_PATHS,
        dev_dir=fake_dev,
        gpus=gpu_table(FAKE_GPUS),
    )
