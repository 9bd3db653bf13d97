"""
The embedded PostgreSQL cluster: a private server under ``<state dir>/pgdata``.

The server binaries come from the ``pgserver`` wheel.  Everything here is
blocking (it runs ``initdb`` and ``pg_ctl``): the daemon calls it before the
reactor runs and, once it runs, only from threads (the supervisor's restarts,
the stop at shutdown); the admin CLI and the test suite call it from ordinary
code.  In the daemon L{_blocking_run} enforces that (the daemon turns the
guard on with L{guard_reactor_thread} as it starts): a process started from
the reactor's thread while the reactor runs is refused -- it would stall
every terminal and streamer for as long as ``pg_ctl`` takes.  (The test
suite's fixtures start clusters on pytest-twisted's reactor thread on
purpose, so the guard is the daemon's, not the module's default.)

The cluster listens on a Unix socket only (no TCP), with ``trust`` auth for
local connections: the socket directory is private to the user running the
server.  A cluster left running by a daemon that was killed (SIGKILL) is
found through ``postmaster.pid`` and reused.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import importlib.util
import os
import pwd
import subprocess
import sys
import tempfile
from pathlib import Path

from attrs import frozen
from twisted.python import threadable

PORT = 5432
DBNAME = "smartyd"
_SERVICE_USER = "pgserver"  # the user the server runs as when we are root


class EmbeddedError(Exception):
    """The embedded cluster could not be initialised, started or stopped."""


_guarded = False


def guard_reactor_thread(on: bool = True) -> None:
    """From now on, refuse initdb/pg_ctl on the running reactor's thread (the daemon's policy)."""
    global _guarded
    _guarded = on


def _on_running_reactor_thread() -> bool:
    # The reactor module is looked up, never imported: importing it would
    # install the default reactor in a process (the CLI) that has none yet.
    reactor = sys.modules.get("twisted.internet.reactor")
    return bool(getattr(reactor, "running", False)) and threadable.isInIOThread()


def _blocking_run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    """C{subprocess.run}, refused on the thread of a running reactor."""
    if _guarded and _on_running_reactor_thread():
        raise EmbeddedError(
            f"{Path(args[0]).name} would block the running reactor: call it in a thread")
    return subprocess.run(args, **kwargs)


def _pg_install() -> Path:
    # Located without importing pgserver: its package import has side effects
    # (a lock file under the runtime dir, warnings) that a daemon does not want.
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedError("the pgserver package is not installed (pip install pgserver)")
    return Path(list(spec.submodule_search_locations)[0]) / "pginstall"


def _bin(name: str) -> str:
    return str(_pg_install() / "bin" / name)


def _is_root() -> bool:
    return os.geteuid() == 0


@frozen
class PostmasterInfo:
    pid: int
    port: int
    socket_dir: str
    status: str

    @classmethod
    def read(cls, pgdata: Path) -> "PostmasterInfo | None":
        try:
            lines = (pgdata / "postmaster.pid").read_text().splitlines()
        except (FileNotFoundError, PermissionError):
            return None
        if len(lines) < 8:
            return None
        try:
            return cls(int(lines[0]), int(lines[3]), lines[4], lines[7].strip())
        except ValueError:
            return None

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        # A killed postmaster stays a zombie until its parent (init, or a
        # container's PID 1, which may reap late or never) reaps it.
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return True  # no /proc: trust kill(0)
        return stat.rsplit(")", 1)[-1].split()[:1] != ["Z"]


@frozen
class EmbeddedCluster:
    """A PostgreSQL cluster in ``pgdata``, started on demand, reused when running."""

    pgdata: Path

    @classmethod
    def in_state_dir(cls, state_dir: str | Path) -> "EmbeddedCluster":
        return cls(Path(state_dir).resolve() / "pgdata")

    # -- paths ----------------------------------------------------------
    @property
    def socket_dir(self) -> Path:
        # Unix socket paths are limited to ~107 bytes: use pgdata when short,
        # else a private directory named after pgdata under the temp dir.
        if len(str(self.pgdata)) + len("/.s.PGSQL.5432") < 100:
            return self.pgdata
        digest = hashlib.sha256(str(self.pgdata).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"smartyd-pg-{digest}"

    def dsn(self, dbname: str = DBNAME) -> str:
        return f"host={self.socket_dir} port={PORT} user=postgres dbname={dbname}"

    # -- lifecycle --------------------------------------------------------
    def _run(self, args: list[str], timeout: float = 120) -> str:
        kwargs = {}
        if _is_root():
            kwargs["user"] = _SERVICE_USER
            kwargs["group"] = _SERVICE_USER
        try:
            proc = _blocking_run(
                args,
                capture_output=True,
                text=True,
                timeout=timeout,
                cwd="/",
                stdin=subprocess.DEVNULL,
                **kwargs,
            )
        except subprocess.TimeoutExpired:
            raise EmbeddedError(f"{Path(args[0]).name} timed out after {timeout}s")
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip().splitlines()
            raise EmbeddedError(
                f"{Path(args[0]).name} failed: {detail[-1] if detail else proc.returncode}"
            )
        return proc.stdout

    def _prepare_root(self) -> None:
        """Running as root: the server must run as an unprivileged user."""
        try:
            pw = pwd.getpwnam(_SERVICE_USER)
        except KeyError:
            _blocking_run(
                ["useradd", "--system", "--no-create-home", "-s", "/usr/sbin/nologin",
                 _SERVICE_USER],
                check=True, capture_output=True,
            )
            pw = pwd.getpwnam(_SERVICE_USER)
        # The server user must traverse to pgdata and to the binaries.
        for target in (self.pgdata, self.socket_dir, _pg_install()):
            for parent in list(target.parents)[:-1]:
                mode = parent.stat().st_mode
                if mode & 0o011 != 0o011:
                    parent.chmod(mode | 0o011)
        for root, dirs, files in os.walk(_pg_install()):
            for name in dirs + files:
                p = os.path.join(root, name)
                if not os.path.islink(p):
                    mode = os.stat(p).st_mode
                    want = mode | 0o044 | (0o011 if mode & 0o100 else 0)
                    if mode != want:
                        os.chmod(p, want)
        for d in {self.pgdata, self.socket_dir}:
            os.chown(d, pw.pw_uid, pw.pw_gid)

    def _lock(self):
        lockfile = self.pgdata.parent / ".pgdata.lock"
        fd = os.open(lockfile, os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd

    def running(self) -> PostmasterInfo | None:
        info = PostmasterInfo.read(self.pgdata)
        if info is not None and info.alive():
            return info
        return None

    def ensure_running(self) -> str:
        """Initialise and start the cluster unless it runs already; return its DSN."""
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        fd = self._lock()
        try:
            self.pgdata.mkdir(mode=0o700, exist_ok=True)
            self.socket_dir.mkdir(mode=0o700, exist_ok=True)
            if _is_root():
                self._prepare_root()
            if not (self.pgdata / "PG_VERSION").exists():
                self._run(
                    [
                        _bin("initdb"),
                        "-D", str(self.pgdata),
                        "-U", "postgres",
                        "--auth-local=trust",
                        "--auth-host=reject",
                        "--encoding=UTF8",
                        "--locale=C",
                    ]
                )
            info = self.running()
            if info is None or info.status != "ready":
                if info is None:
                    self._start()
                self._wait_ready()
            self._ensure_database()
        finally:
            os.close(fd)
        return self.dsn()

    def _start(self) -> None:
        stale = self.pgdata / "postmaster.pid"
        if stale.exists() and self.running() is None:
            stale.unlink()
        options = (
            f"-h '' -k {self.socket_dir} -p {PORT} "
            "-c max_connections=200 -c shared_buffers=128MB"
        )
        self._run(
            [
                _bin("pg_ctl"),
                "-D", str(self.pgdata),
                "-w", "-t", "60",
                "-l", str(self.pgdata / "server.log"),
                "-o", options,
                "start",
            ]
        )

    def _wait_ready(self) -> None:
        self._run(
            [_bin("pg_isready"), "-h", str(self.socket_dir), "-p", str(PORT), "-t", "30"],
            timeout=40,
        )

    def _ensure_database(self) -> None:
        out = self._run(
            [
                _bin("psql"), "-h", str(self.socket_dir), "-p", str(PORT), "-U", "postgres",
                "-d", "postgres", "-tAc",
                f"SELECT 1 FROM pg_database WHERE datname = '{DBNAME}'",
            ]
        )
        if out.strip() != "1":
            self._run(
                [_bin("createdb"), "-h", str(self.socket_dir), "-p", str(PORT),
                 "-U", "postgres", DBNAME]
            )

    def stop(self, mode: str = "fast") -> None:
        """Stop the cluster if it runs."""
        if self.running() is None:
            return
        try:
            self._run([_bin("pg_ctl"), "-D", str(self.pgdata), "-m", mode, "-w", "stop"])
        except EmbeddedError:
            if self.running() is not None:
                raise

    def stop_unless_daemon(self, state_dir: str | Path, mode: str = "fast") -> bool:
        """
        Stop the cluster unless a daemon holds ``state_dir``'s lock; True if stopped.

        For tools that started the cluster themselves (smartyd-admin).  The
        check runs under the cluster lock that L{ensure_running} takes, so a
        daemon starting meanwhile either is seen here or starts the cluster
        again after we stopped it (it takes the state-dir lock first).
        """
        fd = self._lock()
        try:
            if state_dir_locked(state_dir):
                return False
            self.stop(mode)
            return True
        finally:
            os.close(fd)

    def start(self) -> None:
        """Start a stopped, initialised cluster (tests use it to simulate outages)."""
        if self.running() is None:
            self._start()
        self._wait_ready()


def state_dir_locked(state_dir: str | Path) -> bool:
    """Does a daemon hold ``state_dir``'s lock (see L{lock_state_dir}) right now?"""
    try:
        fd = os.open(Path(state_dir) / "smartyd.lock", os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES):
            return True
        raise
    finally:
        os.close(fd)  # also drops our probe lock
    return False


def lock_state_dir(state_dir: str | Path) -> int:
    """
    Take the daemon's exclusive lock on ``state_dir``; return the held fd.

    Raises L{EmbeddedError} naming the directory when another daemon holds it.
    """
    path = Path(state_dir)
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path / "smartyd.lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EAGAIN, errno.EACCES):
            raise EmbeddedError(
                f"another smartyd daemon is running with state dir {path.resolve()}"
            )
        raise
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd
