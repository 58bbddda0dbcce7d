"""What a node is told: who it is, where its chain is, whom to meet, what it offers or wants.

One dataclass per concern; `NodeConfig` holds them. The CLI builds them from flags, environment
and the config file (rigmesh.cli); tests build them directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rigmesh.market.listing import Listing
from rigmesh.rental.evidence import EvidencePolicy
from rigmesh.rental.money import ClaimPolicy
from rigmesh.rental.policy import ProviderPolicy
from rigmesh.rental.timers import DEFAULT_TIMERS, Timers
from rigmesh.store.keys import NodeKeys


@dataclass(frozen=True)
class ChainSettings:
    """The chain: a JSON-RPC endpoint (anvil, a devnet, a public test chain), or None for the
    embedded py-evm chain of this process (`embedded`, tests and one-process demos)."""

    rpc: str | None
    chain_id: int
    escrow: bytes
    token: bytes
    confirmations: int = 0
    poll: float = 1.0
    start_block: int = 0
    """The first block the chain watcher reads (the escrow's deployment block on a long chain)."""


@dataclass(frozen=True)
class ProviderSettings:
    listings: tuple[Listing, ...]
    policy: ProviderPolicy = field(default_factory=ProviderPolicy)
    claims: ClaimPolicy = field(default_factory=ClaimPolicy)
    gpu_source: str = "probe"
    """"probe": NVML, then nvidia-smi, else no GPU; "recorded-h100": replay the recorded H100
    (a demo on a host without a GPU: its offers say so in their region zone); "none"."""
    allow_unconfined: bool = False
    """Run strangers' jobs as plain processes of the node's user where the host cannot confine
    them (rigmesh.exec.choose_runner). Off by default: such a node refuses to start."""
    runner: str = "auto"
    """"auto" (confined if the host allows, see allow_unconfined), "subprocess" (never
    confined: for tests, and providers renting only to themselves)."""
    telemetry_seconds: float = 5.0
    output_keep: int = 1 << 20
    """Bytes of a job's output kept for the renter to fetch (the newest)."""


@dataclass(frozen=True)
class RenterSettings:
    evidence: EvidencePolicy = field(default_factory=EvidencePolicy)
    timers: Timers = DEFAULT_TIMERS
    results_dir: Path | None = None
    """Where a rental's result files go (default: <home>/results/<rental id>)."""


@dataclass(frozen=True)
class NodeConfig:
    home: Path
    keys: NodeKeys
    chain: ChainSettings
    listen: tuple[str, ...] = ("/ip4/127.0.0.1/tcp/0",)
    bootstrap: tuple[str, ...] = ()
    target_peers: int = 8
    provider: ProviderSettings | None = None
    renter: RenterSettings = field(default_factory=RenterSettings)
    faults: tuple[str, ...] = ()
    """Crash points (rigmesh.node.faults) where this node kills itself: crash tests only."""
    mdns: bool = False
