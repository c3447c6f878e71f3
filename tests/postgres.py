"""A throw-away PostgreSQL server for the tests, and the stores the store tests run on.

``PostgresServer`` runs ``initdb`` into a fresh temporary directory and starts
``postgres`` itself as a child process (not ``pg_ctl start``, which daemonises: we
keep the pid, and stop exactly that process), listening on 127.0.0.1 only, on a
free port, with its unix sockets in the temporary directory. Durability is off
(``fsync=off``): a test cluster never outlives its session::

    with PostgresServer() as server:
        url = server.create_database()  # a fresh, empty database

PostgreSQL refuses to run as root: under root (CI), ``initdb`` and ``postgres`` run
as the ``postgres`` system user that Debian's package creates. The binaries are
found on PATH, else in the newest ``/usr/lib/postgresql/*/bin``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import pytest

from exchange.store import Store
from exchange.store.sqlite import SqliteStore
from tests.kafka_broker import free_port

__all__ = ["STORES", "PostgresServer", "StoreFactory", "postgres_bindir", "store_factory"]

HOST = "127.0.0.1"
_ICU = "TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C' ENCODING 'UTF8'"
USER = "exchange"  # the cluster's superuser
_SYSTEM_USER = "postgres"  # who runs the server when the tests run as root


def postgres_bindir() -> Path:
    """The directory of ``initdb`` and ``postgres``: PATH first, else the newest
    version under /usr/lib/postgresql (where Debian's package puts them)."""
    found = shutil.which("initdb")
    if found is not None:
        bindir = Path(os.path.realpath(found)).parent
        if (bindir / "postgres").exists():
            return bindir

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", path.parent.name))

    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=version)
    if not candidates:
        raise RuntimeError(
            "PostgreSQL is not installed (no initdb on PATH nor in /usr/lib/postgresql):"
            " apt-get install postgresql"
        )
    return candidates[-1].parent


