#!/usr/bin/env bash
# Stream-token check throughput: nginx secure_link_md5 (the C reference) vs
# smartyd's fast listener with workers = 1 and workers = 2, in one run.
#
#   bench/tokens.sh                       # uses python3 on PATH
#   PYTHON=/path/to/venv/bin/python DURATION=10s CONNECTIONS=50 bench/tokens.sh
#   SESSIONS=0 bench/tokens.sh            # without a concurrent-session limit
#   DURATION=1s WARMUP=0 CONNECTIONS=4 bench/tokens.sh   # a smoke run, figures meaningless
#
# Set-up is what an operator does under the default configuration: an account,
# a channel and a 1.00 tariff made with smartyd-admin, 100.00 paid to the
# account's customer through OSMP (as a terminal pays) before the tariff is
# assigned, so the built-in billing charges it and the account stays ACTIVE.
# A set-up step that fails stops the script with one line naming the step and
# what it answered.
#
# By default the bench account's tariff has a concurrent-session limit
# (SESSIONS=2), so every check also renews the session's lease (the token is
# the session: one viewer re-checking over 50 connections).
#
# Needs: nginx (with the secure_link module, as Debian's nginx-light has),
# wrk, taskset, curl, and smartyd installed for $PYTHON (twistd and
# smartyd-admin next to it).  Installs nothing.  Everything runs under a
# temporary directory (embedded PostgreSQL included) removed at the end.
#
# Layout, on a machine with at least 2 CPUs:
#   nginx, one worker ............ pinned to CPU 0;  wrk pinned to CPU 1
#   smartyd, workers = 1 ......... pinned to CPU 0;  wrk pinned to CPU 1
#   smartyd, workers = 2 ......... not pinned;       wrk not pinned
# (with only 2 CPUs the last run has wrk competing with the two workers).
set -euo pipefail

PYTHON=${PYTHON:-$(command -v python3 || true)}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}   # 0: no warm-up run
CONNECTIONS=${CONNECTIONS:-50}
SESSIONS=${SESSIONS:-2}

# -- requirements -------------------------------------------------------------------
missing=0
need() {
    if ! command -v "$1" >/dev/null 2>&1; then
        echo "missing: $1 -- $2" >&2
        missing=1
    fi
}
need nginx "Debian/Ubuntu: apt-get install -y nginx-light (or nginx)"
need wrk "Debian/Ubuntu: apt-get install -y wrk"
need taskset "Debian/Ubuntu: apt-get install -y util-linux"
need curl "Debian/Ubuntu: apt-get install -y curl"
if [ -z "$PYTHON" ] || ! "$PYTHON" -c "import smartyd" 2>/dev/null; then
    echo "missing: smartyd for ${PYTHON:-python3} -- pip install -e . (or set PYTHON=)" >&2
    missing=1
fi
BIN=$(dirname "${PYTHON:-/nonexistent}")
for tool in twistd smartyd-admin; do
    [ -x "$BIN/$tool" ] || { echo "missing: $BIN/$tool (install smartyd into that environment)" >&2; missing=1; }
done
if [ "$missing" = 1 ]; then
    echo "install the above and run again" >&2
    exit 1
fi
if ! nginx -V 2>&1 | grep -q -- --with-http_secure_link_module; then
    echo "nginx lacks the secure_link module (Debian's nginx-light has it)" >&2
    exit 1
fi
CPUS=$(nproc)
if [ "$CPUS" -lt 2 ]; then
    echo "need at least 2 CPUs (server on CPU 0, wrk on CPU 1); this machine has $CPUS" >&2
    exit 1
fi

# -- scaffolding ------------------------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/smartyd-bench.XXXXXX")
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
    "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local deadline=$((SECONDS + $1)) what=$2
    shift 2
    until "$@" >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "timed out waiting for $what" >&2
            exit 1
        fi
        sleep 0.2
    done
}

status_is() {  # status_is CODE URL
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$2")" = "$1" ]
}

to_ms() {  # wrk latency (850.00us, 2.10ms, 1.01s) -> milliseconds
    awk -v v="$1" 'BEGIN {
        if (v ~ /us$/) { sub(/us$/, "", v); printf "%.2f", v / 1000 }
        else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.2f", v }
        else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.2f", v * 1000 }
        else print "nan" }'
}

# run_wrk NAME PIN URL: prints "requests/s p99-ms", keeps the full output in $WORK
run_wrk() {
    local name=$1 pin=$2 url=$3 out="$WORK/wrk-$1.txt"
    local -a prefix=()
    [ -n "$pin" ] && prefix=(taskset -c "$pin")
    if [ "$WARMUP" != 0 ]; then
        "${prefix[@]}" wrk -t1 -c"$CONNECTIONS" -d"$WARMUP" "$url" >/dev/null
    fi
    "${prefix[@]}" wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency "$url" >"$out"
    if grep -q "Non-2xx" "$out"; then
        echo "$name: wrk saw non-2xx answers:" >&2
        grep "Non-2xx" "$out" >&2
        exit 1
    fi
    echo "$(awk '/^Requests\/sec:/ {printf "%d", $2}' "$out") $(to_ms "$(awk '$1 == "99%" {print $2}' "$out")")"
}

