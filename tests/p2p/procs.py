"""Run `python -m tests.p2p.peer` processes and read their JSON-line events (tests, bench)."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

Event = dict[str, Any]
#: The repository root: `tests.p2p.peer` is imported from there.
ROOT = Path(__file__).resolve().parents[2]


class PeerProc:
    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.args = [sys.executable, "-m", "tests.p2p.peer", *args]
        # stderr goes to a file (libp2p logs a lot; a pipe nobody reads would fill and block)
        self.stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - lives with the process
        self.proc = subprocess.Popen(
            self.args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
            env={**os.environ, **(env or {})}, text=True, bufsize=1, cwd=ROOT,
        )
        self.events: list[Event] = []
        self._new: queue.Queue[Event] = queue.Queue()
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            with self._lock:
                self.events.append(ev)

    def send(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def snapshot(self) -> list[Event]:
        with self._lock:
            return list(self.events)

    def wait_for(self, pred: Callable[[Event], bool], timeout: float = 20.0,
                 count: int = 1) -> list[Event]:
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.snapshot() if pred(e)]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout}s for {count} events; have {len(found)}")
            if self.proc.poll() is not None:
                self.stderr.seek(0)
                tail = self.stderr.read()[-2000:]
                raise RuntimeError(f"peer exited with {self.proc.returncode}: {tail}")
            time.sleep(0.02)

    def ready(self, timeout: float = 30.0) -> list[Event]:
        return self.wait_for(lambda e: e["event"] == "ready", timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send(cmd="quit")
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self.kill()


def key_file(tmp: Path, name: str) -> str:
    return str(tmp / f"{name}.key")
