"""cgroups for confined jobs: hard memory, process, CPU and device limits, and kill-everything.

Two halves, as everywhere in the shell:

- Planning (pure): from the text of /proc/self/mountinfo and /proc/self/cgroup, where this process
  sits in each hierarchy (`find_layout`); from a layout, a job name and `CgroupLimits`, which
  directories to make and which file gets which value, in order (`plan_job`). Unit-tested against
  literal text and a temporary directory standing in for the cgroup filesystem.
- `JobCgroup` (I/O): performs a plan, reads the kernel's counters, freezes and kills, removes.

Both versions. v1 (one hierarchy per controller; this project's CI machines): memory
(`memory.limit_in_bytes`, and `memory.memsw.limit_in_bytes` so swap cannot extend it), pids,
cpu (CFS quota), cpuacct, devices (`devices.deny` / `devices.allow`), freezer. v2 (one unified
hierarchy, most current distributions): `memory.max`, `memory.swap.max`, `memory.oom.group`,
`pids.max`, `cpu.max`, `cgroup.freeze`, `cgroup.kill`; v2 has no devices files (the kernel
takes a BPF program instead: `rigmesh.exec.bpfdev`).

Job cgroups are made below the node's own cgroup in each hierarchy, so the node's own limits
(a systemd unit's, a container's) still bound its jobs, and nothing outside is touched.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import os
import signal
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

V1_CONTROLLERS = ("memory", "pids", "cpu", "cpuacct", "devices", "freezer")
V2_CONTROLLERS = ("memory", "pids", "cpu")  # devices: BPF; freeze and kill: core files
CFS_PERIOD_US = 100_000


class CgroupVersion(enum.Enum):
    V1 = "v1"
    V2 = "v2"


class CgroupError(RuntimeError):
    """The cgroup could not be made or configured (permissions, a missing controller)."""


# -- what the kernel offers: mounts and our place in them ---------------------------------------


@dataclass(frozen=True)
class CgroupMount:
    mount_point: str
    root: str  # the hierarchy path mounted there ("/" unless bind-mounted from deeper)
    version: CgroupVersion
    controllers: frozenset[str]  # v1: from the super options; v2: filled from cgroup.controllers


def _unescape(path: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    out, i = [], 0
    while i < len(path):
        if path[i] == "\\" and i + 3 < len(path) and path[i + 1 : i + 4].isdigit():
            out.append(chr(int(path[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(path[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[CgroupMount]:
    """The cgroup and cgroup2 mounts in a /proc/<pid>/mountinfo text."""
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        f, r = left.split(), right.split()
        if len(f) < 5 or len(r) < 3:
            continue
        fstype, superopts = r[0], r[2]
        if fstype == "cgroup":
            ctrls = frozenset(o for o in superopts.split(",") if o not in ("rw", "ro"))
            mounts.append(CgroupMount(_unescape(f[4]), _unescape(f[3]), CgroupVersion.V1, ctrls))
        elif fstype == "cgroup2":
            mounts.append(
                CgroupMount(_unescape(f[4]), _unescape(f[3]), CgroupVersion.V2, frozenset())
            )
    return mounts


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """controller -> path from /proc/<pid>/cgroup; the v2 entry ("0::/path") is under ""."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, ctrls, path = parts
        if not ctrls:
            out[""] = path
        for c in ctrls.split(","):
            if c:
                out[c] = path
    return out


def _join(mount: CgroupMount, path: str) -> str:
    rel = path
    if mount.root != "/" and (path == mount.root or path.startswith(mount.root + "/")):
        rel = path[len(mount.root) :]  # a container's view: the mount root is our path's prefix
    return os.path.normpath(mount.mount_point + "/" + rel.lstrip("/"))


@dataclass(frozen=True)
class CgroupLayout:
    """Where job cgroups go on this host: the node's own cgroup in each hierarchy."""

    version: CgroupVersion
    parents: Mapping[str, str]  # v1: controller -> directory; v2: {"": directory}
    mount_point: str = ""  # v2: the unified mount (for the BPF attach and the root check)

    def dirs(self, name: str) -> dict[str, str]:
        """controller (v1) or "" (v2) -> the job's directory."""
        return {c: os.path.join(p, name) for c, p in self.parents.items()}


