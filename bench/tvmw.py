"""
TV Middleware API: devices log in, then zap.

Starts ``twistd -n smartyd`` on a temporary state dir (embedded PostgreSQL,
``[tvmw]`` with one shared client, the fast token listener in the daemon),
creates ``--devices`` accounts (one password hash shared by all, so the
set-up costs one scrypt) on a tariff of ``--channels`` channels, then:

  login   every device logs in (``/login/`` with abonement + password and its
          own device_uid), ``--login-concurrency`` at a time on keep-alive
          connections: bounded by the password hash (scrypt, in threads);
  zap     ``--concurrency`` devices, each on its own keep-alive connection,
          call ``/channel/url/?cid=…&redirect=0`` with their authkey for
          ``--seconds`` (random channels), each waiting for its answer;
  check   every token minted in the zap phase is checked once on the fast
          listener (``/streams/check?token=…&ip=…&name=…``): all must be 200.

Prints logins/s, zap answers/s with p50/p99 latency (targets: >= 2,000/s on
one daemon process, p99 <= 20 ms) and the check tally.

    python bench/tvmw.py [--devices 1000] [--concurrency 50] [--seconds 10]
                         [--channels 20] [--login-concurrency 16] [--pool-size 16]

Reuses the daemon runner and the HTTP/1.1 reader of ``bench/osmp.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
from collections import Counter
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import psycopg2

sys.path.insert(0, str(Path(__file__).resolve().parent))
import osmp as osmp_bench  # noqa: E402  (bench/osmp.py: the daemon runner, HTTP reader)

from smartyd.ledger import hash_password  # noqa: E402

CLIENT_ID, API_KEY = "1", "bench-tvmw-api-key"
PASSWORD = "bench-password"
MASK = "http://streamer.example.com/$channel/index.m3u8?token=$token&ip=$ip"


class Daemon(osmp_bench.Daemon):
    """bench/osmp.py's daemon with the device API and the fast listener."""

    def __init__(self, root: Path, pool_size: int):
        super().__init__(root, pool_size)
        self.fast_port = osmp_bench.free_port()
        text = self.config.read_text().replace(
            '[tokens]\nfast_listen = ""\n',
            f'[tokens]\nfast_listen = "tcp:{self.fast_port}:interface=127.0.0.1"\n')
        self.config.write_text(
            text + f'[tvmw]\nenabled = true\nclients = [{{ client_id = "{CLIENT_ID}",'
            f' api_key = "{API_KEY}", shared = true }}]\n')


def seed(dsn: str, devices: int, channels: int) -> list[int]:
    hashed = hash_password(PASSWORD)
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO channels (name, url_mask) SELECT 'ch' || g, %s"
                    " FROM generate_series(1, %s) g RETURNING id", (MASK, channels))
        channel_ids = [r[0] for r in cur.fetchall()]
        cur.execute("INSERT INTO tariffs (name, price) VALUES ('bench', 0) RETURNING id")
        tariff = cur.fetchone()[0]
        cur.execute("INSERT INTO tariff_channels (tariff_id, channel_id)"
                    " SELECT %s, unnest(%s::bigint[])", (tariff, channel_ids))
        cur.execute("INSERT INTO accounts (login, password_hash) SELECT 'dev' || g, %s"
                    " FROM generate_series(1, %s) g", (hashed, devices))
        cur.execute("INSERT INTO subscriptions (customer_id, account_id, tariff_id)"
                    " SELECT customer_id, id, %s FROM accounts", (tariff,))
    return channel_ids


