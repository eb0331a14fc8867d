#!/usr/bin/env bash
# End-to-end benchmark of the redis provider (issue 3): pre-load N noop jobs
# into a local redis-server, run goworker with 2 noop workers until the
# queue is drained and every job acked, report jobs/s. Baseline in the same
# run, on the same server: redis-benchmark, one client, one round trip per
# RPOP. Usage: scripts/bench-redis.sh [N] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."

N=${1:-200000}
RUNS=${2:-3}
BIN=${CARGO_TARGET_DIR:-target}/release/goworker
cargo build --release --quiet
command -v redis-server >/dev/null && command -v redis-benchmark >/dev/null || {
  echo "bench-redis: redis-server and redis-benchmark are needed (make deps)" >&2
  exit 1
}

work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo 6399)
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" >/dev/null &
redis_pid=$!
gw_pid=""
cleanup() {
  [ -n "$gw_pid" ] && kill "$gw_pid" 2>/dev/null || true
  kill "$redis_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
cli() { redis-cli -p "$port" "$@"; }
until cli ping >/dev/null 2>&1; do sleep 0.05; done

now() { date +%s.%N; }

cat >"$work/config.yaml" <<YAML
manager:
  stats_listen: null
providers:
  - type: redis
    url: redis://127.0.0.1:$port/0
workers:
  - type: noop
    count: 2
YAML

# The payloads, as RESP, for redis-cli --pipe.
awk -v n="$N" 'BEGIN {
  for (i = 0; i < n; i++) {
    p = "{\"type\":\"noop\",\"name\":\"bench-" i "\"}";
    printf "*3\r\n$5\r\nLPUSH\r\n$8\r\njob_list\r\n$%d\r\n%s\r\n", length(p), p;
  }
}' >"$work/load.resp"

echo "machine: $(nproc) cores; redis $(redis-server --version | awk '{print $3}'); N=$N; runs=$RUNS"
baseline=()
result=()
for run in $(seq 1 "$RUNS"); do
  cli flushall >/dev/null
  b=$(redis-benchmark -p "$port" -q -n "$N" -c 1 -P 1 -t rpop | tr '\r' '\n' | awk '/requests per second/ {print $2}' | tail -1)
  baseline+=("$b")
  cli flushall >/dev/null
  cli --pipe <"$work/load.resp" >/dev/null
  [ "$(cli llen job_list)" = "$N" ] || { echo "pre-load failed" >&2; exit 1; }
  t0=$(now)
  RUST_LOG=warn "$BIN" run -c "$work/config.yaml" >"$work/goworker.log" 2>&1 &
  gw_pid=$!
  while :; do
    left=$(cli eval "local n = redis.call('LLEN', KEYS[1]); for _, k in ipairs(redis.call('KEYS', KEYS[1] .. ':processing:*')) do n = n + redis.call('LLEN', k) end; return n" 1 job_list)
    [ "$left" = "0" ] && break
    sleep 0.01
  done
  t1=$(now)
  kill -TERM "$gw_pid"; wait "$gw_pid" || true; gw_pid=""
  dead=$(cli llen job_list:dead)
  [ "$dead" = "0" ] || { echo "bench-redis: $dead job(s) dead-lettered" >&2; exit 1; }
  rate=$(awk -v n="$N" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", n / (b - a) }')
  result+=("$rate")
  echo "run $run: goworker $rate jobs/s drained+acked; baseline redis-benchmark rpop -c1 -P1: $b ops/s"
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mb=$(median "${baseline[@]}")
mr=$(median "${result[@]}")
echo "median: goworker $mr jobs/s; baseline $mb ops/s; ratio $(awk -v a="$mr" -v b="$mb" 'BEGIN { printf "%.1f", a / b }')x"
