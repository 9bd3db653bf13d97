"""
``smartyd-admin import KIND FILE`` and ``smartyd-admin export KIND FILE``
(layouts: L{smartyd.transfer.layouts}, docs/IMPORT.md).

An import is one transaction: it commits only when every line is good (or
with ``--skip-bad``, the good ones), so a file with a bad line writes
nothing, and ``--dry-run`` runs the whole import -- every look-up, every
count -- and rolls it back.  Lines go to the database in batches of
L{BATCH}, each a few multi-row statements (L{smartyd.transfer.store}); the
file is read as it goes, never held whole.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from smartyd.admin.billing import moment
from smartyd.admin.errors import AdminError
from smartyd.admin.progress import Progress
from smartyd.billing import engine
from smartyd.db import Database
from smartyd.transfer import layouts, store

BATCH = 2000
# One import or export is one transaction: it may run far longer than a
# daemon's ([database] timeout).
TIMEOUT = 6 * 3600.0
# Bad lines named in the one-line error (all of them are in the JSON report).
NAMED = 5


class ImportRefused(AdminError):
    """Bad lines: nothing was written.  ``out`` is the report (printed on stdout too)."""

    def __init__(self, message: str, out: dict):
        super().__init__(message)
        self.out = out


def register(sub) -> dict:
    i = sub.add_parser("import", help="import customers, accounts, devices, subscriptions or"
                       " balances from CSV (docs/IMPORT.md)")
    i.add_argument("kind", choices=layouts.KINDS)
    i.add_argument("file")
    i.add_argument("--format", choices=layouts.FORMATS, default="smartyd",
                   help="the file's layout (default: smartyd, with a header row)")
    i.add_argument("--dry-run", action="store_true", help="check and count, write nothing")
    i.add_argument("--skip-bad", action="store_true",
                   help="import the good lines and list the bad ones (default: any bad line"
                   " and nothing is written)")
    e = sub.add_parser("export", help="export a kind to CSV in an import layout")
    e.add_argument("kind", choices=layouts.KINDS)
    e.add_argument("file")
    e.add_argument("--format", choices=layouts.FORMATS, default="smartyd")
    return {"import": cmd_import, "export": cmd_export}


class _Rollback(Exception):
    pass


async def cmd_import(db, args, cfg, reactor, app=None) -> dict:
    path = Path(args.file)
    if not path.is_file():
        raise AdminError(f"{path}: no such file")
    source = layouts.detect(str(path))
    report = {"kind": args.kind, "format": args.format, "file": str(path.resolve()),
              "encoding": source.encoding, "delimiter": source.delimiter,
              "dry_run": args.dry_run, "skip_bad": args.skip_bad}
    progress = Progress(f"import {args.kind}", source.lines)
    tally = store.Tally()
    bad: list[tuple[int, str]] = []
    counts = {"lines": 0, "duplicates": 0}
    settled = engine.RunResult()
    started = time.monotonic()

    async def settle(tx):
        # Opening balances move money as a payment does: a customer they credit
        # that the billing suspended for debt is settled at once (its suspended
        # periods charged, the DEBT lifted), as the daemon's payment hooks
        # settle a payer -- not at the charging job's next run.  Nothing is
        # charged in the full/reduced modes.
        nonlocal settled
        credited = tally.take_credited()
        if credited and cfg.billing.charges:
            debtors = await store.in_debt(tx, credited)
            if debtors:
                settled += await engine.settle(tx, cfg.billing, debtors, moment(None, reactor))

    async def run(tx):
        seen: dict[str, dict] = {}
        with source.open() as f:
            batch: list = []
            for item in layouts.read(f, source.delimiter, args.format, args.kind):
                if isinstance(item, layouts.BadRow):
                    bad.append((item.line, item.reason))
                    continue
                counts["lines"] += 1
                line, records = item
                kept = _dedupe(line, records, seen, bad, counts)
                if kept:
                    batch.append((line, kept))
                if len(batch) >= BATCH:
                    await _write(tx, batch, tally, bad)
                    await settle(tx)
                    progress.update(line)
                    batch = []
            if batch:
                await _write(tx, batch, tally, bad)
                await settle(tx)
        if args.dry_run or (bad and not args.skip_bad):
            raise _Rollback()

    big = Database(db.dsn, reactor, size=1, timeout=TIMEOUT)
    written = True
    try:
        await big.run(run)
    except _Rollback:
        written = False
    except layouts.LayoutError as e:
        raise AdminError(f"{path}: {e}")
    finally:
        big.close()
    progress.finish(source.lines, "rolled back" if not written else "done")
    bad.sort()
    report.update(lines=counts["lines"], duplicates=counts["duplicates"], **tally.to_json(),
                  bad=[{"line": line, "reason": reason} for line, reason in bad],
                  **({"settled": settled.to_json()} if args.kind == "balances" else {}),
                  written=written, seconds=round(time.monotonic() - started, 3))
    if bad and not args.skip_bad:
        named = "; ".join(f"line {line}: {reason}" for line, reason in bad[:NAMED])
        more = f"; and {len(bad) - NAMED} more" if len(bad) > NAMED else ""
        raise ImportRefused(f"{path}: {len(bad)} bad line{'s' * (len(bad) > 1)}, nothing"
                            f" written ({named}{more}); fix them, or --skip-bad", report)
    return report


def _dedupe(line, records, seen, bad, counts) -> list:
    """Drop records the file gave already; a line repeating a key with other data is bad."""
    kept = []
    for kind, record in records:
        key = layouts.key(kind, record)
        first = seen.setdefault(kind, {}).get(key)
        if first is None:
            kept.append((kind, record, key))
        elif first[1] != layouts.fingerprint(record):
            bad.append((line, f"{kind[:-1]} {_name(key)} differs from line {first[0]}"))
            return []
        else:
            counts["duplicates"] += 1
    for kind, record, key in kept:
        seen[kind][key] = (line, layouts.fingerprint(record))
    return [(kind, record) for kind, record, _ in kept]


def _name(key: tuple) -> str:
    return "/".join(str(k) for k in key if k is not None)


async def _write(tx, batch, tally, bad) -> None:
    """One batch, kind by kind in dependency order; a line bad at one kind drops its rest."""
    refused: set[int] = set()
    for line, reason in await store.precheck(tx, batch):
        if line not in refused:
            refused.add(line)
            bad.append((line, reason))
    for kind in ("customers", "accounts", "devices", "subscriptions", "balances"):
        items = [(line, record) for line, records in batch if line not in refused
                 for k, record in records if k == kind]
        if items:
            for line, reason in await store.WRITERS[kind](tx, items, tally):
                refused.add(line)
                bad.append((line, reason))


async def cmd_export(db, args, cfg, reactor, app=None) -> dict:
    target = Path(args.file).resolve()
    if not target.parent.is_dir():
        raise AdminError(f"{target.parent}: no such directory")
    if target.is_dir():
        raise AdminError(f"{target}: is a directory, give a file name")
    try:
        header = layouts.header(args.format, args.kind)
    except layouts.LayoutError as e:
        raise AdminError(str(e))
    tmp = target.with_name(f".{target.name}.{os.getpid()}.partial")
    progress = Progress(f"export {args.kind}")
    rows = 0
    started = time.monotonic()

    async def run(tx):
        nonlocal rows
        # One snapshot for the whole file, however many pages it takes.
        await tx.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        # Account exports hold password hashes: the owner's only.
        fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        with open(fd, "w", encoding="utf-8", newline="") as f:
            out = layouts.writer(f)
            if header is not None:
                out.writerow(header)
            async for page in store.export_rows(tx, args.format, args.kind):
                for row in page:
                    if args.format == "hydra" and args.kind == "devices":
                        row = (*row[:3], layouts.hydra_mac(row[3]), row[4])
                    out.writerow([layouts.cell(v) for v in row])
                rows += len(page)
                progress.update(rows)

    big = Database(db.dsn, reactor, size=1, timeout=TIMEOUT)
    try:
        await big.run(run)
        os.replace(tmp, target)
    finally:
        big.close()
        if tmp.exists():
            tmp.unlink()
    progress.finish(rows, "done")
    return {"kind": args.kind, "format": args.format, "file": str(target), "rows": rows,
            "seconds": round(time.monotonic() - started, 3)}