async def get(reader, writer, path: str) -> bytes:
    writer.write(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: bench\r\n\r\n")
    return await osmp_bench.read_response(reader)


async def login_all(port: int, devices: int, concurrency: int) -> tuple[list[str], float]:
    queue = list(range(1, devices + 1))
    keys: dict[int, str] = {}
    loop = asyncio.get_running_loop()

    async def worker():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while queue:
                n = queue.pop()
                query = urlencode({"abonement": f"dev{n}", "password": PASSWORD,
                                   "client_id": CLIENT_ID, "api_key": API_KEY,
                                   "device": "smarttv", "device_uid": f"bench-box-{n}"})
                answer = json.loads(await get(reader, writer, "/tvmiddleware/api/login/?" + query))
                if answer["error"] != 0:
                    raise RuntimeError(f"login of dev{n}: {answer}")
                keys[n] = answer["authkey"]
        finally:
            writer.close()

    started = loop.time()
    await asyncio.gather(*[worker() for _ in range(concurrency)])
    return [keys[n] for n in sorted(keys)], loop.time() - started


async def zap(port: int, authkeys: list[str], channel_ids: list[int], concurrency: int,
              seconds: float):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    latencies: list[float] = []
    errors: Counter = Counter()
    minted: list[tuple[str, str, str]] = []
    names = {cid: f"ch{i}" for i, cid in enumerate(channel_ids, start=1)}

    async def device(authkey: str):
        # Requests built once, answers kept raw: the load generator shares the
        # machine with the daemon, so it does as little per request as it can.
        requests = [(cid, b"GET /tvmiddleware/api/channel/url/?" + urlencode(
            {"cid": cid, "redirect": 0, "authkey": authkey, "client_id": CLIENT_ID,
             "device": "smarttv"}).encode() + b" HTTP/1.1\r\nHost: bench\r\n\r\n")
            for cid in channel_ids]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while loop.time() < deadline:
                cid, request = random.choice(requests)
                started = loop.time()
                writer.write(request)
                body = await osmp_bench.read_response(reader)
                latencies.append(loop.time() - started)
                answers.append((cid, body))
        finally:
            writer.close()

    answers: list[tuple[int, bytes]] = []
    started = loop.time()
    await asyncio.gather(*[device(k) for k in random.sample(authkeys, concurrency)])
    took = loop.time() - started
    for cid, body in answers:
        answer = json.loads(body)
        errors[answer["error"]] += 1
        if answer["error"] == 0:
            q = parse_qs(urlsplit(answer["uri"]).query)
            minted.append((q["token"][0], q["ip"][0], names[cid]))
    return latencies, errors, minted, took


async def check_all(fast_port: int, minted: list, concurrency: int) -> Counter:
    statuses: Counter = Counter()
    queue = list(minted)

    async def checker():
        reader, writer = await asyncio.open_connection("127.0.0.1", fast_port)
        try:
            while queue:
                token, ip, name = queue.pop()
                writer.write(f"GET /streams/check?token={token}&ip={ip}&name={name} HTTP/1.1\r\n"
                             f"Host: bench\r\n\r\n".encode())
                head = await reader.readuntil(b"\r\n\r\n")
                statuses[int(head.split(b" ", 2)[1])] += 1
                lower = head.lower()
                length = int(lower.split(b"content-length:")[1].split(b"\r\n")[0]) \
                    if b"content-length:" in lower else 0
                if length:
                    await reader.readexactly(length)
        finally:
            writer.close()

    await asyncio.gather(*[checker() for _ in range(min(concurrency, max(len(queue), 1)))])
    return statuses


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentiles(latencies: list) -> tuple[float, float]:
    q = statistics.quantiles(latencies, n=100)
    return q[49] * 1000, q[98] * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=50, help="zapping devices at once")
    p.add_argument("--seconds", type=float, default=10.0, help="of zapping")
    p.add_argument("--channels", type=int, default=20)
    p.add_argument("--login-concurrency", type=int, default=16)
    p.add_argument("--pool-size", type=int, default=16, help="[database] pool_size")
    p.add_argument("--keep", action="store_true", help="keep the state dir")
    args = p.parse_args()
    if args.concurrency > args.devices:
        raise SystemExit("--concurrency must not exceed --devices")

    root = Path(tempfile.mkdtemp(prefix="smartyd-bench-"))
    daemon = Daemon(root / "smartyd", args.pool_size)
    try:
        print(f"starting smartyd (state {daemon.state}) ...", flush=True)
        daemon.start()
        channel_ids = seed(daemon.dsn(), args.devices, args.channels)
        authkeys, took_login = asyncio.run(login_all(daemon.port, args.devices,
                                                     args.login_concurrency))
        took = took_login
        print(f"login    {len(authkeys)} devices in {took:.1f} s: {len(authkeys) / took:.1f}"
              f" logins/s (scrypt-bound; {args.login_concurrency} at a time)", flush=True)
        # warm-up, then the measured run
        asyncio.run(zap(daemon.port, authkeys, channel_ids, args.concurrency, 1.0))
        cpu = cpu_seconds(daemon.proc.pid)
        latencies, errors, minted, took = asyncio.run(
            zap(daemon.port, authkeys, channel_ids, args.concurrency, args.seconds))
        cpu = cpu_seconds(daemon.proc.pid) - cpu
        rate = len(latencies) / took
        p50, p99 = percentiles(latencies)
        print(f"zap      {len(latencies)} ChannelUrl answers in {took:.1f} s: {rate:.1f}"
              f" answers/s, p50 {p50:.1f} ms, p99 {p99:.1f} ms ({args.concurrency} devices;"
              f" errors {dict(errors)})", flush=True)
        per = cpu / max(len(latencies), 1)
        print(f"         daemon CPU {cpu:.2f} s: {per * 1e6:.0f} us an answer, so at most"
              f" {1 / per if per else 0:.0f} answers/s on one free core", flush=True)
        statuses = asyncio.run(check_all(daemon.fast_port, minted, args.concurrency))
        print(f"check    {len(minted)} minted tokens on the fast listener: {dict(statuses)}",
              flush=True)
        print()
        print(f"machine          {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f};"
              f" {args.devices} devices, {args.channels} channels; pool_size {args.pool_size}")
        ok_rate, ok_p99 = rate >= 2000, p99 <= 20
        all_200 = statuses.get(200, 0) == len(minted) and errors.get(0, 0) == len(latencies)
        print(f"answers/s        {rate:8.1f}  (target >= 2000: {'ok' if ok_rate else 'MISSED'})")
        print(f"p99              {p99:8.1f} ms (target <= 20: {'ok' if ok_p99 else 'MISSED'})")
        print(f"tokens 200       {'all' if all_200 else 'NOT ALL'} ({statuses.get(200, 0)}"
              f" of {len(minted)})")
        print(json.dumps({
            "devices": len(authkeys), "logins_per_s": round(len(authkeys) / took_login, 1),
            "answers": len(latencies), "answers_per_s": round(rate, 1),
            "p50_ms": round(p50, 2), "p99_ms": round(p99, 2),
            "cpu_us_per_answer": round(per * 1e6, 1), "tokens_checked": len(minted),
            "tokens_200": statuses.get(200, 0), "all_200": all_200,
            "load_average": round(os.getloadavg()[0], 1)}), flush=True)
        if not all_200:
            sys.exit(1)
    finally:
        daemon.stop()
        if args.keep:
            print(f"state kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
