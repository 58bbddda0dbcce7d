"""The rental core is pure: it imports no trio and no shell module, and reads no clock (every
time it knows comes in as an argument). Checked on the installed modules and on the source."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import rigmesh.rental

RENTAL = Path(rigmesh.rental.__file__).parent
SHELL = ("rigmesh.p2p", "rigmesh.exec", "rigmesh.store", "rigmesh.chain", "rigmesh.node",
         "rigmesh.cli", "rigmesh.escrow.client")
FORBIDDEN_IMPORTS = {"trio", "asyncio", "socket", "time", "datetime", "threading", "random",
                     "subprocess", "os", "sqlite3"}


def test_importing_the_core_pulls_in_no_trio_and_no_shell() -> None:
    code = (
        "import importlib, pkgutil, sys, rigmesh.rental as r\n"
        "for m in pkgutil.iter_modules(r.__path__):\n"
        "    importlib.import_module('rigmesh.rental.' + m.name)\n"
        "print('\\n'.join(sorted(sys.modules)))\n"
    )
    loaded = set(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                text=True).stdout.split())
    assert "trio" not in loaded
    assert not [m for m in loaded if m.startswith(SHELL)]
    assert "rigmesh.rental.provider" in loaded  # the walk did import the modules


def test_no_module_of_the_core_imports_io_or_the_clock() -> None:
    found = []
    for path in sorted(RENTAL.glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                if name.split(".")[0] in FORBIDDEN_IMPORTS or name.startswith(SHELL):
                    found.append(f"{path.name}: {name}")
    assert found == []
    assert len(list(RENTAL.glob("*.py"))) >= 15
