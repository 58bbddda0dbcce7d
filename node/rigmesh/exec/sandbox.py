"""What a confined job sees: the bubblewrap command line, its GPU device nodes, its network.

Pure planning, no I/O except the small readers at the bottom (`host_system`, `scan_nvidia_nodes`,
`read_nvidia_gpus`, `host_networks`), so every decision about what a stranger's job can reach is
unit-tested from literal inputs.

The sandbox (bubblewrap, Debian package `bubblewrap`):

- Its own user, mount, PID, IPC, UTS, network and cgroup namespaces; no further user namespaces
  inside (`--disable-userns`: less kernel surface, and no way to gain capabilities over
  anything); a new session (no TIOCSTI into a terminal).
- Root is an empty tmpfs, remounted read-only once set up. The host's /usr and /etc come in
  read-only (with the /bin, /lib... links or dirs as the host has them), plus any read-only paths
  the provider lists (an interpreter outside /usr). Nothing else of the host: not the node's
  home, key store, /root, /home, /var, /run, /sys (bound read-only only for GPU jobs: CUDA reads
  PCI topology there; its files that touch a device need host root).
- /job is the job's working directory (read-write, its HOME and cwd), /tmp is its tmp/ (so
  scratch counts against the disk budget); /proc is the job's own PID namespace; /dev holds
  null, zero, full, random, urandom, tty, a private devpts, a private writable /dev/shm, and the
  device nodes of the GPUs it rented, nothing else; /dev itself is read-only.
"""

from __future__ import annotations

import enum
import ipaddress
import json
import os
import stat
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from rigmesh.exec.cgroups import DeviceRule

JOB_DIR = "/job"
SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SYSTEM_DIRS = ("usr", "etc")  # always read-only inside
SYSTEM_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")  # links on merged-/usr hosts

# What CUDA opens besides the GPUs themselves (nvidia-container-toolkit binds the same set).
NVIDIA_CONTROL = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset")


class SandboxError(ValueError):
    """The sandbox cannot be planned as asked (a rented GPU this host does not have)."""


class NetworkPolicy(enum.Enum):
    """NONE: an own network namespace with only loopback (the job's own, not the host's).
    OUTBOUND: that, plus a user-mode NAT (slirp4netns) to the internet, with the host's
    loopback switched off in slirp and routes in the job's namespace that refuse the provider's
    LAN, private and link-local ranges and every address of the host itself (so the node's own
    ports stay out of reach however they are bound). IPv6 is not offered."""

    NONE = "none"
    OUTBOUND = "outbound"


# Destinations an outbound job may never reach: private, shared, link-local (cloud metadata),
# benchmarking, documentation, multicast, reserved. The slirp network (10.0.2.0/24: gateway,
# DNS) is more specific than 10/8, so DNS still works.
BLOCKED_V4 = (
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "240.0.0.0/4",
)
SLIRP_DNS = "10.0.2.3"


def blocked_routes(host_networks: Iterable[str]) -> list[str]:
    """CIDRs to make unreachable in an outbound job's namespace: the fixed ranges above, plus
    each network and address of the host's interfaces (its LAN, its public address)."""
    out: list[str] = list(BLOCKED_V4)
    for cidr in host_networks:
        iface = ipaddress.ip_interface(cidr)
        if iface.version != 4 or iface.ip.is_loopback:
            continue
        for net in (iface.network, ipaddress.ip_network(f"{iface.ip}/32")):
            if not any(net.subnet_of(ipaddress.ip_network(b)) for b in out):
                out.append(str(net))
    return out


def route_batch(routes: Sequence[str]) -> str:
    """Input for `ip -batch -`: each route `prohibit` (connect() fails with EACCES at once)."""
    return "".join(f"route add prohibit {r}\n" for r in routes)


# -- GPUs ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceNode:
    host_path: str
    inside: str  # path in the sandbox
    major: int
    minor: int

    def rule(self) -> DeviceRule:
        return DeviceRule("c", self.major, self.minor)


@dataclass(frozen=True)
class NvidiaGpu:
    uuid: str
    minor: int  # /dev/nvidia<minor>
    bus_id: str  # PCI address, the name of its /proc/driver/nvidia/gpus entry