class PostgresServer:
    """One PostgreSQL cluster in a temporary directory, served on a free loopback port."""

    def __init__(self, *, durable: bool = False) -> None:
        """``durable``: commits reach the disk (benchmarks); tests skip that."""
        self.durable = durable
        self.bindir = postgres_bindir()
        # Run as the postgres system user when we are root (PostgreSQL refuses root).
        self._as: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            try:
                self._as = pwd.getpwnam(_SYSTEM_USER)
            except KeyError:
                raise RuntimeError(
                    "the tests run as root, and PostgreSQL refuses to: it needs the"
                    f" {_SYSTEM_USER} system user (created by apt-get install postgresql)"
                ) from None
        self._root = Path(tempfile.mkdtemp(prefix="exchange-pg-", dir=_parent(self._as)))
        self.data_dir = self._root / "data"
        self.socket_dir = self._root / "sockets"
        self.log_path = self._root / "postgres.log"
        self.port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._initialised = False
        self._icu: bool | None = None  # whether databases can have ICU collations

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self, timeout_s: float = 60.0) -> None:
        """Create the cluster (first time only) and start the server; return once it
        accepts connections."""
        if self._process is not None:
            return
        deadline = time.monotonic() + timeout_s
        if not self._initialised:
            self._initdb()
        # A free port can be taken between free_port() and the server's bind: retry on
        # a new port unless this is a restart (which keeps its port).
        for _ in range(1 if self.port else 3):
            port = self.port or free_port()
            self._spawn(port)
            if self._wait_ready(port, deadline):
                self.port = port
                return
        raise RuntimeError(f"PostgreSQL did not start:\n{self._log_tail()}")

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the server this object started (fast shutdown: SIGINT), and kill it if
        it has not exited by the deadline."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            for pid in _children(process.pid):  # paused: let it hear the signal
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
            process.send_signal(signal.SIGCONT)
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=timeout_s)

    def restart(self) -> None:
        """Stop and start again, on the same data directory and port."""
        self.stop()
        self.start()

    def pause(self) -> None:
        """Freeze the server and every backend (SIGSTOP): connections stay open, and
        nothing answers (a hung database, or a network that drops packets)."""
        if self._process is None:
            raise RuntimeError("the server is not started")
        # The postmaster first, so that it forks no backend after the list is read.
        os.kill(self._process.pid, signal.SIGSTOP)
        for pid in _children(self._process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Undo ``pause``."""
        if self._process is None:
            raise RuntimeError("the server is not started")
        for pid in _children(self._process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        os.kill(self._process.pid, signal.SIGCONT)

    def cleanup(self) -> None:
        """Stop, and delete the cluster."""
        self.stop()
        shutil.rmtree(self._root, ignore_errors=True)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def __enter__(self) -> PostgresServer:
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    # -- databases ----------------------------------------------------------------------------
    def url(self, dbname: str = "postgres", *, password: str | None = None) -> str:
        if self.port is None:
            raise RuntimeError("the server is not started")
        user = USER if password is None else f"{USER}:{password}"
        return f"postgresql://{user}@{HOST}:{self.port}/{dbname}"

    def create_database(self) -> str:
        """The URL of a new, empty database (a unique name). Its text sorts by a
        natural-language collation (ICU's en-US, where PostgreSQL has ICU), as
        production databases often do: code that needs byte order must ask for it."""
        name = f"t_{uuid.uuid4().hex[:16]}"
        if self._icu is None:
            try:
                self.psql(f'CREATE DATABASE "{name}" {_ICU}')
                self._icu = True
                return self.url(name)
            except RuntimeError:
                self._icu = False  # built without ICU: the cluster's locale (C) it is
        self.psql(f'CREATE DATABASE "{name}" {_ICU if self._icu else ""}')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop the database of ``url`` (one of ``create_database``), disconnecting any
        session still on it."""
        name = url.rsplit("/", 1)[-1]
        if not re.fullmatch(r"t_[0-9a-f]{16}", name):
            raise ValueError(f"not a test database: {name}")
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        """Run ``sql`` with psql as the superuser; its output (unaligned, no headers)."""
        if self.port is None:
            raise RuntimeError("the server is not started")
        command = [str(self.bindir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
        command += ["-h", HOST, "-p", str(self.port), "-U", USER, "-d", dbname, "-c", sql]
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "PGCONNECT_TIMEOUT": "10"},
        )
        if done.returncode != 0:
            raise RuntimeError(f"psql failed ({sql}): {done.stderr.strip()}")
        return done.stdout

    # -- internals ----------------------------------------------------------------------------
    def _owner(self) -> tuple[int | None, int | None, list[int] | None]:
        """(user, group, extra_groups) for subprocess: the server's owner under root,
        else None (this user)."""
        if self._as is None:
            return None, None, None
        return self._as.pw_uid, self._as.pw_gid, []

    def _initdb(self) -> None:
        self.socket_dir.mkdir(mode=0o700)
        if self._as is not None:
            for path in (self._root, self.socket_dir):
                os.chown(path, self._as.pw_uid, self._as.pw_gid)
        user, group, extra_groups = self._owner()
        command = [str(self.bindir / "initdb"), "-D", str(self.data_dir), "-U", USER]
        command += ["-A", "trust", "--encoding=UTF8", "--locale=C", "--no-sync"]
        done = subprocess.run(
            command,
            cwd=self._root,
            capture_output=True,
            check=False,
            timeout=120,
            user=user,
            group=group,
            extra_groups=extra_groups,
        )
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stdout.decode()}{done.stderr.decode()}")
        self._initialised = True

    def _spawn(self, port: int) -> None:
        command = [str(self.bindir / "postgres"), "-D", str(self.data_dir), "-p", str(port)]
        fast = (
            () if self.durable else ("fsync=off", "synchronous_commit=off", "full_page_writes=off")
        )
        for setting in (
            f"listen_addresses={HOST}",
            f"unix_socket_directories={self.socket_dir}",
            *fast,
            "max_connections=200",
        ):
            command += ["-c", setting]
        # The log goes to a file, not a pipe: nobody drains a pipe, and a full one
        # would stall the server.
        user, group, extra_groups = self._owner()
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                command,
                cwd=self._root,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                user=user,
                group=group,
                extra_groups=extra_groups,
            )

    def _wait_ready(self, port: int, deadline: float) -> bool:
        """True once the server accepts connections; False if it exited (port taken)."""
        process = self._process
        assert process is not None
        while True:
            if process.poll() is not None:
                self._process = None
                return False
            ready = subprocess.run(
                [str(self.bindir / "pg_isready"), "-q", "-h", HOST, "-p", str(port), "-t", "1"],
                check=False,
                timeout=30,
            )
            if ready.returncode == 0:
                return True
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"PostgreSQL on port {port} did not accept connections in time:\n"
                    f"{self._log_tail()}"
                )
            time.sleep(0.05)

    def _log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def _parent(owner: pwd.struct_passwd | None) -> str | None:
    """Where to make the cluster's directory: the usual temporary directory, unless
    the server's owner could not reach it, or a unix socket path in it would be too
    long (about 100 bytes): then /tmp."""
    base = Path(tempfile.gettempdir())
    reachable = owner is None or all(p.stat().st_mode & 0o001 for p in (base, *base.parents))
    return None if reachable and len(str(base)) < 60 else "/tmp"


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (a postmaster's backends and workers)."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (command) state ppid ...": the command may hold spaces and parentheses.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


# -- the store tests on both stores ------------------------------------------------------------

StoreFactory = Callable[[], Store]

# Parameters of the store fixtures: each store test runs on both.
STORES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """Builds (unopened) stores over the same storage, for the store fixtures
    parametrized with ``STORES``: the same SQLite file, or the same PostgreSQL
    database (a fresh one per test). Tests that need "another process" call it twice."""
    if request.param == "sqlite":
        path = tmp_path / "exchange.sqlite3"
        return lambda: SqliteStore(path)
    from exchange.store.postgres import PostgresStore  # noqa: PLC0415 (only when needed)

    url: str = request.getfixturevalue("postgres_url")
    return lambda: PostgresStore(url, pool_size=4, timeout_s=10.0)