def find_layout(
    mounts: Iterable[CgroupMount], own: Mapping[str, str]
) -> tuple[CgroupLayout | None, list[str]]:
    """Pick v1 where every needed v1 controller is mounted (hybrid hosts included: their unified
    mount carries no controllers), else v2 where the unified mount carries them. Returns the
    layout or None, and why each candidate was not taken."""
    mounts = list(mounts)
    why: list[str] = []
    v1 = {c: m for m in mounts if m.version is CgroupVersion.V1 for c in m.controllers}
    if v1:
        missing = [c for c in V1_CONTROLLERS if c not in v1 or c not in own]
        if not missing:
            return CgroupLayout(
                CgroupVersion.V1, {c: _join(v1[c], own[c]) for c in V1_CONTROLLERS}
            ), why
        why.append(f"cgroup v1: controllers {', '.join(missing)} not mounted or not ours")
    for m in mounts:
        if m.version is CgroupVersion.V2 and "" in own:
            missing = [c for c in V2_CONTROLLERS if c not in m.controllers]
            if not missing:
                return CgroupLayout(
                    CgroupVersion.V2, {"": _join(m, own[""])}, mount_point=m.mount_point
                ), why
            why.append(
                f"cgroup v2 at {m.mount_point}: controllers {', '.join(missing)} not enabled"
            )
    if not mounts:
        why.append("no cgroup filesystem mounted")
    return None, why


# -- what one job gets: the plan ----------------------------------------------------------------


@dataclass(frozen=True)
class DeviceRule:
    """One device the job may open: char/block, major, minor (None = any)."""

    kind: str  # "c" or "b"
    major: int
    minor: int | None
    access: str = "rwm"

    def v1(self) -> str:
        minor = "*" if self.minor is None else str(self.minor)
        return f"{self.kind} {self.major}:{minor} {self.access}"


# What bubblewrap's --dev gives every job: null, zero, full, random, urandom, tty, ptmx, pts.
BASE_DEVICES = (
    DeviceRule("c", 1, 3),
    DeviceRule("c", 1, 5),
    DeviceRule("c", 1, 7),
    DeviceRule("c", 1, 8),
    DeviceRule("c", 1, 9),
    DeviceRule("c", 5, 0),
    DeviceRule("c", 5, 2),
    DeviceRule("c", 136, None),
)


@dataclass(frozen=True)
class CgroupLimits:
    memory_bytes: int | None = None
    pids_max: int | None = None
    cpus: float | None = None
    devices: tuple[DeviceRule, ...] | None = None  # None: no device filter; () allows none


@dataclass(frozen=True)
class CgroupWrite:
    path: str
    value: str
    optional: bool = False  # the file may be absent on this kernel (memsw without swap accounting)


@dataclass(frozen=True)
class CgroupPlan:
    version: CgroupVersion
    dirs: Mapping[str, str]  # controller (v1) or "" (v2) -> job directory
    writes: tuple[CgroupWrite, ...]
    procs_files: tuple[str, ...]  # the job's first process writes "0" to each before exec
    devices: tuple[DeviceRule, ...] | None = None  # v2: what the BPF program allows
    mkdirs: tuple[str, ...] = field(default=())  # unique directories, in creation order


