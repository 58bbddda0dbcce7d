"""The simulator lives in simulations/ (not in the installed package): put it on the path, as
`rigmesh sim` does."""

from __future__ import annotations

import sys
from pathlib import Path

SIMULATIONS = Path(__file__).resolve().parents[2] / "simulations"
if str(SIMULATIONS) not in sys.path:
    sys.path.insert(0, str(SIMULATIONS))
