#!/usr/bin/env bash
# End-to-end benchmark of the redis provider (issue 3): pre-load N noop jobs
# into a local redis-server, run goworker with 2 noop workers until the
# queue is drained and every job acked, report jobs/s. Baseline in the same
# run, on the same server: redis-benchmark, one client, one round trip per
# RPOP. Usage: scripts/bench-redis.sh [N] [RUNS]
#
# Redis CPU per job is reported for every run: from `INFO cpu` (the
# server's user+sys CPU over the drain, everything included) and from
# `INFO commandstats` (usec of the commands goworker sends itself: EVALSHA,
# EVAL, EXEC, BLMOVE; the commands scripts and MULTI run are inside those).
#
# BASE_BIN=/path/to/other/goworker: each run drains with both binaries,
# alternating which goes first (A/B, B/A, ...), on the same server, and the
# medians of both and their ratio are printed.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${1:-200000}
RUNS=${2:-3}
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/goworker}
BASE_BIN=${BASE_BIN:-}
[ -n "${SKIP_BUILD:-}" ] || cargo build --release --quiet
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
cpu() { cli info cpu | tr -d '\r' | awk -F: '/^used_cpu_(user|sys):/ {s += $2} END {printf "%.6f", s}'; }
cmd_usec() {
  cli info commandstats | tr -d '\r' | awk -F'[:=,]' '
    /^cmdstat_(evalsha|eval|exec|blmove):/ {s += $5} END {printf "%.0f", s}'
}

# drain BIN: prints "jobs/s cpu_us_per_job cmd_us_per_job"
drain() {
  local bin=$1
  cli flushall >/dev/null
  cli --pipe <"$work/load.resp" >/dev/null
  [ "$(cli llen job_list)" = "$N" ] || { echo "pre-load failed" >&2; exit 1; }
  cli config resetstat >/dev/null
  local c0; c0=$(cpu)
  local t0; t0=$(now)
  RUST_LOG=warn "$bin" run -c "$work/config.yaml" >"$work/goworker.log" 2>&1 &
  gw_pid=$!
  while :; do
    left=$(cli eval "local n = redis.call('LLEN', KEYS[1]); for _, k in ipairs(redis.call('KEYS', KEYS[1] .. ':processing:*')) do n = n + redis.call('LLEN', k) end; return n" 1 job_list)
    [ "$left" = "0" ] && break
    sleep 0.01
  done
  local t1; t1=$(now)
  local c1; c1=$(cpu)
  local us; us=$(cmd_usec)
  kill -TERM "$gw_pid"; wait "$gw_pid" || true; gw_pid=""
  dead=$(cli llen job_list:dead)
  [ "$dead" = "0" ] || { echo "bench-redis: $dead job(s) dead-lettered" >&2; exit 1; }
  awk -v n="$N" -v a="$t0" -v b="$t1" -v c0="$c0" -v c1="$c1" -v us="$us" \
    'BEGIN { printf "%.0f %.2f %.2f", n / (b - a), (c1 - c0) * 1e6 / n, us / n }'
}

baseline=()
result=()
base=()
cpu_new=(); cpu_base=(); cmd_new=(); cmd_base=()
for run in $(seq 1 "$RUNS"); do
  cli flushall >/dev/null
  b=$(redis-benchmark -p "$port" -q -n "$N" -c 1 -P 1 -t rpop | tr '\r' '\n' | awk '/requests per second/ {print $2}' | tail -1)
  baseline+=("$b")
  if [ -n "$BASE_BIN" ] && [ $((run % 2)) -eq 0 ]; then
    read -r br bc bu <<<"$(drain "$BASE_BIN")"
    read -r r c u <<<"$(drain "$BIN")"
  else
    read -r r c u <<<"$(drain "$BIN")"
    [ -z "$BASE_BIN" ] || read -r br bc bu <<<"$(drain "$BASE_BIN")"
  fi
  result+=("$r"); cpu_new+=("$c"); cmd_new+=("$u")
  line="run $run: goworker $r jobs/s drained+acked (redis CPU $c us/job, commands $u us/job)"
  if [ -n "$BASE_BIN" ]; then
    base+=("$br"); cpu_base+=("$bc"); cmd_base+=("$bu")
    line="$line; base $br jobs/s (redis CPU $bc us/job, commands $bu us/job)"
  fi
  echo "$line; baseline redis-benchmark rpop -c1 -P1: $b ops/s"
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mb=$(median "${baseline[@]}")
mr=$(median "${result[@]}")
echo "median: goworker $mr jobs/s (redis CPU $(median "${cpu_new[@]}") us/job, commands $(median "${cmd_new[@]}") us/job); baseline $mb ops/s; ratio $(awk -v a="$mr" -v b="$mb" 'BEGIN { printf "%.1f", a / b }')x"
if [ -n "$BASE_BIN" ]; then
  mbase=$(median "${base[@]}")
  echo "median: base $mbase jobs/s (redis CPU $(median "${cpu_base[@]}") us/job, commands $(median "${cmd_base[@]}") us/job); goworker/base $(awk -v a="$mr" -v b="$mbase" 'BEGIN { printf "%.3f", a / b }')"
fi
