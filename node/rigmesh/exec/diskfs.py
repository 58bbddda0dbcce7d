"""A job's working directory as its own filesystem, so "disk written" has a hard ceiling; and the
read-only bind mounts that stage paths the job's uid could not reach on its own.

A polled byte count (the subprocess runner's) lets a job overshoot for one poll, misses files
written elsewhere or deleted while held open, and costs a directory walk per poll. A filesystem of
exactly the budget does not: an ext4 image file of `max_disk_bytes`, loop-mounted on the working
directory, and the kernel answers ENOSPC at the limit, whatever the job does. Everything the job
may write (its working directory, and /tmp inside the sandbox, which is the image's tmp/) is on
it. The image is sparse, so only what the job writes takes space on the host; ext4's metadata
takes a few per cent of the budget (no journal, no reserved blocks).

mkfs.ext4 runs once per budget size, into a template image; each job gets a copy of the
template's few MiB of metadata (its data extents only, holes kept), then a loop device and a
mount done with ioctls and mount(2) rather than the losetup and mount programs: a few ms in all.
Needs root (mount) and mkfs.ext4 (e2fsprogs, in every Debian base system).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import shutil
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass

LOOP_CTL_GET_FREE = 0x4C82
LOOP_SET_FD = 0x4C00
LOOP_CLR_FD = 0x4C01
LOOP_SET_STATUS64 = 0x4C04
LOOP_CONFIGURE = 0x4C0A
LO_FLAGS_AUTOCLEAR = 4  # the loop device frees itself at the last umount
MS_NOSUID = 2
MS_NODEV = 4
MS_RDONLY = 1
MS_REMOUNT = 32
MS_BIND = 4096
MS_NOATIME = 1024
MNT_DETACH = 2

_LIBC = ctypes.CDLL(None, use_errno=True)


class _LoopInfo64(ctypes.Structure):
    _fields_ = [
        ("lo_device", ctypes.c_uint64),
        ("lo_inode", ctypes.c_uint64),
        ("lo_rdevice", ctypes.c_uint64),
        ("lo_offset", ctypes.c_uint64),
        ("lo_sizelimit", ctypes.c_uint64),
        ("lo_number", ctypes.c_uint32),
        ("lo_encrypt_type", ctypes.c_uint32),
        ("lo_encrypt_key_size", ctypes.c_uint32),
        ("lo_flags", ctypes.c_uint32),
        ("lo_file_name", ctypes.c_uint8 * 64),
        ("lo_crypt_name", ctypes.c_uint8 * 64),
        ("lo_encrypt_key", ctypes.c_uint8 * 32),
        ("lo_init", ctypes.c_uint64 * 2),
    ]


class _LoopConfig(ctypes.Structure):
    _fields_ = [
        ("fd", ctypes.c_uint32),
        ("block_size", ctypes.c_uint32),
        ("info", _LoopInfo64),
        ("reserved", ctypes.c_uint64 * 8),
    ]


class DiskSetupError(RuntimeError):
    """The job's filesystem could not be made or mounted."""


def mkfs_argv(image: str, uid: int, gid: int) -> list[str]:
    """mkfs.ext4 for a job image: no journal (a job's scratch space need not survive a crash),
    no reserved blocks (the budget is the job's), lazy tables (fast), root owned by the job."""
    return [
        "mkfs.ext4",
        "-q",
        "-F",
        "-O",
        "^has_journal,^resize_inode",  # no online resize: 300 KiB of metadata, not 4 MiB
        "-m",
        "0",
        "-b",
        "4096",  # what a big disk gets anyway; mkfs picks 1 KiB for small images otherwise
        "-E",
        f"lazy_itable_init=1,nodiscard,root_owner={uid}:{gid}",
        image,
    ]


def mkfs(image: str, size: int, uid: int, gid: int) -> None:
    with open(image, "wb") as f:
        f.truncate(size)  # sparse: the host pays only for what is written
    r = subprocess.run(mkfs_argv(image, uid, gid), capture_output=True, check=False)
    if r.returncode != 0:
        raise DiskSetupError(f"mkfs.ext4 failed: {r.stderr.decode(errors='replace')}")


def template(directory: str, size: int, uid: int, gid: int) -> str:
    """A freshly formatted image of `size` whose root is owned by uid:gid, made on first use.
    Never mounted itself; each job mounts its own copy."""
    path = os.path.join(directory, f".ext4-{size}-{uid}-{gid}.img")
    if not os.path.exists(path):
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}"
        try:
            mkfs(tmp, size, uid, gid)
            os.replace(tmp, path)  # atomic: a concurrent job sees a whole template or none
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    return path


def copy_sparse(src: str, dst: str) -> None:
    """Copy only the data extents of `src` (SEEK_DATA / SEEK_HOLE), keeping the holes."""
    sfd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        dfd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            size = os.fstat(sfd).st_size
            off = 0
            while off < size:
                try:
                    data = os.lseek(sfd, off, os.SEEK_DATA)
                except OSError as e:
                    if e.errno == errno.ENXIO:  # no data past off: the rest is a hole
                        break
                    raise
                end = os.lseek(sfd, data, os.SEEK_HOLE)
                pos = data
                while pos < end:
                    n = os.copy_file_range(sfd, dfd, end - pos, pos, pos)
                    if n == 0:
                        break
                    pos += n
                off = end
            os.ftruncate(dfd, size)
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)


