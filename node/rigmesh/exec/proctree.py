"""Process-tree bookkeeping from /proc (Linux only).

Why our own instead of psutil: the runner needs exactly three things (who descends from the job,
how much memory the tree holds, kill all of it) and psutil would be a new runtime dependency for a
full /proc scan we can do in ~1 ms on a host with a few hundred processes.

A job escapes its process group with setsid(); it escapes the parent chain when its parent dies
and it is reparented. The runner closes the second hole by making the job's root process a child
subreaper (orphans reparent to the root, not to init) and by remembering every pid it has ever
seen in the tree, keyed by (pid, start time) so that a recycled pid is never mistaken for a member.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass

_PAGE = os.sysconf("SC_PAGE_SIZE")


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


def snapshot() -> dict[int, ProcStat]:
    """All processes visible in /proc right now."""
    out: dict[int, ProcStat] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = read_stat(int(name))
            if st is not None:
                out[st.pid] = st
    return out


@dataclass
class TreeTracker:
    """Remembers every process that has belonged to one job.

    Membership: the root, anything in the root's session (setsid-free descendants), anything whose
    parent is a member (transitively), and anything carrying the job's environment token (checked
    only at kill time, it costs a read of every process's environ).
    """

    root_pid: int
    root_start: int
    members: dict[int, int]  # pid -> start_ticks

    @classmethod
    def for_root(cls, root_pid: int) -> TreeTracker:
        st = read_stat(root_pid)
        start = st.start_ticks if st else -1
        return cls(root_pid=root_pid, root_start=start, members={root_pid: start})

    def _is_member(self, st: ProcStat) -> bool:
        return self.members.get(st.pid) == st.start_ticks

    def update(self, snap: dict[int, ProcStat]) -> list[ProcStat]:
        """Add newly seen descendants; return the live members in `snap`."""
        # Forget members that are gone or whose pid was recycled.
        for pid, start in list(self.members.items()):
            st = snap.get(pid)
            if st is None or st.start_ticks != start:
                del self.members[pid]
        # Session membership only counts while the root's pid is still the root (alive or a
        # zombie): once it is reaped the number can be reused by an unrelated session leader.
        root = snap.get(self.root_pid)
        sid = self.root_pid if root is not None and root.start_ticks == self.root_start else None
        changed = True
        while changed:  # fixed point: a child can be listed before its parent
            changed = False
            for st in snap.values():
                if st.pid in self.members:
                    continue
                parent = snap.get(st.ppid)
                if st.session == sid or (parent is not None and self._is_member(parent)):
                    self.members[st.pid] = st.start_ticks
                    changed = True
        return [snap[p] for p in self.members if p in snap and snap[p].alive]

    def add_token_holders(self, snap: dict[int, ProcStat], token: bytes) -> None:
        """Adopt processes whose environment carries `token` (escaped both session and parent)."""
        needle = token
        for st in snap.values():
            if st.pid in self.members or st.pid == os.getpid() or not st.alive:
                continue
            try:
                with open(f"/proc/{st.pid}/environ", "rb") as f:
                    env = f.read(1 << 20)
            except OSError:
                continue
            if needle in env:
                self.members[st.pid] = st.start_ticks


def _signal_members(members: Iterable[ProcStat], sig: int) -> None:
    for st in members:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(st.pid, sig)


def kill_tree(tracker: TreeTracker, token: bytes | None, *, deadline_s: float = 5.0) -> int:
    """SIGKILL every member of the job until none is left alive. Returns how many were signalled.

    Freeze, then kill. SIGSTOP the members and rescan until a scan finds no new member: a child
    forked just before its parent froze is then still linked to that (stopped, alive) parent, so
    the scan sees it. Only then SIGKILL the closed set; killing first would orphan such a child
    to init, out of reach of the parent chain. Repeats until a scan finds nobody alive.
    """
    signalled: set[tuple[int, int]] = set()
    end = time.monotonic() + deadline_s

    def scan() -> list[ProcStat]:
        snap = snapshot()
        if token is not None:
            tracker.add_token_holders(snap, token)
        return tracker.update(snap)

    def send(live: list[ProcStat], sig: int) -> None:
        # The root's process group is the bulk of most jobs and one killpg reaches all of it,
        # members forked since the scan included. Only while a verified member is in that
        # group, so a recycled number never aims the signal at a stranger.
        if any(st.pgrp == tracker.root_pid for st in live):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(tracker.root_pid, sig)
        _signal_members(live, sig)

    live = scan()
    while live:
        frozen: set[int] = set()
        while {st.pid for st in live} - frozen and time.monotonic() < end:
            send(live, signal.SIGSTOP)
            frozen |= {st.pid for st in live}
            live = scan()
        send(live, signal.SIGKILL)
        signalled.update((st.pid, st.start_ticks) for st in live)
        if time.monotonic() > end:
            break
        time.sleep(0.002)  # let the kernel finish tearing them down before rescanning
        live = scan()
    return len(signalled)
