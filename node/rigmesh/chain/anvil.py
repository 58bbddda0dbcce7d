"""Run Foundry's anvil as a local chain node: find the binary, start it on a free loopback port,
wait until it answers JSON-RPC, stop it.

Nodes in separate processes share a chain through anvil (the embedded py-evm chain lives inside
one process). The binary comes from the npm package `@foundry-rs/anvil-linux-amd64`
(`cd contracts && npm ci` puts it at contracts/node_modules/.bin/anvil).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

#: anvil's first dev account (from its default mnemonic), funded with 10,000 ETH at start.
ANVIL_DEV_KEY = bytes.fromhex("ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80")
DEFAULT_CHAIN_ID = 31337


class AnvilError(RuntimeError):
    """anvil is missing, did not start, or refused an RPC."""


def find_anvil() -> Path | None:
    """$RIGMESH_ANVIL, else contracts/node_modules/.bin/anvil of this checkout, else $PATH."""
    env = os.environ.get("RIGMESH_ANVIL")
    if env:
        return Path(env) if Path(env).is_file() else None
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "contracts" / "node_modules" / ".bin" / "anvil"
        if candidate.is_file():
            return candidate
    found = shutil.which("anvil")
    return Path(found) if found else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Anvil:
    """A running anvil process. Use as a context manager, or call `stop()`."""

    process: subprocess.Popen[bytes]
    port: int
    chain_id: int
    _next_id: int = field(default=0, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def start(
        cls,
        binary: Path | None = None,
        *,
        chain_id: int = DEFAULT_CHAIN_ID,
        extra_args: tuple[str, ...] = (),
        timeout: float = 20.0,
        port: int | None = None,
    ) -> Anvil:
        """Start anvil on `port` (default: a free one), wait until it answers."""
        binary = binary or find_anvil()
        if binary is None:
            raise AnvilError("anvil not found (cd contracts && npm ci)")
        last_error: Exception | None = None
        # The free port can be taken between probing and anvil binding it: try a few.
        for _ in range(1 if port else 3):
            port_now = port or _free_port()
            process = subprocess.Popen(
                [
                    str(binary), "--host", "127.0.0.1", "--port", str(port_now), "--silent",
                    "--chain-id", str(chain_id), *extra_args,
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )  # fmt: skip
            node = cls(process, port_now, chain_id)
            try:
                node._wait_ready(timeout)
                return node
            except AnvilError as e:
                last_error = e
                node.stop()
        raise AnvilError(f"anvil did not start: {last_error}")

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = (
                    self.process.stderr.read().decode(errors="replace")
                    if self.process.stderr
                    else ""
                )
                raise AnvilError(f"anvil exited with {self.process.returncode}: {err.strip()}")
            try:
                if int(self.rpc("eth_chainId"), 16) == self.chain_id:
                    return
            except (OSError, urllib.error.URLError, AnvilError):
                pass
            time.sleep(0.05)
        raise AnvilError(f"anvil did not answer on port {self.port} within {timeout} s")

    def rpc(self, method: str, *params: Any) -> Any:
        """One JSON-RPC call (test and devnet helpers: evm_increaseTime, evm_snapshot...)."""
        self._next_id += 1
        body = json.dumps(
            {"jsonrpc": "2.0", "id": self._next_id, "method": method, "params": list(params)}
        ).encode()
        request = urllib.request.Request(
            self.url, data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            reply = json.loads(response.read())
        if "error" in reply:
            raise AnvilError(f"{method}: {reply['error']}")
        return reply.get("result")

    def increase_time(self, seconds: int) -> None:
        """Move chain time forward and mine a block at the new time."""
        self.rpc("evm_increaseTime", seconds)
        self.rpc("evm_mine")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr:
            self.process.stderr.close()

    def __enter__(self) -> Anvil:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