def parse_nvidia_information(text: str, bus_id: str) -> NvidiaGpu | None:
    """One /proc/driver/nvidia/gpus/<bus>/information file."""
    fields = {}
    for line in text.splitlines():
        k, sep, v = line.partition(":")
        if sep:
            fields[k.strip()] = v.strip()
    try:
        return NvidiaGpu(fields["GPU UUID"], int(fields["Device Minor"]), bus_id)
    except (KeyError, ValueError):
        return None


def plan_gpu_nodes(
    rented: Sequence[str],
    gpus: Sequence[NvidiaGpu],
    present: Mapping[str, tuple[int, int]],
    dev_dir: str = "/dev",
) -> tuple[tuple[DeviceNode, ...], tuple[str, ...]]:
    """The device nodes a job with `rented` GPU ids gets, and the /proc/driver/nvidia/gpus
    entries of the other GPUs (to hide). `present` is name -> (major, minor) of the char
    devices in dev_dir. No GPU rented: no NVIDIA node at all, control nodes included."""
    if not rented:
        return (), ()
    by_uuid = {g.uuid: g for g in gpus}
    nodes: list[DeviceNode] = []
    chosen: set[str] = set()
    for gid in rented:
        g = by_uuid.get(gid)
        if g is None:
            raise SandboxError(f"rented GPU {gid!r} is not on this host")
        name = f"nvidia{g.minor}"
        if name not in present:
            raise SandboxError(f"rented GPU {gid!r}: no {dev_dir}/{name}")
        chosen.add(g.uuid)
        nodes.append(DeviceNode(f"{dev_dir}/{name}", f"/dev/{name}", *present[name]))
    for name in NVIDIA_CONTROL:
        if name in present:
            nodes.append(DeviceNode(f"{dev_dir}/{name}", f"/dev/{name}", *present[name]))
    hidden = tuple(f"/proc/driver/nvidia/gpus/{g.bus_id}" for g in gpus if g.uuid not in chosen)
    return tuple(nodes), hidden


# -- the command line -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SandboxSpec:
    argv: tuple[str, ...]
    workdir: str  # host path, bound on /job, its tmp/ on /tmp
    system: tuple[tuple[str, str | None], ...]  # top-level name -> symlink target, or None: dir
    ro_paths: tuple[tuple[str, str], ...] = ()  # (host source, path inside), read-only
    devices: tuple[DeviceNode, ...] = ()
    hidden: tuple[str, ...] = ()  # paths covered by an empty tmpfs (other GPUs' /proc entries)
    bind_sys: bool = False
    network: NetworkPolicy = NetworkPolicy.NONE
    resolv_conf_fd: int | None = None  # outbound: a resolv.conf naming slirp's DNS
    info_fd: int | None = None  # bwrap writes the sandbox's pid here
    block_fd: int | None = None  # bwrap waits for a byte here before running the job
    disable_userns: bool = True  # bubblewrap >= 0.8
    workdir_writable: bool = True  # False only for the start-up probe


def plan_bwrap(bwrap: str, s: SandboxSpec) -> list[str]:
    a = [
        bwrap,
        "--unshare-user",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-net",
        "--unshare-cgroup",
    ]
    if s.disable_userns:
        a.append("--disable-userns")
    # No --die-with-parent: its parent-death signal follows the thread that spawned bwrap, and
    # trio spawns from worker threads that retire when idle, which would kill a healthy job.
    # A job outlives a crashed node instead, in its cgroup, until `reap_stale()` at restart.
    a += ["--new-session", "--hostname", "rigmesh-job"]
    for name, target in s.system:
        if target is None:
            a += ["--ro-bind", f"/{name}", f"/{name}"]
        else:
            a += ["--symlink", target, f"/{name}"]
    for src, dst in s.ro_paths:
        a += ["--ro-bind", src, dst]
    a += ["--proc", "/proc", "--dev", "/dev"]
    for d in s.devices:
        a += ["--dev-bind", d.host_path, d.inside]
    for h in s.hidden:
        a += ["--tmpfs", h]
    # /dev read-only but for its own shm (POSIX shared memory: PyTorch's DataLoader needs it;
    # tmpfs pages are charged to the job's memory cgroup).
    a += ["--tmpfs", "/dev/shm", "--remount-ro", "/dev"]
    if s.bind_sys:
        a += ["--ro-bind", "/sys", "/sys"]
    bind = "--bind" if s.workdir_writable else "--ro-bind"
    a += [bind, s.workdir, JOB_DIR, bind, os.path.join(s.workdir, "tmp"), "/tmp"]
    if s.resolv_conf_fd is not None:
        a += ["--ro-bind-data", str(s.resolv_conf_fd), "/etc/resolv.conf"]
    a += ["--chdir", JOB_DIR, "--remount-ro", "/"]
    if s.info_fd is not None:
        a += ["--info-fd", str(s.info_fd)]
    if s.block_fd is not None:
        a += ["--block-fd", str(s.block_fd)]
    return [*a, "--", *s.argv]