def plan_job(layout: CgroupLayout, name: str, limits: CgroupLimits) -> CgroupPlan:
    """Directories and file writes, in order, that give one job its limits."""
    if "/" in name or name in ("", ".", ".."):
        raise ValueError(f"bad cgroup name {name!r}")
    dirs = layout.dirs(name)
    unique = tuple(dict.fromkeys(dirs.values()))  # "cpu,cpuacct" mounted together: one dir
    w: list[CgroupWrite] = []
    if layout.version is CgroupVersion.V1:
        if limits.memory_bytes is not None:
            mem = dirs["memory"]
            w.append(CgroupWrite(f"{mem}/memory.limit_in_bytes", str(limits.memory_bytes)))
            # memory+swap: without it a job could spill past the limit into swap.
            w.append(
                CgroupWrite(f"{mem}/memory.memsw.limit_in_bytes", str(limits.memory_bytes), True)
            )
        if limits.pids_max is not None:
            w.append(CgroupWrite(f"{dirs['pids']}/pids.max", str(limits.pids_max)))
        if limits.cpus is not None:
            cpu = dirs["cpu"]
            w.append(CgroupWrite(f"{cpu}/cpu.cfs_period_us", str(CFS_PERIOD_US)))
            w.append(CgroupWrite(f"{cpu}/cpu.cfs_quota_us", str(_quota_us(limits.cpus))))
        if limits.devices is not None:
            dev = dirs["devices"]
            w.append(CgroupWrite(f"{dev}/devices.deny", "a"))  # then allow exactly the list
            w.extend(CgroupWrite(f"{dev}/devices.allow", r.v1()) for r in limits.devices)
    else:
        parent, job = layout.parents[""], dirs[""]
        # Controllers must be enabled in the parent for the child to have their files.
        w.append(
            CgroupWrite(
                f"{parent}/cgroup.subtree_control", " ".join(f"+{c}" for c in V2_CONTROLLERS)
            )
        )
        if limits.memory_bytes is not None:
            w.append(CgroupWrite(f"{job}/memory.max", str(limits.memory_bytes)))
            w.append(CgroupWrite(f"{job}/memory.swap.max", "0", True))
        # One OOM kill takes the whole job, as v1 needs the runner to do.
        w.append(CgroupWrite(f"{job}/memory.oom.group", "1", True))
        if limits.pids_max is not None:
            w.append(CgroupWrite(f"{job}/pids.max", str(limits.pids_max)))
        if limits.cpus is not None:
            w.append(CgroupWrite(f"{job}/cpu.max", f"{_quota_us(limits.cpus)} {CFS_PERIOD_US}"))
    return CgroupPlan(
        version=layout.version,
        dirs=dirs,
        writes=tuple(w),
        procs_files=tuple(f"{d}/cgroup.procs" for d in unique),
        devices=limits.devices if layout.version is CgroupVersion.V2 else None,
        mkdirs=unique,
    )


def _quota_us(cpus: float) -> int:
    return max(1000, round(cpus * CFS_PERIOD_US))  # the kernel's minimum quota is 1 ms


def parse_flat_keyed(text: str) -> dict[str, int]:
    """`key value` lines (memory.events, pids.events, memory.oom_control, cpu.stat)."""
    out = {}
    for line in text.splitlines():
        k, _, v = line.partition(" ")
        with contextlib.suppress(ValueError):
            out[k] = int(v.strip())
    return out


# -- performing a plan ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Counters:
    memory_bytes: int
    memory_peak_bytes: int
    oom_kills: int
    processes: int  # v1 and v2 pids.current: tasks, so threads count
    pids_peak: int
    forks_refused: int  # pids.events "max": forks the pids limit turned down
    cpu_ns: int


def _read(path: str) -> str:
    with open(path, encoding="ascii") as f:
        return f.read()


def _read_int(path: str, default: int = 0) -> int:
    try:
        return int(_read(path).split()[0])
    except (OSError, ValueError, IndexError):
        return default


def _write(path: str, value: str) -> None:
    # One write() per value: cgroup files act on each write, and buffered I/O could split it.
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


