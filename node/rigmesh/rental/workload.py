"""What a rental runs: the workload a proposal names, and the files that go in and come out.

A proposal states exactly what will run (a command line, how many GPUs, whether it needs the
network or a busy GPU) and the input files by name, size and SHA-256, so the provider decides
on the real thing before any money moves, and checks every uploaded byte against what the
renter signed. Result files come back the same way: the last heartbeat lists each by name, size
and SHA-256, so the renter can check what it downloaded.

File names are renter-chosen relative paths and cross a trust boundary: `check_relpath` is the
one rule for them (the job runner applies it again when it writes the files).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from rigmesh.wire import fields
from rigmesh.wire.errors import InvalidField, Malformed

MAX_PATH_BYTES = 1024
MAX_PATH_DEPTH = 32
#: Wire limits of a workload (spec/rental.md). A provider's policy may allow less.
MAX_KIND = 32
MAX_ARGS = 64
MAX_ARG = 1024
MAX_ARGV_BYTES = 4096
MAX_FILES = 64
MAX_FILE_NAME = 255
MAX_INPUT_BYTES = 256 * 1024 * 1024
MAX_GPUS = 64
SHA256_SIZE = 32


class UnsafePathError(ValueError):
    """A relative path that would leave the working directory, or is malformed."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(f"unsafe path {path!r}: {why}")
        self.path = path
        self.why = why


def check_relpath(path: str) -> tuple[str, ...]:
    """Split a renter-supplied relative POSIX path into components, or raise UnsafePathError."""
    if not isinstance(path, str) or not path:
        raise UnsafePathError(str(path), "empty or not a string")
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise UnsafePathError(path, "too long")
    if "\x00" in path:
        raise UnsafePathError(path, "NUL byte")
    if "\\" in path:
        raise UnsafePathError(path, "backslash (paths are POSIX)")
    if path.startswith("/"):
        raise UnsafePathError(path, "absolute")
    parts = tuple(path.split("/"))
    for part in parts:
        if part in ("", ".", ".."):
            raise UnsafePathError(path, f"component {part!r} not allowed")
    if len(parts) > MAX_PATH_DEPTH:
        raise UnsafePathError(path, "too deep")
    return parts


class FileDigest(NamedTuple):
    """One input or result file: relative path, size in bytes, SHA-256 of the content."""

    name: str
    size: int
    sha256: bytes

    def to_wire(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "sha256": self.sha256}


_FILE_KEYS = frozenset({"name", "size", "sha256"})


def read_files(m: dict[str, Any], key: str, *, max_size: int) -> tuple[FileDigest, ...]:
    """An array of file digests: names unique and safe, sizes within `max_size` in total."""
    raw = m[key]
    if type(raw) is not list:
        raise Malformed(f"{key}: expected array")
    if len(raw) > MAX_FILES:
        raise InvalidField(f"{key}: {len(raw)} files > {MAX_FILES}")
    out = []
    names: set[str] = set()
    total = 0
    for entry in raw:
        if type(entry) is not dict:
            raise Malformed(f"{key}: expected array of maps")
        fields.exact_keys(entry, _FILE_KEYS, f"{key} entry")
        name = fields.text(entry, "name", min_len=1, max_len=MAX_FILE_NAME)
        try:
            check_relpath(name)
        except UnsafePathError as exc:
            raise InvalidField(f"{key}: {exc.why}: {name!r}") from None
        if name in names:
            raise InvalidField(f"{key}: {name!r} listed twice")
        names.add(name)
        f = FileDigest(name, fields.uint(entry, "size"), fields.fixed_bytes(entry, "sha256", 32))
        total += f.size
        out.append(f)
    if total > max_size:
        raise InvalidField(f"{key}: {total} bytes in all > {max_size}")
    return tuple(out)


class Workload(NamedTuple):
    """What runs. ``kind`` names the runtime the provider must offer ("command": ``argv`` run
    as is in the provider's job runner); ``busy``: the job keeps its GPUs busy, so an idle GPU
    counts as a dead job in the evidence check."""

    kind: str
    argv: tuple[str, ...]
    gpus: int
    inputs: tuple[FileDigest, ...] = ()
    network: bool = False
    busy: bool = False

    @property
    def input_bytes(self) -> int:
        return sum(f.size for f in self.inputs)

    def to_wire(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "argv": list(self.argv),
            "gpus": self.gpus,
            "inputs": [f.to_wire() for f in self.inputs],
            "network": self.network,
            "busy": self.busy,
        }

    @classmethod
    def from_wire(cls, m: dict[str, Any]) -> Workload:
        fields.exact_keys(m, _WORKLOAD_KEYS, "workload")
        kind = fields.text(m, "kind", min_len=1, max_len=MAX_KIND)
        argv = m["argv"]
        if type(argv) is not list or not all(type(a) is str for a in argv):
            raise Malformed("workload.argv: expected array of text")
        if not 1 <= len(argv) <= MAX_ARGS:
            raise InvalidField(f"workload.argv: {len(argv)} arguments, expected 1..{MAX_ARGS}")
        sizes = [len(a.encode()) for a in argv]
        if min(sizes) < 1 or max(sizes) > MAX_ARG or sum(sizes) > MAX_ARGV_BYTES:
            raise InvalidField(
                f"workload.argv: each argument 1..{MAX_ARG} bytes, {MAX_ARGV_BYTES} in all"
            )
        if any("\x00" in a for a in argv):
            raise InvalidField("workload.argv: NUL in an argument")
        return cls(
            kind=kind,
            argv=tuple(argv),
            gpus=fields.uint(m, "gpus", high=MAX_GPUS),
            inputs=read_files(m, "inputs", max_size=MAX_INPUT_BYTES),
            network=fields.boolean(m, "network"),
            busy=fields.boolean(m, "busy"),
        )


_WORKLOAD_KEYS = frozenset({"kind", "argv", "gpus", "inputs", "network", "busy"})