echo "smartyd stream-token benchmark: $CONNECTIONS keep-alive connections, $DURATION per run, $CPUS CPUs"
echo

# -- 1. nginx secure_link_md5 ------------------------------------------------------------
NGINX_PORT=$(free_port)
mkdir -p "$WORK/nginx"
cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
master_process on;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 100000000;
    client_body_temp_path $WORK/nginx; proxy_temp_path $WORK/nginx;
    fastcgi_temp_path $WORK/nginx; uwsgi_temp_path $WORK/nginx; scgi_temp_path $WORK/nginx;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location /ch1 {
            secure_link \$arg_md5,\$arg_expires;
            secure_link_md5 "\$secure_link_expires\$uri\$remote_addr bench-secret";
            if (\$secure_link = "") { return 403; }
            if (\$secure_link = "0") { return 410; }
            return 200;
        }
    }
}
EOF
taskset -c 0 nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" &
NGINX_PID=$!
PIDS+=("$NGINX_PID")
EXPIRES=$(( $(date +%s) + 3600 ))
MD5=$("$PYTHON" - "$EXPIRES" <<'EOF'
import base64, hashlib, sys
digest = hashlib.md5(f"{sys.argv[1]}/ch1127.0.0.1 bench-secret".encode()).digest()
print(base64.urlsafe_b64encode(digest).decode().rstrip("="))
EOF
)
NGINX_URL="http://127.0.0.1:$NGINX_PORT/ch1?md5=$MD5&expires=$EXPIRES"
wait_for 10 "nginx" status_is 200 "$NGINX_URL"
status_is 403 "http://127.0.0.1:$NGINX_PORT/ch1?md5=wrong&expires=$EXPIRES" \
    || { echo "nginx does not refuse a bad link" >&2; exit 1; }
echo "nginx secure_link_md5, 1 worker on CPU 0, wrk on CPU 1 ..."
result=$(run_wrk nginx 1 "$NGINX_URL")
read -r NGINX_RPS NGINX_P99 <<<"$result"
kill "$NGINX_PID"; wait "$NGINX_PID" 2>/dev/null || true

# -- 2. smartyd ------------------------------------------------------------------------------
HTTP_PORT=$(free_port)
FAST_PORT=$(free_port)
write_config() {  # write_config WORKERS
    cat >"$WORK/smartyd.toml" <<EOF
[http]
listen = "tcp:$HTTP_PORT:interface=127.0.0.1"
[state]
dir = "$WORK/var"
[log]
file = "$WORK/var/log/smartyd.jsonl"
level = "info"
[tokens]
secret = "bench-secret-for-tokens-sh"
ttl = 3600
bind_ip = true
fast_listen = "tcp:$FAST_PORT:interface=127.0.0.1"
workers = $1
EOF
}

DAEMON_PID=
start_daemon() {  # start_daemon WORKERS PIN
    write_config "$1"
    local -a prefix=()
    [ -n "$2" ] && prefix=(taskset -c "$2")
    "${prefix[@]}" "$BIN/twistd" -n --pidfile= smartyd --config "$WORK/smartyd.toml" \
        >"$WORK/twistd-$1.out" 2>&1 &
    DAEMON_PID=$!
    PIDS+=("$DAEMON_PID")
    wait_for 180 "smartyd to be healthy" status_is 200 "http://127.0.0.1:$HTTP_PORT/health"
}

stop_daemon() {
    kill "$DAEMON_PID"
    wait "$DAEMON_PID" 2>/dev/null || true
}

admin() {
    "$BIN/smartyd-admin" --config "$WORK/smartyd.toml" "$@"
}

# json_field STEP FIELD... < ANSWER: the FIELDs (space-separated) of set-up step STEP's
# JSON answer; when it is not such JSON (an error, a refusal), one line naming the step
# and its answer, and a non-zero exit.
json_field() {
    "$PYTHON" -c '
import json, sys
step, fields, text = sys.argv[1], sys.argv[2:], sys.stdin.read()
try:
    answer = json.loads(text)
    print(" ".join(str(answer[f]) for f in fields))
except (ValueError, KeyError, TypeError):
    one_line = " ".join(text.split())[:300] or "nothing"
    sys.exit(f"tokens.sh: set-up failed: {step} answered: {one_line}")
' "$@"
}

# osmp_pay PPC SUM: pay SUM to the payment code PPC as an OSMP terminal does (the
# default [osmp]: enabled, loopback allowed, user "osmp" with an empty password);
# anything but result 0 stops the script with one line.
osmp_pay() {
    local url answer
    url=$("$PYTHON" -c '
import sys, time
from smartyd.osmp import format_txn_date
port, code, amount = sys.argv[1:]
print(f"http://127.0.0.1:{port}/payments/osmp?command=pay&txn_id={int(time.time() * 1000)}"
      f"&account={code}&sum={amount}&txn_date={format_txn_date(time.time())}")
' "$HTTP_PORT" "$1" "$2")
    answer=$(curl -s -u osmp: -w " (HTTP %{http_code})" "$url" || true)
    case "$answer" in
        *"<result>0</result>"*) ;;
        *) echo "tokens.sh: set-up failed: OSMP pay of $2 to $1 answered:" \
                "$(echo "$answer" | tr -s ' \n' ' ' | cut -c1-300)" >&2
           exit 1 ;;
    esac
}