def available() -> str | None:
    """None if this host can make job filesystems, else why not."""
    if os.geteuid() != 0:
        return "not root: cannot mount a per-job filesystem (disk budget is polled instead)"
    if shutil.which("mkfs.ext4") is None:
        return "mkfs.ext4 not found (Debian: e2fsprogs): disk budget is polled instead"
    if not os.path.exists("/dev/loop-control"):
        return "no /dev/loop-control (loop module): disk budget is polled instead"
    return None


def _ioctl(fd: int, req: int, arg: object = 0) -> int:
    return fcntl.ioctl(fd, req, arg)  # type: ignore[call-overload,no-any-return]


def _attach_loop(image_fd: int) -> tuple[int, str]:
    """A free loop device bound to `image_fd`, autoclear. Returns its fd and path."""
    ctl = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
    try:
        for _ in range(16):  # another process may take the free device between the two calls
            n = _ioctl(ctl, LOOP_CTL_GET_FREE)
            path = f"/dev/loop{n}"
            lfd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            cfg = _LoopConfig(fd=image_fd)
            cfg.info.lo_flags = LO_FLAGS_AUTOCLEAR
            try:
                fcntl.ioctl(lfd, LOOP_CONFIGURE, bytes(cfg))
                return lfd, path
            except OSError as e:
                if e.errno == errno.EBUSY:
                    os.close(lfd)
                    continue
                if e.errno not in (errno.EINVAL, errno.ENOTTY):
                    os.close(lfd)
                    raise
            # Kernels before 5.8 have no LOOP_CONFIGURE: the two-step form.
            try:
                _ioctl(lfd, LOOP_SET_FD, image_fd)
            except OSError as e:
                os.close(lfd)
                if e.errno == errno.EBUSY:
                    continue
                raise
            info = _LoopInfo64()
            info.lo_flags = LO_FLAGS_AUTOCLEAR
            fcntl.ioctl(lfd, LOOP_SET_STATUS64, bytes(info))
            return lfd, path
        raise DiskSetupError("no free loop device")
    finally:
        os.close(ctl)


@dataclass
class JobDisk:
    """An ext4 image of `size` bytes mounted on `mount_point`. `close()` undoes all of it."""

    image: str
    mount_point: str
    size: int
    mounted: bool = False

    @classmethod
    def create(
        cls, image: str, mount_point: str, size: int, uid: int, gid: int, templates: str
    ) -> JobDisk:
        """Copy a formatted template of this size (made once, in `templates`) to `image` and
        mount it: copying the few MiB mkfs writes costs a fraction of running mkfs."""
        disk = cls(image, mount_point, size)
        try:
            copy_sparse(template(templates, size, uid, gid), image)
            ifd = os.open(image, os.O_RDWR | os.O_CLOEXEC)
            try:
                lfd, dev = _attach_loop(ifd)
            finally:
                os.close(ifd)
            try:
                flags = MS_NOSUID | MS_NODEV | MS_NOATIME
                # noinit_itable: no background zeroing of inode tables (hundreds of MiB on a
                # big image), which a throwaway filesystem never needs.
                data = b"noinit_itable"
                if _LIBC.mount(dev.encode(), mount_point.encode(), b"ext4", flags, data) != 0:
                    e = ctypes.get_errno()
                    with contextlib.suppress(OSError):
                        _ioctl(lfd, LOOP_CLR_FD)
                    raise DiskSetupError(f"mount {dev} on {mount_point}: {os.strerror(e)}")
                disk.mounted = True
            finally:
                os.close(lfd)  # autoclear: the mount holds the device now
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(mount_point, "lost+found"))  # not the job's business
            return disk
        except BaseException:
            disk.close()
            raise

    def usage(self) -> tuple[int, int, bool]:
        """(bytes used, bytes the job may still write, full): from statvfs, no walk.

        "Full" leaves a little slack: ext4 refuses a write some blocks before statvfs shows
        zero free (it needs room for the file's extent blocks too), so a job can be stopped by
        ENOSPC with a few hundred KiB still showing free."""
        st = os.statvfs(self.mount_point)
        used = (st.f_blocks - st.f_bfree) * st.f_frsize
        free = st.f_bavail * st.f_frsize
        slack = min(1 << 20, self.size // 64)
        return used, free, free < slack or st.f_favail == 0

    def close(self) -> None:
        # Lazy: a process still holding a file (there should be none) cannot keep the mount.
        if self.mounted and unmount(self.mount_point):
            self.mounted = False
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.image)


def bind_readonly(src: str, dst: str) -> None:
    """Bind `src` read-only on the existing directory `dst` (a host mount: root only)."""
    if _LIBC.mount(src.encode(), dst.encode(), None, MS_BIND, None) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"bind {src} on {dst}: {os.strerror(e)}")
    flags = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV
    if _LIBC.mount(None, dst.encode(), None, flags, None) != 0:
        e = ctypes.get_errno()
        unmount(dst)
        raise OSError(e, f"read-only remount of {dst}: {os.strerror(e)}")


def unmount(path: str) -> bool:
    return _LIBC.umount2(path.encode(), MNT_DETACH) == 0


def unmount_under(paths: Sequence[str]) -> int:
    """Unmount every mount at or below any of `paths` (a crashed node's job filesystems and
    staged binds), deepest first. Returns how many."""
    roots = [os.path.realpath(p).rstrip("/") for p in paths]
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        points = [line.split()[4] for line in f]
    n = 0
    for p in sorted(points, key=len, reverse=True):
        if any(p == r or p.startswith(r + "/") for r in roots) and unmount(p):
            n += 1
    return n
