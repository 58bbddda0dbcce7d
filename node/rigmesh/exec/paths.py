"""Job input files in, output files out, never outside the job's working directory.

Inputs and outputs cross a trust boundary in both directions: a renter names input paths (it could
name `../../etc/cron.d/x`), and a job creates output files (it could leave a symlink to the
provider's keystore and hope the node ships it back). Every path is checked as text first
(`check_relpath`, pure, from the rental core: input names are part of a
proposal) and every file is then opened with O_NOFOLLOW under a directory file
descriptor walk, so a symlink planted anywhere along the way is refused rather than followed.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field

from rigmesh.rental.workload import UnsafePathError, check_relpath

__all__ = [
    "CollectedOutputs", "InputTooLargeError", "UnsafePathError", "check_relpath",
    "collect_outputs", "tree_bytes", "write_inputs",
]


class InputTooLargeError(ValueError):
    """The input files exceed the count or byte budget of the job."""


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_parent(root_fd: int, parts: tuple[str, ...], *, create: bool) -> int:
    """Open the directory holding parts[-1], refusing symlinks at every step."""
    fd = os.dup(root_fd)
    try:
        for comp in parts[:-1]:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(comp, 0o755, dir_fd=fd)
            try:
                nfd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
            except OSError as e:  # ELOOP / ENOTDIR: a symlink or a file where a dir should be
                why = f"cannot enter {comp!r}: {e.strerror}"
                raise UnsafePathError("/".join(parts), why) from e
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise


def write_inputs(
    workdir: str, files: Mapping[str, bytes], *, max_files: int, max_total_bytes: int
) -> None:
    """Materialize the job's input files under `workdir`. Validates everything before writing."""
    if len(files) > max_files:
        raise InputTooLargeError(f"{len(files)} input files > {max_files}")
    total = 0
    checked: list[tuple[tuple[str, ...], bytes]] = []
    for path, data in files.items():
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"input {path!r}: bytes expected")
        checked.append((check_relpath(path), bytes(data)))
        total += len(data)
    if total > max_total_bytes:
        raise InputTooLargeError(f"{total} input bytes > {max_total_bytes}")
    root_fd = os.open(workdir, _DIR_FLAGS)
    try:
        for parts, data in checked:
            dfd = _open_parent(root_fd, parts, create=True)
            try:
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
                try:
                    fd = os.open(parts[-1], flags, 0o644, dir_fd=dfd)
                except FileExistsError as e:  # duplicate, or a dir of that name from another path
                    raise UnsafePathError("/".join(parts), "already exists") from e
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
            finally:
                os.close(dfd)
    finally:
        os.close(root_fd)


@dataclass(frozen=True)
class CollectedOutputs:
    """Files read back from a job's working directory, within a byte budget."""

    files: dict[str, bytes]
    total_bytes: int
    truncated: bool  # some regular files were left out because the budget ran out
    skipped: tuple[tuple[str, str], ...] = field(default=())  # (path, why) not collected


def collect_outputs(
    workdir: str, subdir: str | None, *, max_total_bytes: int, max_files: int = 10_000
) -> CollectedOutputs:
    """Read regular files under `workdir/subdir` (or the whole workdir), sorted by path.

    Symlinks are never followed (reported in `skipped`); special files are skipped; a file that
    does not fit the remaining budget is skipped and `truncated` is set, smaller later files can
    still fit. Reads through fds opened with O_NOFOLLOW so a file swapped for a symlink after the
    directory listing (a job still running, or a leftover process) is refused too.
    """
    root_fd = os.open(workdir, _DIR_FLAGS)
    files: dict[str, bytes] = {}
    skipped: list[tuple[str, str]] = []
    total = 0
    truncated = False
    stack: list[tuple[int, str]] = []
    try:
        if subdir is None:
            start_fd, prefix = os.dup(root_fd), ""
        else:
            parts = check_relpath(subdir)
            try:
                start_fd = _open_parent(root_fd, (*parts, "_"), create=False)
            except UnsafePathError:
                return CollectedOutputs({}, 0, False, ((subdir, "missing or not a directory"),))
            prefix = subdir + "/"
        stack.append((start_fd, prefix))
        while stack:
            dfd, rel = stack.pop()
            try:
                entries = sorted(os.listdir(dfd))
                for name in entries:
                    path = rel + name
                    try:
                        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                    except OSError:
                        continue
                    if stat.S_ISLNK(st.st_mode):
                        skipped.append((path, "symlink"))
                    elif stat.S_ISDIR(st.st_mode):
                        try:
                            stack.append((os.open(name, _DIR_FLAGS, dir_fd=dfd), path + "/"))
                        except OSError:
                            skipped.append((path, "unreadable directory"))
                    elif not stat.S_ISREG(st.st_mode):
                        skipped.append((path, "not a regular file"))
                    elif len(files) >= max_files:
                        skipped.append((path, "file count budget"))
                        truncated = True
                    elif total + st.st_size > max_total_bytes:
                        skipped.append((path, "byte budget"))
                        truncated = True
                    else:
                        data = _read_regular(dfd, name, max_total_bytes - total)
                        if data is None:
                            skipped.append((path, "changed while reading"))
                            truncated = True
                            continue
                        files[path] = data
                        total += len(data)
            finally:
                os.close(dfd)
    finally:
        for dfd, _ in stack:  # only non-empty if we were interrupted
            os.close(dfd)
        os.close(root_fd)
    return CollectedOutputs(dict(sorted(files.items())), total, truncated, tuple(skipped))


def _read_regular(dfd: int, name: str, budget: int) -> bytes | None:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dfd)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = f.read(budget + 1)  # the file may have grown since stat()
    return None if len(data) > budget else data


def tree_bytes(path: str) -> int:
    """Disk blocks used under `path` (allocated bytes, so sparse files count what they use)."""
    total = 0
    stack = [path]
    while stack:
        d = stack.pop()
        try:
            with os.scandir(d) as it:
                for e in it:
                    try:
                        st = e.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    total += st.st_blocks * 512
                    if stat.S_ISDIR(st.st_mode):
                        stack.append(e.path)
        except OSError:
            continue
    return total
