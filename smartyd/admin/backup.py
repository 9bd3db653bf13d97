"""
``smartyd-admin backup FILE`` / ``smartyd-admin restore FILE``.

A backup is PostgreSQL's own ``pg_dump`` in its custom format: one
consistent snapshot (a repeatable-read transaction), taken beside a running
daemon without stopping it -- payments committed before the snapshot are in
it whole, those after it are not in it at all.  The binaries are the ones the
embedded cluster runs (the ``pgserver`` wheel); with ``[database] dsn`` set,
the newer of the ``pg_dump`` on PATH and the wheel's (``pg_dump`` reads
servers up to its own major version).

A restore goes into an empty database only -- the embedded cluster of an
empty (or new) state dir, or an empty server database -- in one transaction
(``--single-transaction --exit-on-error``): it either restores all of it or
nothing.  It refuses a database holding any table, and a state dir a daemon
runs on.

The tools run as child processes of the CLI's reactor (spawnProcess), never
blocking it; their ``--verbose`` lines drive the progress on the terminal.
The password of a server DSN reaches them in ``PGPASSWORD``, never on a
command line.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

from psycopg2.extensions import make_dsn, parse_dsn
from twisted.internet import protocol
from twisted.internet.defer import Deferred
from twisted.internet.utils import getProcessOutputAndValue

from smartyd.admin.errors import AdminError
from smartyd.admin.progress import Progress
from smartyd.db import embedded
from smartyd.db.migrate import current_version


def register(sub) -> dict:
    b = sub.add_parser("backup", help="a consistent snapshot of the database (pg_dump -Fc)")
    b.add_argument("file", help="the backup file to write (replaced atomically)")
    r = sub.add_parser("restore", help="restore a backup into an empty state dir / database")
    r.add_argument("file", help="a file written by smartyd-admin backup")
    return {"backup": cmd_backup, "restore": cmd_restore}


# Commands run before (and without) the schema migration: a backup dumps what
# is there; a restore needs the database empty.
NO_MIGRATE = ("backup", "restore")


# -- the binaries ------------------------------------------------------------------------------
async def _version(path: str) -> tuple[int, ...]:
    out, _err, code = await getProcessOutputAndValue(path, ("--version",), env=os.environ)
    m = re.search(rb"(\d+)(?:\.(\d+))?", out)
    if code != 0 or m is None:
        return ()
    return tuple(int(g) for g in m.groups() if g is not None)


async def tool(name: str, cfg) -> str:
    """The ``pg_dump``/``pg_restore`` to run for this configuration."""
    candidates = []
    try:
        candidates.append(embedded._bin(name))
    except embedded.EmbeddedError:
        if not cfg.database.dsn:
            raise
    if cfg.database.dsn:
        found = shutil.which(name)
        if found:
            candidates.append(found)
    best, best_version = None, ()
    for path in candidates:
        version = await _version(path)
        if version and version > best_version:
            best, best_version = path, version
    if best is None:
        raise AdminError(f"no {name} found (install the PostgreSQL client tools)")
    return best


def _conninfo(dsn: str) -> tuple[str, dict]:
    """The DSN without its password, and the environment carrying it."""
    params = parse_dsn(dsn)
    env = dict(os.environ)
    password = params.pop("password", None)
    if password is not None:
        env["PGPASSWORD"] = password
    return make_dsn(**params), env


# -- running one tool --------------------------------------------------------------------------
class _Tool(protocol.ProcessProtocol):
    """Collect stderr lines (each passed to ``on_line``); fire with the exit code."""

    def __init__(self, on_line):
        self.on_line = on_line
        self.done: Deferred = Deferred()
        self.lines: list[str] = []
        self._partial = b""

    def outReceived(self, data: bytes) -> None:
        pass

    def errReceived(self, data: bytes) -> None:
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8", "replace").strip()
            if line:
                self.lines.append(line)
                del self.lines[:-50]
                self.on_line(line)

    def processEnded(self, reason) -> None:
        self.done.callback(reason.value.exitCode)


async def _run(reactor, path: str, args: list[str], env: dict, on_line) -> None:
    proto = _Tool(on_line)
    reactor.spawnProcess(proto, path, [path, *args], env=env, childFDs={0: "w", 1: "r", 2: "r"})
    code = await proto.done
    if code != 0:
        errors = [l for l in proto.lines if "error" in l.lower()] or proto.lines
        detail = errors[-1] if errors else f"exit status {code}"
        raise AdminError(f"{Path(path).name} failed: {detail}")


async def _table_count(db) -> int:
    return await db.fetchval(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
        " AND n.nspname NOT LIKE 'pg\\_%%'"
    )


def _table_progress(progress: Progress, marker: str):
    seen = [0]

    def on_line(line: str) -> None:
        m = re.search(marker + r' "?([^"]+)"?', line)
        if m:
            seen[0] += 1
            progress.update(seen[0], m.group(1))

    return on_line, seen


# -- the commands ------------------------------------------------------------------------------
async def cmd_backup(db, args, cfg, reactor, app=None) -> dict:
    target = Path(args.file).resolve()
    if not target.parent.is_dir():
        raise AdminError(f"{target.parent}: no such directory")
    if target.is_dir():
        raise AdminError(f"{target}: is a directory, give a file name")
    pg_dump = await tool("pg_dump", cfg)
    conninfo, env = _conninfo(db.dsn)
    tables = await _table_count(db)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.partial")
    # The dump holds customers' data and password hashes: the owner's only.
    os.close(os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600))
    progress = Progress("backup", tables)
    on_line, seen = _table_progress(progress, "dumping contents of table")
    started = time.monotonic()
    try:
        await _run(reactor, pg_dump, ["--format=custom", "--verbose", "--no-password",
                                      f"--file={tmp}", f"--dbname={conninfo}"], env, on_line)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    seconds = time.monotonic() - started
    progress.finish(seen[0], "done")
    return {"file": str(target), "bytes": target.stat().st_size, "tables": seen[0],
            "seconds": round(seconds, 3), "pg_dump": pg_dump}


async def cmd_restore(db, args, cfg, reactor, app=None) -> dict:
    source = Path(args.file).resolve()
    if not source.is_file():
        raise AdminError(f"{source}: no such backup file")
    if not cfg.database.dsn and embedded.state_dir_locked(cfg.state.dir):
        raise AdminError(f"a daemon is running on state dir {Path(cfg.state.dir).resolve()}:"
                         " stop it, and restore into an empty state dir")
    tables = await _table_count(db)
    if tables:
        where = ("state dir " + str(Path(cfg.state.dir).resolve())) if not cfg.database.dsn \
            else "database"
        raise AdminError(f"the {where} is not empty ({tables} tables): restore goes into an"
                         " empty state dir or an empty database only")
    pg_restore = await tool("pg_restore", cfg)
    conninfo, env = _conninfo(db.dsn)
    listing, err, code = await getProcessOutputAndValue(pg_restore, ("--list", str(source)),
                                                        env=env)
    if code != 0:
        detail = err.decode("utf-8", "replace").strip().splitlines()
        raise AdminError(f"{source}: not a backup pg_restore can read"
                         f" ({detail[-1] if detail else code})")
    total = sum(1 for l in listing.splitlines() if b" TABLE DATA " in l)
    progress = Progress("restore", total)
    on_line, seen = _table_progress(progress, "processing data for table")
    started = time.monotonic()
    await _run(reactor, pg_restore, ["--verbose", "--no-password", "--no-owner",
                                     "--no-privileges", "--single-transaction", "--exit-on-error",
                                     f"--dbname={conninfo}", str(source)], env, on_line)
    seconds = time.monotonic() - started
    progress.finish(seen[0], "done")
    return {"file": str(source), "tables": seen[0], "seconds": round(seconds, 3),
            "schema_version": await current_version(db), "pg_restore": pg_restore}
