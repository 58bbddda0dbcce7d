"""Paths and constants of the GPU captures in tests/exec/fixtures (real H100 readings)."""

from __future__ import annotations

from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"
H100_UUID = "GPU-3181bf17-40f0-9f37-c27d-cae48cda3f9f"
H100_NAME = "NVIDIA H100 80GB HBM3"
H100_VRAM_MIB = 81559
