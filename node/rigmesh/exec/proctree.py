"""Process-tree bookkeeping from /proc (Linux only).

Why our own instead of psutil: the runner needs three things (who descends from the job, how much
memory the tree holds, kill all of it) and the way to make them cheap on a busy host is specific:

- Walk down from the job, never scan the host. /proc/<pid>/task/<tid>/children lists a task's
  children, so a poll costs O(processes and threads in the job), not O(processes on the host): on
  a loaded CI box with 1,400 processes a full /proc scan cost ~50 ms of CPU, a walk of a small job
  well under a millisecond. Kernels without CONFIG_PROC_CHILDREN get an incremental full scan.
- Orphans stay reachable: the runner makes the job's root process a child subreaper, so when a
  process in the job dies its children reparent to the root rather than to init (setsid() leaves
  the session and the process group but not the parent chain).
- Members are remembered as (pid, start time), so a recycled pid is never mistaken for a member,
  and a member orphaned to init after the root died is still killed.
- A last net at kill time: every process created since the job started (the /proc listing diffed
  against a baseline taken before the spawn) whose environment carries the job's token. That
  catches a process orphaned in the instant between two polls after the root died.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

_PAGE = os.sysconf("SC_PAGE_SIZE")
HAVE_CHILDREN_FILES = os.path.exists(f"/proc/self/task/{os.getpid()}/children")


@dataclass(frozen=True, slots=True)
class ProcStat:
    """The few fields of /proc/<pid>/stat that we use."""

    pid: int
    ppid: int
    pgrp: int
    session: int
    state: str
    start_ticks: int  # process start time in clock ticks since boot; (pid, start) is unique
    rss_bytes: int

    @property
    def alive(self) -> bool:
        # Zombies ('Z') and dead ('X') entries hold no memory and cannot be signalled usefully.
        return self.state not in ("Z", "X")


def parse_stat(text: str) -> ProcStat:
    """Parse one /proc/<pid>/stat line. The comm field may contain spaces and ')'."""
    lpar = text.index("(")
    rpar = text.rindex(")")
    pid = int(text[:lpar])
    rest = text[rpar + 2 :].split()
    # rest[0] is field 3 (state); field n is rest[n - 3].
    return ProcStat(
        pid=pid,
        state=rest[0],
        ppid=int(rest[1]),
        pgrp=int(rest[2]),
        session=int(rest[3]),
        start_ticks=int(rest[19]),
        rss_bytes=int(rest[21]) * _PAGE,
    )


def read_stat(pid: int) -> ProcStat | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            return parse_stat(f.read())
    except (OSError, ValueError, IndexError):
        return None  # raced with exit


def listing() -> dict[int, int]:
    """pid -> inode of /proc/<pid>, from one directory read and no per-process open.

    procfs hands out a fresh inode number to each process instance, so (pid, inode) names a
    process instance without reading its stat file.
    """
    out: dict[int, int] = {}
    with os.scandir("/proc") as it:
        for e in it:
            if e.name.isdigit():
                out[int(e.name)] = e.inode()
    return out


def children(pid: int) -> list[int]:
    """Children of every thread of `pid` (a child belongs to the thread that forked it)."""
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", encoding="ascii") as f:
                out.extend(int(x) for x in f.read().split())
        except (OSError, ValueError):
            continue
    return out


@dataclass
class TreeTracker:
    """Remembers every process that has belonged to one job. Not thread-safe: one caller."""

    root_pid: int
    token: bytes | None = None  # RIGMESH_JOB_TOKEN value carried in the job's environment
    baseline: dict[int, int] = field(default_factory=dict)  # listing() taken before the spawn
    members: dict[int, int] = field(default_factory=dict)  # pid -> start_ticks
    _outsiders: dict[int, int] = field(default_factory=dict)  # pid -> inode, known non-members
    root_start: int = -1

    def __post_init__(self) -> None:
        st = read_stat(self.root_pid)
        if st is not None:
            self.root_start = st.start_ticks
            self.members[self.root_pid] = st.start_ticks

    def poll(self) -> list[ProcStat]:
        """Find new descendants; return the live members."""
        return self._walk() if HAVE_CHILDREN_FILES else self._scan()

    def _walk(self) -> list[ProcStat]:
        live: list[ProcStat] = []
        seen: set[int] = set()
        stack = list(self.members)
        while stack:
            pid = stack.pop()
            if pid in seen:
                continue
            seen.add(pid)
            st = read_stat(pid)
            known = self.members.get(pid)
            if st is None or (known is not None and known != st.start_ticks):
                self.members.pop(pid, None)  # gone, or the pid now names another process
                continue
            if known is None:
                if st.ppid not in self.members:  # died and recycled between the two reads
                    continue
                self.members[pid] = st.start_ticks
            if st.alive:
                live.append(st)
                stack.extend(children(pid))
        return live

    def _scan(self) -> list[ProcStat]:
        """Fallback without children files: read only processes we have not classified yet."""
        lst = listing()
        snap: dict[int, ProcStat] = {}
        for pid, ino in lst.items():
            if self.baseline.get(pid) == ino or self._outsiders.get(pid) == ino:
                continue  # existed before the job, or already known not to be ours
            st = read_stat(pid)
            if st is not None:
                snap[pid] = st
        for pid, start in list(self.members.items()):
            st = snap.get(pid)
            if st is None or st.start_ticks != start:
                del self.members[pid]
        # Session membership counts only while the root's pid is still the root (alive or a
        # zombie): once reaped, the number can be reused by an unrelated session leader.
        root = snap.get(self.root_pid)
        sid = self.root_pid if root is not None and root.start_ticks == self.root_start else None
        changed = True
        while changed:  # fixed point: a child can be listed before its parent
            changed = False
            for st in snap.values():
                if st.pid in self.members:
                    continue
                parent = snap.get(st.ppid)
                in_tree = parent is not None and self.members.get(parent.pid) == parent.start_ticks
                if st.session == sid or in_tree:
                    self.members[st.pid] = st.start_ticks
                    changed = True
        for pid, st in snap.items():
            if pid not in self.members and st.alive and pid in lst:
                if self._has_token(pid):  # escaped the parent chain before we saw it
                    self.members[pid] = st.start_ticks
                    continue
                # Outsiders cannot become members later: ancestry does not change, a process
                # cannot join our session, and its environment is fixed at exec. Classify
                # once, skip from now on.
                self._outsiders[pid] = lst[pid]
        for pid in [p for p in self._outsiders if p not in lst]:
            del self._outsiders[pid]
        return [snap[p] for p in self.members if p in snap and snap[p].alive]

    def _has_token(self, pid: int) -> bool:
        if self.token is None or pid == os.getpid():
            return False
        try:
            fd = os.open(f"/proc/{pid}/environ", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            env = os.read(fd, 1 << 20)
        except OSError:
            return False
        finally:
            os.close(fd)
        return b"RIGMESH_JOB_TOKEN=" + self.token in env

    def adopt_token_holders(self) -> None:
        """Adopt processes created since the baseline whose environment carries the token."""
        if self.token is None:
            return
        me = os.getpid()
        for pid, ino in listing().items():
            if (
                pid in self.members
                or pid == me
                or self.baseline.get(pid) == ino
                or self._outsiders.get(pid) == ino
            ):
                continue
            if not self._has_token(pid):  # one read per candidate; stat only for a match
                self._outsiders[pid] = ino  # env is fixed at exec: it will never match later
                continue
            st = read_stat(pid)
            if st is not None:
                self.members[pid] = st.start_ticks


_STOPPED = ("T", "t")  # stopped by a signal, or stopped while traced


def _signal_members(members: Iterable[ProcStat], sig: int) -> None:
    for st in members:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(st.pid, sig)


def kill_tree(tracker: TreeTracker, *, deadline_s: float = 5.0, settle_s: float = 0.5) -> int:
    """SIGKILL every member of the job until none is left alive. Returns how many were signalled.

    Freeze, then kill. SIGSTOP the members and re-walk until every live member reports itself
    stopped: a child forked just before its parent froze is still linked to that (stopped, alive)
    parent, so the walk sees it, and a member that was already exiting when the SIGSTOP came
    (which does not stop it) is waited out until it is a zombie, by when its children hang under
    the root (the subreaper) where the walk finds them. Waiting for "no new pid" alone is not
    enough: a walk can read the root's children just before such a reparenting and the exiting
    parent's just after, and miss the child. Then the token net, then SIGKILL the closed set;
    killing first would orphan a child to init, out of reach of the parent chain. Repeats until
    nobody is left.

    The net (a read of every new process's environment, costly on a busy host) is skipped when
    the root was alive and the freeze settled: every orphan went to the root (subreaper), and
    the walk from it saw the whole tree. A member that does not stop within `settle_s` (stuck in
    the kernel, or woken again and again) gets the net instead of a longer wait.
    """
    signalled: set[tuple[int, int]] = set()
    end = time.monotonic() + deadline_s

    def send(live: list[ProcStat], sig: int) -> None:
        # The root's process group is the bulk of most jobs and one killpg reaches all of it,
        # members forked since the walk included. Only while a verified member is in that
        # group, so a recycled number never aims the signal at a stranger.
        if any(st.pgrp == tracker.root_pid for st in live):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(tracker.root_pid, sig)
        _signal_members(live, sig)

    def freeze(live: list[ProcStat]) -> tuple[list[ProcStat], bool]:
        """(live members, whether all of them stopped within `settle_s`). Members already sent
        SIGKILL are only dying (a GPU context can take a while to tear down): not waited on."""
        give_up = min(end, time.monotonic() + settle_s)
        while True:
            running = [
                st
                for st in live
                if st.state not in _STOPPED and (st.pid, st.start_ticks) not in signalled
            ]
            if not running:
                return live, True
            if time.monotonic() > give_up:
                return live, False
            send(running, signal.SIGSTOP)
            time.sleep(0.0005)  # a runnable process stops only once the scheduler runs it
            live = tracker.poll()

    live = tracker.poll()
    net_once: bool | None = None
    while True:
        live, all_stopped = freeze(live)
        if net_once is None:  # whether the root was gone, once frozen, before any kill of ours
            root = read_stat(tracker.root_pid)
            root_alive = root is not None and root.alive and root.start_ticks == tracker.root_start
            net_once = not root_alive
        # The costly net: once if the root was gone, and after any freeze that did not settle
        # (a member stuck in the kernel, or one that kept being woken): the walk may be short.
        if (net_once or not all_stopped) and time.monotonic() < end:
            net_once = False
            before = set(tracker.members)
            tracker.adopt_token_holders()
            if set(tracker.members) - before:
                live = tracker.poll()
                continue  # freeze the newcomers' own trees before killing anything
        if not live:
            break
        send(live, signal.SIGKILL)
        signalled.update((st.pid, st.start_ticks) for st in live)
        if time.monotonic() > end:
            break
        time.sleep(0.002)  # let the kernel finish tearing them down before re-walking
        live = tracker.poll()
    return len(signalled)
