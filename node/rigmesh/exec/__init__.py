"""Provider-side execution shell: job runners, GPU probe, telemetry and its evidence checker.

The stable surface for the rest of the node (offers advertise `Runner.isolation`):

- `Isolation`: what separates a job from the host ("none", "namespaces", "namespaces+cgroup").
- `detect_confinement()` -> `Confinement`: what this host can give, and why not more.
- `choose_runner(allow_unconfined=...)`: the confined runner where possible, else
  `ConfinementUnavailable` (or the subprocess runner when the provider allowed that).
"""

from rigmesh.exec.confined import (
    ConfinedRunner,
    Confinement,
    ConfinementUnavailable,
    choose_runner,
    detect_confinement,
)
from rigmesh.exec.runner import (
    Isolation,
    Job,
    JobResult,
    JobSpec,
    Limits,
    Runner,
    StopReason,
    SubprocessRunner,
)
from rigmesh.exec.sandbox import NetworkPolicy

__all__ = [
    "ConfinedRunner",
    "Confinement",
    "ConfinementUnavailable",
    "Isolation",
    "Job",
    "JobResult",
    "JobSpec",
    "Limits",
    "NetworkPolicy",
    "Runner",
    "StopReason",
    "SubprocessRunner",
    "choose_runner",
    "detect_confinement",
]