class JobCgroup:
    """One job's cgroup(s). `create()` applies the plan; the job's first process joins it
    (writing "0" to each `plan.procs_files`) before it execs, so everything it starts is in."""

    def __init__(self, plan: CgroupPlan) -> None:
        self.plan = plan
        self.v1 = plan.version is CgroupVersion.V1
        d = plan.dirs
        self._mem = d["memory"] if self.v1 else d[""]
        self._pids = d["pids"] if self.v1 else d[""]
        self._cpuacct = d["cpuacct"] if self.v1 else d[""]
        self._freezer = d["freezer"] if self.v1 else d[""]
        self._created: list[str] = []

    @classmethod
    def existing(cls, layout: CgroupLayout, name: str) -> JobCgroup:
        """A job cgroup that is already there (left by a crashed node): to kill and remove."""
        cg = cls(plan_job(layout, name, CgroupLimits()))
        cg._created = [d for d in cg.plan.mkdirs if os.path.isdir(d)]
        return cg

    def create(self) -> None:
        try:
            for d in self.plan.mkdirs:
                os.mkdir(d, 0o755)
                self._created.append(d)
            for wr in self.plan.writes:
                try:
                    _write(wr.path, wr.value)
                except FileNotFoundError:
                    if not wr.optional:
                        raise
                except OSError as e:
                    if wr.optional and e.errno in (errno.EINVAL, errno.EACCES, errno.EPERM):
                        continue
                    raise
        except OSError as e:
            self.remove()
            raise CgroupError(f"cgroup set-up failed: {e}") from e

    def procs(self) -> set[int]:
        pids: set[int] = set()
        for f in self.plan.procs_files:
            with contextlib.suppress(OSError):
                pids.update(int(x) for x in _read(f).split())
        return pids

    def counters(self) -> Counters:
        if self.v1:
            mem = _read_int(f"{self._mem}/memory.usage_in_bytes")
            peak = _read_int(f"{self._mem}/memory.max_usage_in_bytes")
            oom = self._keyed(f"{self._mem}/memory.oom_control").get("oom_kill", 0)
            cpu = _read_int(f"{self._cpuacct}/cpuacct.usage")
        else:
            mem = _read_int(f"{self._mem}/memory.current")
            peak = _read_int(f"{self._mem}/memory.peak")  # 5.19+; 0 before
            oom = self._keyed(f"{self._mem}/memory.events").get("oom_kill", 0)
            cpu = self._keyed(f"{self._cpuacct}/cpu.stat").get("usage_usec", 0) * 1000
        return Counters(
            memory_bytes=mem,
            memory_peak_bytes=peak,
            oom_kills=oom,
            processes=_read_int(f"{self._pids}/pids.current"),
            pids_peak=_read_int(f"{self._pids}/pids.peak"),
            forks_refused=self._keyed(f"{self._pids}/pids.events").get("max", 0),
            cpu_ns=cpu,
        )

    @staticmethod
    def _keyed(path: str) -> dict[str, int]:
        try:
            return parse_flat_keyed(_read(path))
        except OSError:
            return {}

    def oom_eventfd(self) -> int | None:
        """v1: an eventfd the kernel signals on an OOM in this cgroup (and on its removal).
        v2 has no such registration; its memory.oom.group kills the whole job at once."""
        if not self.v1:
            return None
        efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        try:
            cfd = os.open(f"{self._mem}/memory.oom_control", os.O_RDONLY | os.O_CLOEXEC)
            try:
                _write(f"{self._mem}/cgroup.event_control", f"{efd} {cfd}")
            finally:
                os.close(cfd)  # the kernel holds its own reference once registered
        except OSError:
            os.close(efd)
            return None
        return efd

    def _freeze(self, frozen: bool) -> bool:
        try:
            if self.v1:
                _write(f"{self._freezer}/freezer.state", "FROZEN" if frozen else "THAWED")
            else:
                _write(f"{self._freezer}/cgroup.freeze", "1" if frozen else "0")
            return True
        except OSError:
            return False

    def _frozen(self) -> bool:
        try:
            if self.v1:
                return _read(f"{self._freezer}/freezer.state").strip() == "FROZEN"
            return parse_flat_keyed(_read(f"{self._freezer}/cgroup.events")).get("frozen") == 1
        except OSError:
            return False

    def kill_all(self, deadline_s: float = 5.0) -> tuple[int, int]:
        """Freeze, SIGKILL every member, thaw, until the cgroup is empty. Returns (signalled,
        survivors). Frozen tasks cannot fork, so the set signalled is the whole job; the
        pending SIGKILL is taken before anything else when they thaw. v2's cgroup.kill does
        the same in the kernel."""
        end = time.monotonic() + deadline_s
        signalled: set[int] = set()
        if not self.v1 and os.path.exists(f"{self._freezer}/cgroup.kill"):
            signalled |= self.procs()
            with contextlib.suppress(OSError):
                _write(f"{self._freezer}/cgroup.kill", "1")
        while (members := self.procs()) and time.monotonic() < end:
            froze = self._freeze(True)
            while froze and not self._frozen() and time.monotonic() < end:
                time.sleep(0.001)  # FREEZING: some task is still on its way into the fridge
            members = self.procs()
            for pid in members:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            signalled |= members
            self._freeze(False)
            time.sleep(0.002)  # let the kernel tear them down before looking again
        return len(signalled), len(self.procs())

    def remove(self, deadline_s: float = 2.0) -> None:
        """rmdir the job's directories; a dying task keeps one busy for a moment."""
        end = time.monotonic() + deadline_s
        for d in reversed(self._created):
            while True:
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    if e.errno != errno.EBUSY or time.monotonic() > end:
                        break
                    time.sleep(0.005)
        self._created.clear()