echo "smartyd, workers = 1 on CPU 0, wrk on CPU 1 ..."
start_daemon 1 0
ANSWER=$(admin account create --login bench --password bench-password 2>&1 \
    | json_field "smartyd-admin account create" id ppc)
read -r ACCOUNT PPC <<<"$ANSWER"
CHANNEL=$(admin channel create --name ch1 --url-mask 'http://127.0.0.1/ch1/index.m3u8?token=$token' 2>&1 \
    | json_field "smartyd-admin channel create" id)
LIMIT=()
[ "$SESSIONS" != 0 ] && LIMIT=(--sessions "$SESSIONS")
TARIFF=$(admin tariff create --name basic --price 1.00 --channel "$CHANNEL" "${LIMIT[@]}" 2>&1 \
    | json_field "smartyd-admin tariff create" id)
osmp_pay "$PPC" 100.00  # before the assignment: the built-in billing charges the tariff at once
admin tariff assign "$ACCOUNT" "$TARIFF" 2>&1 | json_field "smartyd-admin tariff assign" >/dev/null
STATE=$(admin account show "$ACCOUNT" 2>&1 | json_field "smartyd-admin account show" status_reason)
[ "$STATE" = ACTIVE ] \
    || { echo "tokens.sh: set-up failed: the account is $STATE after the tariff was assigned" >&2; exit 1; }
TOKEN=$(curl -s -d login=bench -d password=bench-password -d channel=ch1 -d ip=127.0.0.1 \
    "http://127.0.0.1:$HTTP_PORT/streams/url" | json_field "POST /streams/url" token)
FAST_URL="http://127.0.0.1:$FAST_PORT/streams/check?token=$TOKEN&name=ch1"
wait_for 10 "the fast listener to allow the token" status_is 200 "$FAST_URL"
status_is 403 "http://127.0.0.1:$FAST_PORT/streams/check?token=${TOKEN}x&name=ch1" \
    || { echo "smartyd does not refuse a bad token" >&2; exit 1; }
if [ "$SESSIONS" != 0 ]; then
    curl -s -D - -o /dev/null "$FAST_URL" | grep -qi "^X-Max-Sessions: $SESSIONS" \
        || { echo "smartyd does not apply the session limit" >&2; exit 1; }
    echo "  (session limit on: $SESSIONS per account, every check renews a lease)"
fi
result=$(run_wrk smartyd-1 1 "$FAST_URL")
read -r ONE_RPS ONE_P99 <<<"$result"
stop_daemon

echo "smartyd, workers = 2 (not pinned), wrk not pinned ..."
start_daemon 2 ""
workers_ready() {
    [ "$(grep -c '"fast worker [0-9]* ready' "$WORK/var/log/smartyd.jsonl" || true)" -ge 2 ]
}
wait_for 30 "two fast workers" workers_ready
wait_for 10 "the fast listener to allow the token" status_is 200 "$FAST_URL"
result=$(run_wrk smartyd-2 "" "$FAST_URL")
read -r TWO_RPS TWO_P99 <<<"$result"
stop_daemon

# -- report (the last line: the figures as one JSON object) ------------------------------------
"$PYTHON" - "$NGINX_RPS" "$NGINX_P99" "$ONE_RPS" "$ONE_P99" "$TWO_RPS" "$TWO_P99" <<'EOF'
import json
import sys

nginx_rps, nginx_p99, one_rps, one_p99, two_rps, two_p99 = map(float, sys.argv[1:])
print()
print(f"{'':34}{'requests/s':>12}{'p99 ms':>10}")
print(f"{'nginx secure_link_md5 (1 worker)':34}{nginx_rps:>12,.0f}{nginx_p99:>10.2f}")
print(f"{'smartyd fast, workers = 1':34}{one_rps:>12,.0f}{one_p99:>10.2f}")
print(f"{'smartyd fast, workers = 2':34}{two_rps:>12,.0f}{two_p99:>10.2f}")
print()
ratio, scale = one_rps / nginx_rps, two_rps / one_rps
ok1 = ratio >= 0.25 and one_p99 <= 5.0
ok2 = scale >= 1.6
print(f"workers = 1 vs nginx: {ratio:.2f}x, p99 {one_p99:.2f} ms"
      f"   (target >= 0.25x with p99 <= 5 ms: {'met' if ok1 else 'NOT met'})")
print(f"workers = 2 vs 1:     {scale:.2f}x"
      f"   (target >= 1.6x: {'met' if ok2 else 'NOT met'})")
print(json.dumps({"nginx_rps": nginx_rps, "nginx_p99_ms": nginx_p99,
                  "workers1_rps": one_rps, "workers1_p99_ms": one_p99,
                  "workers2_rps": two_rps, "workers2_p99_ms": two_p99,
                  "workers1_over_nginx": round(ratio, 3), "workers2_over_workers1": round(scale, 3)}))
EOF
