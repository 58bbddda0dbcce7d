"""An installed rigmesh works on its own: build the wheel, install it in a fresh venv, run it.

Offline and fast: the fresh venv gets its dependencies with `pip install --no-index` from a
wheelhouse this test packs from the distributions installed in the running interpreter (each
one's files as its RECORD lists them), never from the network and never by sharing this
environment's site-packages. Only rigmesh's runtime dependencies (no test extras) go in, so a
runtime import of a test-only package fails here.
"""

from __future__ import annotations

import csv
import importlib.metadata as md
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def _runtime_closure(requires: list[str]) -> dict[str, md.Distribution]:
    """The distributions installed here that `requires` (a wheel's Requires-Dist) needs,
    recursively, extras and markers honoured; test extras are left out."""
    installed = {canonicalize_name(d.metadata["Name"]): d for d in md.distributions()}
    todo: list[tuple[str, frozenset[str]]] = []
    for line in requires:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            todo.append((req.name, frozenset(req.extras)))
    seen: dict[str, set[str]] = {}
    out: dict[str, md.Distribution] = {}
    while todo:
        name, extras = todo.pop()
        key = canonicalize_name(name)
        if key in seen and extras <= seen[key]:
            continue
        seen.setdefault(key, set()).update(extras)
        dist = installed[key]
        out[key] = dist
        for line in dist.requires or []:
            req = Requirement(line)
            envs = [{"extra": e} for e in (seen[key] or {""})]
            if req.marker is None or any(req.marker.evaluate(env) for env in envs):
                todo.append((req.name, frozenset(req.extras)))
    return out


def _pack(dist: md.Distribution, into: Path) -> None:
    """A wheel of an installed distribution: its site-packages files, its dist-info, its tags."""
    info = Path(str(dist._path))  # type: ignore[attr-defined]
    site = info.parent
    wheel_meta = (info / "WHEEL").read_text()
    tags = [line.split(":", 1)[1].strip() for line in wheel_meta.splitlines()
            if line.startswith("Tag:")]
    py, abi, plat = (".".join(sorted({t.split("-")[i] for t in tags})) for i in range(3))
    name = canonicalize_name(dist.metadata["Name"]).replace("-", "_")
    target = into / f"{name}-{dist.version}-{py}-{abi}-{plat}.whl"
    skip = {"INSTALLER", "REQUESTED", "direct_url.json", "RECORD"}
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as z, \
            (info / "RECORD").open() as rec:
        rows = []
        for row in csv.reader(rec):
            path = row[0]
            if path.startswith("..") or "__pycache__" in path:
                continue  # scripts and data outside site-packages: pip makes scripts anew
            if path.startswith(info.name + "/") and path.split("/", 1)[1] in skip:
                continue
            if (site / path).is_file():
                z.write(site / path, path)
                rows.append(row)
        rows.append([f"{info.name}/RECORD", "", ""])
        text = "".join(",".join(r) + "\n" for r in rows)
        z.writestr(f"{info.name}/RECORD", text)


def _run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=300, **kw)  # type: ignore[call-overload, no-any-return]


@pytest.mark.slow
def test_the_wheel_installs_and_runs_alone(tmp_path: Path) -> None:
    started = time.monotonic()
    # The build backend (setuptools >= 77) comes from the configured index, as for any sdist.
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", str(ROOT), "-w",
                  str(tmp_path / "dist")])
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next((tmp_path / "dist").glob("rigmesh-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "rigmesh/escrow/artifacts/RentalEscrow.json" in names
    assert "rigmesh/exec/recordings/nvml-h100.json" in names
    assert not any(n.startswith("tests/") for n in names)

    house = tmp_path / "wheelhouse"
    house.mkdir()
    with zipfile.ZipFile(wheel) as z:
        meta = z.read("rigmesh-0.1.0.dist-info/METADATA").decode()
    deps = _runtime_closure([line.split(":", 1)[1].strip() for line in meta.splitlines()
                             if line.startswith("Requires-Dist:")])
    assert "eth-tester" in deps and "py-evm" in deps  # the embedded chain is a runtime need
    for test_only in ("pytest", "hypothesis", "pycddl", "ruff", "matplotlib", "dask"):
        assert test_only not in deps, test_only
    for dist in deps.values():
        _pack(dist, house)

    venv = tmp_path / "venv"
    made = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    assert made.returncode == 0, made.stderr
    py = venv / "bin" / "python"
    # This interpreter's pip installs into the fresh venv (--python): no pip bootstrap needed.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PIP_", "PYTHON", "VIRTUAL_ENV"))}
    installed = _run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q",
                      "--no-index", "--find-links", str(house), "--no-cache-dir",
                      "--isolated", str(wheel)], env=env)
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]

    rigmesh = venv / "bin" / "rigmesh"
    outside = tmp_path / "elsewhere"  # not the checkout: nothing found through the cwd
    outside.mkdir()
    env["HOME"] = str(tmp_path)
    for args in (["--help"], ["demo", "--help"]):
        done = _run([str(rigmesh), *args], cwd=outside, env=env)
        assert done.returncode == 0, (args, done.stderr[-3000:])
        assert "usage: rigmesh" in done.stdout
    # The installed package, not the checkout, answers.
    where = _run([str(py), "-c", "import rigmesh; print(rigmesh.__file__)"], cwd=outside,
                 env=env)
    assert str(venv) in where.stdout, where.stdout
    # A real command on the embedded chain: the demo deploys the escrow on py-evm, runs
    # libp2p hosts and a rental, and checks the money rules itself.
    demo = _run([str(rigmesh), "demo", "--embedded"], cwd=outside, env=env)
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-3000:]
    assert demo.stdout.rstrip().endswith("demo complete")
    assert time.monotonic() - started < 180
