"""Paths and constants of the exec tests: GPU captures (real H100 readings), job interpreter."""

from __future__ import annotations

import os
import sys
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"
H100_UUID = "GPU-3181bf17-40f0-9f37-c27d-cae48cda3f9f"
H100_NAME = "NVIDIA H100 80GB HBM3"
H100_VRAM_MIB = 81559

# Jobs run this interpreter by its real path (a venv's python is a link into the base install),
# and the confined runner binds its installation read-only when it lives outside /usr.
JOB_PY = os.path.realpath(sys.executable)
JOB_RO_PATHS = () if sys.base_prefix.startswith("/usr/") else (sys.base_prefix,)
FAKE_GPUS = {"GPU-aaaa": 0, "GPU-bbbb": 1}  # uuid -> minor of the fake /dev/nvidia<minor>
# Job cgroups of this test run are named rigmesh.<TEST_RID>.<hex>: the leftover check after each
# test looks for exactly these, not for other runs' on a shared machine.
TEST_RID = f"test{os.getpid()}"
