"""A real full disk for the tests: a small tmpfs mounted for one test, filled with a
ballast file until the kernel answers ENOSPC, and freed by deleting it.

Mounting needs root (CAP_SYS_ADMIN), as CI runs; elsewhere the tests that need it
are skipped, saying why. ``database_on_small_disk`` puts a fresh PostgreSQL database
(catalogs and tables) in a tablespace on such a disk.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.postgres import PostgresServer

__all__ = ["MIB", "SmallDisk", "database_on_small_disk", "small_disk"]

MIB = 1024 * 1024


class SmallDisk:
    """A tmpfs of ``size`` bytes mounted at ``path`` (see ``small_disk``)."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        self._ballast = path / "ballast"

    def free_bytes(self) -> int:
        found = os.statvfs(self.path)
        return found.f_bavail * found.f_frsize

    def fill(self) -> None:
        """Write the ballast until nothing more fits (root has no reserve on tmpfs)."""
        fd = os.open(self._ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for chunk in (MIB, 64 * 1024, 4096, 512, 1):
                block = b"\x01" * chunk
                with contextlib.suppress(OSError):
                    while True:
                        os.write(fd, block)
        finally:
            os.close(fd)
        assert self.free_bytes() == 0, f"{self.path} still has {self.free_bytes()} bytes free"

    def free(self) -> None:
        """Delete the ballast: the space is back."""
        self._ballast.unlink(missing_ok=True)


def _mount(path: Path, size: int, owner: pwd.struct_passwd | None) -> None:
    options = f"size={size},mode=0700"
    if owner is not None:
        options += f",uid={owner.pw_uid},gid={owner.pw_gid}"
    if shutil.which("mount") is None:
        pytest.skip("a full disk needs a small tmpfs, and there is no mount command here")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    if done.returncode != 0:
        pytest.skip(
            "a full disk needs a small tmpfs, and this environment cannot mount one"
            f" (root with CAP_SYS_ADMIN is needed): {done.stderr.strip() or done.returncode}"
        )


def _unmount(path: Path) -> None:
    done = subprocess.run(
        ["umount", str(path)], capture_output=True, text=True, check=False, timeout=30
    )
    if done.returncode != 0:
        # Still in use (a process of the test not yet gone): detach it, so that
        # nothing is left mounted; the kernel frees it once the last user is gone.
        subprocess.run(["umount", "-l", str(path)], check=False, timeout=30)


@contextlib.contextmanager
def small_disk(size: int, *, owner: pwd.struct_passwd | None = None) -> Iterator[SmallDisk]:
    """A tmpfs of ``size`` bytes (owned by ``owner`` if given), unmounted afterwards.
    Mounted under /tmp, where the PostgreSQL system user can reach it; skips the test
    where mounting is not permitted."""
    if os.geteuid() != 0:
        pytest.skip("a full disk needs a small tmpfs, and only root can mount one")
    base = Path(tempfile.mkdtemp(prefix="exchange-disk-", dir="/tmp"))
    try:
        base.chmod(0o711)
        path = base / "disk"
        path.mkdir()
        _mount(path, size, owner)
        try:
            yield SmallDisk(path, size)
        finally:
            _unmount(path)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def database_on_small_disk(server: PostgresServer, size: int) -> Iterator[tuple[str, SmallDisk]]:
    """The URL of a fresh database whose every file (catalogs, tables, indexes) is in a
    tablespace on a tmpfs of ``size`` bytes, and that disk. Dropped afterwards."""
    try:
        owner = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
    except KeyError:
        owner = None
    with small_disk(size, owner=owner) as disk:
        location = disk.path / "tablespace"
        location.mkdir(mode=0o700)
        if owner is not None:
            os.chown(location, owner.pw_uid, owner.pw_gid)
        tablespace = f"small_{uuid.uuid4().hex[:12]}"
        name = f"t_{uuid.uuid4().hex[:16]}"
        server.psql(f"CREATE TABLESPACE {tablespace} LOCATION '{location}'")
        try:
            server.psql(f'CREATE DATABASE "{name}" TABLESPACE {tablespace}')
            try:
                yield server.url(name), disk
            finally:
                disk.free()  # dropping needs no room, but the log of it does
                server.drop_database(server.url(name))
        finally:
            server.psql(f"DROP TABLESPACE IF EXISTS {tablespace}")