def host_path(inside: str, s: SandboxSpec) -> str | None:
    """The host path behind a path as the job sees it, or None if the sandbox does not show it.
    Lets the runner refuse a command that cannot exist inside before it starts anything."""
    p = os.path.normpath(inside)
    for name, target in s.system:  # /bin -> usr/bin on merged-/usr hosts
        if target is not None and (p == f"/{name}" or p.startswith(f"/{name}/")):
            p = os.path.normpath(os.path.join("/", target) + p[len(name) + 1 :])
    views = [(f"/{n}", f"/{n}") for n, t in s.system if t is None]
    views += [(dst, src) for src, dst in s.ro_paths]
    views += [(JOB_DIR, s.workdir), ("/tmp", os.path.join(s.workdir, "tmp"))]
    for dst, src in sorted(views, key=lambda v: -len(v[0])):  # the deepest mount wins
        if p == dst or p.startswith(dst + "/"):
            return src + p[len(dst) :]
    return None


def find_command(argv0: str, s: SandboxSpec) -> str | None:
    """Host path of the executable `argv0` names inside the sandbox (PATH search as execvp)."""
    if "/" in argv0:
        candidates = [argv0 if argv0.startswith("/") else f"{JOB_DIR}/{argv0}"]
    else:
        candidates = [f"{d}/{argv0}" for d in SANDBOX_PATH.split(":")]
    for c in candidates:
        h = host_path(c, s)
        if h is not None and os.path.isfile(h) and os.access(h, os.X_OK):
            return h
    return None


def bwrap_status(rc: int) -> tuple[int | None, int | None]:
    """(exit code, signal) of the job from bwrap's exit status: bwrap exits 128+n when the job
    died of signal n (as shells report it; a job exiting 129..192 by itself reads the same)."""
    if rc < 0:
        return None, -rc  # bwrap itself was killed (by the runner's cgroup kill)
    if 128 < rc < 128 + 65:
        return None, rc - 128
    return rc, None


# -- small readers of the host ---------------------------------------------------------------------


def host_system(root: str = "/") -> tuple[tuple[str, str | None], ...]:
    out: list[tuple[str, str | None]] = []
    for name in (*SYSTEM_DIRS, *SYSTEM_LINKS):
        p = os.path.join(root, name)
        if os.path.islink(p):
            out.append((name, os.readlink(p)))
        elif os.path.isdir(p):
            out.append((name, None))
    return tuple(out)


def scan_nvidia_nodes(dev_dir: str = "/dev") -> dict[str, tuple[int, int]]:
    out = {}
    try:
        names = os.listdir(dev_dir)
    except OSError:
        return out
    for name in names:
        if not name.startswith("nvidia"):
            continue
        try:
            st = os.stat(os.path.join(dev_dir, name), follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISCHR(st.st_mode):
            out[name] = (os.major(st.st_rdev), os.minor(st.st_rdev))
    return out


def read_nvidia_gpus(proc_dir: str = "/proc/driver/nvidia/gpus") -> list[NvidiaGpu]:
    out = []
    try:
        buses = sorted(os.listdir(proc_dir))
    except OSError:
        return out
    for bus in buses:
        try:
            with open(os.path.join(proc_dir, bus, "information"), encoding="utf-8") as f:
                g = parse_nvidia_information(f.read(), bus)
        except OSError:
            continue
        if g is not None:
            out.append(g)
    return out


def host_networks() -> list[str]:
    """The host's IPv4 interface addresses with prefix, e.g. ["192.168.1.20/24"]."""
    r = subprocess.run(["ip", "-j", "-4", "addr", "show"], capture_output=True, check=False)
    if r.returncode != 0:
        return []
    out = []
    for link in json.loads(r.stdout or b"[]"):
        for a in link.get("addr_info", []):
            if a.get("family") == "inet":
                out.append(f"{a['local']}/{a['prefixlen']}")
    return out