def read_layout() -> tuple[CgroupLayout | None, list[str]]:
    """This process's layout, from /proc (v2 controllers read from cgroup.controllers)."""
    try:
        mounts = parse_mountinfo(_read_text("/proc/self/mountinfo"))
        own = parse_proc_cgroup(_read_text("/proc/self/cgroup"))
    except OSError as e:
        return None, [f"cannot read /proc: {e}"]
    full = []
    for m in mounts:
        if m.version is CgroupVersion.V2:
            try:
                ctrls = frozenset(_read(f"{_join(m, own.get('', '/'))}/cgroup.controllers").split())
            except OSError:
                ctrls = frozenset()
            m = CgroupMount(m.mount_point, m.root, m.version, ctrls)
        full.append(m)
    return find_layout(full, own)


NODE_LEAF = "rigmesh-node"


def needs_leaf(procs: set[int], me: int) -> bool:
    """v2's no-internal-processes rule: a cgroup that holds processes cannot hand controllers
    to children. Where the only process in the node's cgroup is the node, it can move itself
    into a leaf beside its jobs; with anyone else there it must not (it would move only
    itself and still fail), and the provider has to delegate a cgroup (systemd Delegate=yes)."""
    return procs == {me}


def prepare_v2(layout: CgroupLayout) -> None:
    """Make the node's v2 cgroup able to hold job cgroups: enable the controllers in its
    subtree, first moving the node into a leaf beside them where that is what blocks it."""
    parent = layout.parents[""]
    ctl = f"{parent}/cgroup.subtree_control"
    want = " ".join(f"+{c}" for c in V2_CONTROLLERS)
    try:
        _write(ctl, want)
        return
    except OSError as e:
        if e.errno != errno.EBUSY:
            raise CgroupError(f"cannot enable {want} in {parent}: {e}") from e
    procs = {int(x) for x in _read(f"{parent}/cgroup.procs").split()}
    if not needs_leaf(procs, os.getpid()):
        raise CgroupError(
            f"{parent} holds other processes ({len(procs)}): delegate a cgroup to the node "
            "(systemd: Delegate=yes) so job cgroups can be made below it"
        )
    with contextlib.suppress(FileExistsError):
        os.mkdir(f"{parent}/{NODE_LEAF}")
    _write(f"{parent}/{NODE_LEAF}/cgroup.procs", str(os.getpid()))
    _write(ctl, want)


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return f.read()


def stale_job_dirs(layout: CgroupLayout, prefix: str) -> list[str]:
    """Job directories under our parents whose names start with `prefix` (left by a crash)."""
    out = []
    for parent in dict.fromkeys(layout.parents.values()):
        with contextlib.suppress(OSError), os.scandir(parent) as it:
            out.extend(e.path for e in it if e.is_dir() and e.name.startswith(prefix))
    return out
