#!/usr/bin/env bash
# Load benchmarks of the proxy, as reported in BENCHMARKS.md. Bounded in time; stops by itself.
#   bench/run.sh [hold|throughput|api|api-cost|storage|profile|farm|fanout|heap|soak|tls|all]
# throughput: shares/s and proxy CPU per share, one submit per write (1,000 and 2,000
# connections) and at max rate (50 pipelining connections, THROUGHPUT_BURST submits per write).
# tls: what TLS costs, plain port against TLS port of one proxy, alternating (TLS_ROUNDS, 2):
# proxy CPU and RSS per held connection (TLS_CONNECTIONS, 5000, opened at once), connect +
# handshake time, and submit latency and CPU per share at 1,000 miners x 10 shares/s.
# profile: perf (Debian linux-perf) records the proxy under 10,000 miners; prints self time
# by function and by thread; PROFILE_KEEP=<file> keeps perf.data for `perf report -i <file>`;
# PROFILE_LOAD=throughput: 1,000 connections at 20,000 shares/s (0.1 % forwarded, storage off);
# PROFILE_RATE (shares/s of the farm load, 2000: 0.2 per miner; 10000 for 1 per miner).
# soak: 10,000 miners (SOAK_MINERS) at 0.2 shares/s for 600 s (SOAK_SECONDS); RSS, CPU and the
# proxy's error counters every 30 s, and the RSS slope from a quarter of the run on.
# heap: dhat (the proxy built with --features dhat-heap) under 10,000 miners (HEAP_MINERS) at
# 0.2 shares/s (HEAP_RATE), storage on; prints the allocation sites holding the most bytes at the peak.
# farm: the same miners straight to the pool and through the proxy (SQLite storage) in one
# run, and the ratios: submit p99, notify fan-out p99, proxy CPU and RSS per miner.
# FARM_MINERS (list, 10000), FARM_RATES (shares/s per miner, list, "0.2 1"), FARM_RAMP (10),
# FARM_DURATION (60), FARM_JOB_INTERVAL (5), FARM_BASELINE (another loka-proxy binary, e.g. a
# build of an earlier commit: an arm of its own in the same run), FARM_STORAGE_OFF=1 (an arm
# of the proxy with storage off too: what the share store costs), FARM_ROUNDS (1: the arms
# run this many times in turn, and the medians over the rounds are compared too), BENCH_OUT
# (copy the JSON lines there, for bench/plot.py).
# fanout: 10,000 held miners (no shares), a job every second, rounds of direct then proxy (or
# FANOUT_BASELINE, another build, then this one): each job's fan-out and the sender's CPU;
# the per-notify cost without the share path's noise.
# storage: STORAGE_RATE (shares/s, 10000), STORAGE_REPEAT (alternating off/on runs, 1),
# STORAGE_CONTROL=1 (add storage-off runs beside a PostgreSQL insert load and beside a
# SCHED_IDLE busy loop), STORAGE_FLUSH (flush_interval), STORAGE_PG_NICE / STORAGE_PG_IDLE /
# STORAGE_WRITER_IDLE (lower PostgreSQL's or the writer thread's priority; diagnosis),
# STORAGE_WRITER_NICE=N (storage.writer_nice, default 10; 0 runs the writer at the
# sessions' priority),
# STORAGE_DATABASE_URL (a scratch PostgreSQL elsewhere instead of a throwaway one here),
# STORAGE_PIN=1 (the throwaway PostgreSQL on the last core, everything else, the whole
# proxy included, on the others, in every arm: a database with cores of its own;
# STORAGE_PIN=writer moves the proxy's writer thread to the database's core too),
# STORAGE_TIMELINE=1 (replies per 10 ms slot, the slow ones folded by flush phase and lined
# up with PostgreSQL's log of checkpoints, autovacuum and slow statements: bench/timeline.py).
# Builds release binaries, starts a MockPool (loka-bench --serve-pool) and the proxy on
# 127.0.0.1, runs loka-bench against them, prints one JSON line per measurement.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/loka-stratum/target}"
cargo build --release -q -p loka-proxy -p loka-sim
B="$CARGO_TARGET_DIR/release/loka-bench"
P="$CARGO_TARGET_DIR/release/loka-proxy"
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
ulimit -n 20000 || true
# Core sets: empty (no pinning) unless STORAGE_PIN=1 splits the machine for the storage runs.
# `taskset` execs its command, so $! stays the pid of the process itself.
pin=() db_cpus=""

start_pool() { # $1 port $2 difficulty $3 job interval
  "${pin[@]}" "$B" --serve-pool "127.0.0.1:$1" --pool-difficulty "$2" --pool-job-interval "$3" --duration 900 >"$work/pool-$1.json" 2>/dev/null &
  pool_pid=$!
  pids+=($!)
  for _ in $(seq 50); do grep -q pool_addr "$work/pool-$1.json" 2>/dev/null && return; sleep 0.1; done
  echo "pool did not start" >&2; exit 1
}

start_proxy() { # $1 pool port $2 miner difficulty $3 api(true/false) [$4 database URL, or "embedded" for SQLite: storage on] [$5 acknowledge]
  local storage_on=false db_url="${4:-}"
  [ -n "$db_url" ] && storage_on=true
  [ "$db_url" = embedded ] && db_url=""
  cat >"$work/proxy.toml" <<T
[server]
bind_address = "127.0.0.1"
port = 13333
max_connections = 25000
handshake_timeout = "120s"
[api]
enabled = $3
bind_address = "127.0.0.1"
port = 19090
[rate_limiting]
enabled = false
[vardiff]
enabled = false
initial_difficulty = $2
min_difficulty = $2
[[pools]]
name = "bench-pool"
host = "127.0.0.1"
port = $1
username = "bench"
password = "x"
[storage]
enabled = $storage_on
database_url = "$db_url"
sqlite_path = "$work/loka.db"
acknowledge = "${5:-validated}"
flush_interval = "${STORAGE_FLUSH:-100ms}"
writer_nice = ${STORAGE_WRITER_NICE:-10}
[logging]
level = "${PROXY_LOG_LEVEL:-warn}"
T
  if [ -n "${PROXY_TLS_DIR:-}" ]; then
    cat >>"$work/proxy.toml" <<T
[server.tls]
port = 13343
cert_file = "$PROXY_TLS_DIR/tls.crt"
key_file = "$PROXY_TLS_DIR/tls.key"
handshake_timeout = "60s"
T
  fi
  # As the image runs it (Dockerfile: ENV MALLOC_ARENA_MAX=2); MALLOC_ARENA_MAX= for glibc's default.
  MALLOC_ARENA_MAX="${MALLOC_ARENA_MAX-2}" "${pin[@]}" "${PROXY_BIN:-$P}" --config "$work/proxy.toml" >"$work/proxy.log" 2>&1 &
  proxy_pid=$!
  pids+=($proxy_pid)
  for _ in $(seq 100); do
    kill -0 "$proxy_pid" 2>/dev/null || { echo "proxy exited at start" >&2; cat "$work/proxy.log" >&2; exit 1; }
    (echo >/dev/tcp/127.0.0.1/13333) 2>/dev/null && return
    sleep 0.1
  done
  echo "proxy did not start" >&2; cat "$work/proxy.log" >&2; exit 1
}

rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
cpu_per_share() { # $1 label $2 ticks before $3 ticks after $4 bench json
  python3 - "$1" "$2" "$3" "$4" "$(getconf CLK_TCK)" <<'PY'
import json, sys
label, t0, t1, path, hz = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
d = json.load(open(path))
cpu_s = (t1 - t0) / hz
shares = max(d["submitted"], 1)
us = cpu_s * 1e6 / shares
print(json.dumps({"scenario": label, "proxy_cpu_seconds": round(cpu_s, 2), "shares": shares, "proxy_cpu_us_per_share": round(us, 2), "projected_shares_per_sec_on_2_cores": round(2e6 / us)}))
PY
}

summary() { python3 - "$@" <<'PY'
import json, sys
label, path = sys.argv[1], sys.argv[2]
d = json.load(open(path))
keep = ["connections_established", "connect_errors", "duration_s", "submitted", "accepted", "accepted_per_sec", "rejected", "latency_us", "notify_fanout_ms", "errors"]
print(json.dumps({"scenario": label, **{k: d.get(k) for k in keep if k in d}}))
PY
}

histogram() { # $1 label $2 metric $3 unit (ms|us) $4 name of the count, then quantiles as name=q
  # Quantiles of one of the proxy's own histograms, as the upper bounds of their buckets.
  python3 - "$@" <<'PY'
import json, sys, urllib.request
label, metric, unit, count_name, *quantiles = sys.argv[1:]
m = json.load(urllib.request.urlopen("http://127.0.0.1:19090/metrics/json"))
h = next(iter(m["histograms"][metric].values()))  # one series: "all" or its single label set
count = h["count"]
b = sorted((float(k), v) for k, v in h["buckets"].items())
scale = {"ms": 1e3, "us": 1e6}[unit]
def q(x):
    for bound, cum in b:
        if cum >= x * count:
            return bound * scale
    return float("inf")
out = {"scenario": label, count_name: count}
for spec in quantiles:
    name, x = spec.split("=")
    out[f"{name}_{unit}_at_most"] = q(float(x))
print(json.dumps(out))
PY
}

hold() {
  start_pool 13334 0.000000001 5
  start_proxy 13334 0.000000001 true
  local before; before=$(rss_kib "$proxy_pid")
  "$B" --target 127.0.0.1:13333 --hold --connections 19900 --processes 2 --ramp 10 --duration 30 >"$work/hold.json" 2>/dev/null &
  local b=$!
  sleep 25
  local during; during=$(rss_kib "$proxy_pid")
  local conns; conns=$(ss -Htn state established '( sport = :13333 )' | wc -l)
  histogram "proxy-side fan-out to $conns miners (bucket upper bounds)" \
    loka_stratum_notify_delay_seconds ms notifies_written p50=0.5 p99=0.99 p100=1
  wait "$b"
  summary "hold 19,900 (fan-out measured per process of 9,950)" "$work/hold.json"
  python3 -c "import json; print(json.dumps({'scenario': 'memory', 'connections': $conns, 'rss_before_kib': $before, 'rss_with_connections_kib': $during, 'bytes_per_connection': round(($during-$before)*1024/max($conns,1))}))"
  kill "$proxy_pid"; wait "$proxy_pid" 2>/dev/null || true
}

proxy_load() { # $1 label $2 json name, then loka-bench's load arguments: run them against the
  # proxy ($proxy_pid), print the summary and the proxy's CPU per share
  local label=$1 json="$work/$2.json" t0 t1
  shift 2
  t0=$(cpu_ticks "$proxy_pid")
  "$B" --target 127.0.0.1:13333 "$@" >"$json" 2>/dev/null
  t1=$(cpu_ticks "$proxy_pid")
  summary "$label" "$json"
  cpu_per_share "proxy CPU, $label" "$t0" "$t1" "$json"
}

throughput() {
  # Max rate: 50 pipelining connections (bursts of THROUGHPUT_BURST, 10, submits per write)
  # offered 1,000,000 shares/s.
  local burst="${THROUGHPUT_BURST:-10}"
  local max=(--connections 50 --rate 1000000 --burst "$burst" --duration 15 --ramp 1)
  start_pool 13335 0.000000001 30
  # Baseline: straight to the pool.
  "$B" --target 127.0.0.1:13335 --connections 1000 --rate 20000 --duration 20 --ramp 2 >"$work/direct.json" 2>/dev/null
  summary "direct-to-pool 1000 conns @20k/s" "$work/direct.json"
  "$B" --target 127.0.0.1:13335 "${max[@]}" >"$work/max-direct.json" 2>/dev/null
  summary "max rate direct-to-pool: 50 conns, bursts of $burst submits, offered 1M/s" "$work/max-direct.json"
  start_proxy 13335 0.000000001 false
  proxy_load "via-proxy 1000 conns @20k/s (every share validated and forwarded)" proxied \
    --connections 1000 --rate 20000 --duration 20 --ramp 2
  "$B" --target 127.0.0.1:13333 --connections 2000 --rate 60000 --duration 15 --ramp 2 >"$work/max.json" 2>/dev/null
  summary "via-proxy 2000 conns offered 60k/s (saturation, 3 processes on 2 cores)" "$work/max.json"
  proxy_load "max rate via-proxy: 50 conns, bursts of $burst submits, offered 1M/s, every share forwarded" \
    max-proxy "${max[@]}"
  kill "$proxy_pid"; wait "$proxy_pid" 2>/dev/null || true
  # Aggregate as deployed: the pool's difficulty is 1000× the miners', so ~0.1% is forwarded.
  start_pool 13337 0.000001 30
  start_proxy 13337 0.000000001 false
  proxy_load "via-proxy 1000 conns @20k/s, pool difficulty 1000x (0.1% forwarded)" agg \
    --connections 1000 --rate 20000 --duration 20 --ramp 2
  proxy_load "max rate via-proxy: 50 conns, bursts of $burst submits, offered 1M/s, 0.1% forwarded" \
    max-agg "${max[@]}"
  kill "$proxy_pid"; wait "$proxy_pid" 2>/dev/null || true
}

api() {
  start_pool 13336 0.000000001 5
  start_proxy 13336 0.000000001 true
  "$B" --target 127.0.0.1:13333 --connections 10000 --rate 5000 --duration 60 --ramp 10 >"$work/api-load.json" 2>/dev/null &
  local b=$!
  sleep 20
  for path in /stats/workers /metrics/prometheus; do
    python3 - "$path" <<'PY'
import json, sys, time, urllib.request
path = sys.argv[1]
times = []
size = 0
for _ in range(100):
    t = time.perf_counter()
    with urllib.request.urlopen("http://127.0.0.1:19090" + path) as r:
        size = len(r.read())
    times.append((time.perf_counter() - t) * 1000)
    time.sleep(0.05)
times.sort()
print(json.dumps({"scenario": "api " + path + " with 10k miners submitting 5k/s", "requests": len(times), "bytes": size,
                  "p50_ms": round(times[49], 2), "p99_ms": round(times[98], 2), "max_ms": round(times[-1], 2)}))
PY
  done
  wait "$b"
  summary "10k miners @5k/s while the API was scraped" "$work/api-load.json"
  kill "$proxy_pid"; wait "$proxy_pid" 2>/dev/null || true
}

api_cost() { # what scraping and streaming cost the Stratum side
  start_pool 13339 0.000001 30
  start_proxy 13339 0.000000001 true
  "$B" --target 127.0.0.1:13333 --connections 1000 --rate 10000 --duration 20 --ramp 2 >"$work/quiet.json" 2>/dev/null
  summary "10k shares/s, no scrapes" "$work/quiet.json"
  ( for _ in $(seq 25); do curl -s -o /dev/null http://127.0.0.1:19090/metrics/prometheus; sleep 1; done ) &
  local scraper=$!
  "$B" --target 127.0.0.1:13333 --connections 1000 --rate 10000 --duration 20 --ramp 2 >"$work/scraped.json" 2>/dev/null
  kill "$scraper" 2>/dev/null || true
  summary "10k shares/s, /metrics/prometheus scraped every second" "$work/scraped.json"
  # 100 stream subscribers (SSE, 5 s snapshots) on an otherwise idle proxy: CPU over 30 s.
  local t0 t1 subs=()
  t0=$(cpu_ticks "$proxy_pid"); sleep 30; t1=$(cpu_ticks "$proxy_pid")
  local idle=$((t1 - t0))
  for _ in $(seq 100); do curl -sN http://127.0.0.1:19090/metrics/events >/dev/null 2>&1 & subs+=($!); done
  sleep 2
  t0=$(cpu_ticks "$proxy_pid"); sleep 30; t1=$(cpu_ticks "$proxy_pid")
  kill "${subs[@]}" 2>/dev/null || true
  python3 -c "import json; hz=$(getconf CLK_TCK); print(json.dumps({'scenario': '100 SSE subscribers, proxy CPU over 30 s', 'idle_cpu_percent': round($idle*100/hz/30, 2), 'with_subscribers_cpu_percent': round($((t1 - t0))*100/hz/30, 2)}))"
  kill "$proxy_pid"; wait "$proxy_pid" 2>/dev/null || true
}

pg_pids() { # every PostgreSQL process of the throwaway server
  pgrep -u "$(stat -c %U "$LOKA_TEST_PG_DIR/data")" postgres
}

pg_ticks() { # CPU ticks of every PostgreSQL process of the throwaway server (0 for one elsewhere)
  local t=0 p
  [ -n "${LOKA_TEST_PG_DIR:-}" ] || { echo 0; return; }
  for p in $(pg_pids); do
    t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo "$t"
}

storage_run() { # $1 label $2 json name: run the load, print latency and CPU of proxy and PostgreSQL
  local p0 g0 p1 g1 timeline=()
  [ -n "${STORAGE_TIMELINE:-}" ] && timeline=(--timeline-ms 10)
  p0=$(cpu_ticks "$proxy_pid"); g0=$(pg_ticks)
  "${pin[@]}" "$B" --target 127.0.0.1:13333 --connections 1000 --rate "$rate" --duration 20 --ramp 2 "${timeline[@]}" >"$work/$2.json" 2>/dev/null
  p1=$(cpu_ticks "$proxy_pid"); g1=$(pg_ticks)
  summary "$1" "$work/$2.json"
  if [ -n "${STORAGE_TIMELINE:-}" ]; then
    python3 bench/timeline.py "$work/$2.json" ${LOKA_TEST_PG_DIR:+"$LOKA_TEST_PG_DIR/server.log"} \
      | python3 -c 'import json, sys; print(json.dumps({"scenario": sys.argv[1] + ": when the slow replies came", **json.load(sys.stdin)}))' "$1"
  fi
  histogram "$1: proxy-side submit handling (bucket bounds)" \
    loka_stratum_response_time_seconds us submits p50=0.5 p99=0.99 p999=0.999
  python3 -c "import json; hz=$(getconf CLK_TCK); print(json.dumps({'scenario': '$1: CPU over the run', 'proxy_cpu_percent': round($((p1 - p0))*100/hz/22, 1), 'postgres_cpu_percent': round($((g1 - g0))*100/hz/22, 1)}))"
}

pg_load() { # $1 rows/s for 22 s into submissions from a separate client (psql), like the writer's batches
  python3 - "$1" <<'PY' | psql -q "$LOKA_TEST_DATABASE_URL" >/dev/null
import sys, time
rate = int(sys.argv[1])
rows = max(rate // 10, 1)
print("CREATE TEMP TABLE stage AS SELECT id AS worker_id, row_number() OVER () AS n FROM workers;", flush=True)
t = time.monotonic()
for b in range(220):  # a batch every 100 ms, as the writer flushes
    print(f"""INSERT INTO submissions (id, worker_id, job_id, extranonce1, extranonce2, ntime, nonce,
      accepted, difficulty, submitted_at)
    SELECT (lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0') || '7'
            || substr(md5(random()::text), 1, 19))::uuid,
      s.worker_id, 'ctl{b % 30}', '00000001', lpad(to_hex(g), 8, '0'), '6543abcd',
      lpad(to_hex(g * 7919 + {b}), 8, '0'), true, 0.000001, clock_timestamp()
    FROM generate_series(1, {rows}) g JOIN stage s ON s.n = 1 + g % (SELECT count(*) FROM stage);""", flush=True)
    t += 0.1
    time.sleep(max(0.0, t - time.monotonic()))
PY
}

storage() { # Stratum latency with every share written to PostgreSQL versus storage off
  local rate="${STORAGE_RATE:-10000}" repeat="${STORAGE_REPEAT:-1}" i arms="off on"
  if [ -n "${STORAGE_DATABASE_URL:-}" ]; then
    # A scratch database elsewhere (another host, or cores of its own): the proxy migrates
    # it and writes into it; its CPU is not measured from here.
    export LOKA_TEST_DATABASE_URL="$STORAGE_DATABASE_URL"
    unset LOKA_TEST_PG_DIR
  else
    eval "$(tests/pg.sh up)"
    trap 'tests/pg.sh down "$LOKA_TEST_PG_DIR" >/dev/null 2>&1 || true; cleanup' EXIT
    if [ -n "${STORAGE_TIMELINE:-}" ]; then
      # Stamp what PostgreSQL does in the background, for bench/timeline.py.
      psql -q "$LOKA_TEST_DATABASE_URL" >/dev/null <<'SQL'
ALTER SYSTEM SET log_line_prefix = '%m ';
ALTER SYSTEM SET log_timezone = 'UTC';
ALTER SYSTEM SET log_checkpoints = on;
ALTER SYSTEM SET log_autovacuum_min_duration = 0;
ALTER SYSTEM SET log_min_duration_statement = 20;
SELECT pg_reload_conf();
SQL
    fi
    if [ -n "${STORAGE_PIN:-}" ]; then
      # The last core for PostgreSQL (backends inherit the postmaster's affinity); the pool
      # simulator, the proxy and the load generator on the rest.
      local last=$(($(nproc) - 1))
      db_cpus="$last"
      pin=(taskset -c "0-$((last - 1))")
      for p in $(pg_pids); do taskset -a -p -c "$db_cpus" "$p" >/dev/null; done
    fi
  fi
  start_pool 13338 0.000001 30
  # STORAGE_CONTROL=1 adds two runs with storage off: PostgreSQL taking the same rows from
  # another client, and a busy loop at SCHED_IDLE using a quarter of a core. They tell the
  # cost of the proxy's storage path apart from the cost of sharing the machine.
  [ -n "${STORAGE_CONTROL:-}" ] && arms="off on db-load idle-hog"
  # The arms alternate, `repeat` times, so drift of the machine hits all alike.
  for i in $(seq "$repeat"); do
    start_proxy 13338 0.000000001 true
    storage_run "storage off: 1000 conns @${rate}/s (run $i)" "off-$i"
    kill "$proxy_pid"; wait "$proxy_pid" 2>/dev/null || true
    start_proxy 13338 0.000000001 true "$LOKA_TEST_DATABASE_URL"
    # Diagnosis: PostgreSQL yields the cores to the rest (nice 19, or SCHED_IDLE: it runs
    # only on a core nothing else wants), standing in for a database on other hosts.
    if [ -n "${STORAGE_PG_NICE:-}" ] && [ -n "${LOKA_TEST_PG_DIR:-}" ]; then
      renice -n 19 -p $(pg_pids) >/dev/null
    fi
    if [ -n "${STORAGE_PG_IDLE:-}" ] && [ -n "${LOKA_TEST_PG_DIR:-}" ]; then
      for p in $(pg_pids); do chrt -i -p 0 "$p"; done
    fi
    if [ -n "${STORAGE_WRITER_IDLE:-}" ]; then
      for t in /proc/"$proxy_pid"/task/*; do
        grep -q loka-store "$t/comm" && chrt -i -p 0 "$(basename "$t")"
      done
    fi
    if [ -n "$db_cpus" ] && [ "${STORAGE_PIN:-}" = writer ]; then
      for t in /proc/"$proxy_pid"/task/*; do
        if grep -q loka-store "$t/comm"; then taskset -p -c "$db_cpus" "$(basename "$t")" >/dev/null; fi
      done
    fi
    storage_run "storage on (PostgreSQL, every share): 1000 conns @${rate}/s (run $i)" "on-$i"
    kill "$proxy_pid"; wait "$proxy_pid" 2>/dev/null || true
    if [ -n "${STORAGE_CONTROL:-}" ]; then
      start_proxy 13338 0.000000001 true
      if [ -n "$db_cpus" ]; then taskset -c "$db_cpus" bash -c "$(declare -f pg_load); pg_load $rate" & else pg_load "$rate" & fi
      local loader=$!
      storage_run "control, storage off while PostgreSQL takes ${rate} rows/s from psql (run $i)" "db-load-$i"
      wait "$loader"
      kill "$proxy_pid"; wait "$proxy_pid" 2>/dev/null || true
      start_proxy 13338 0.000000001 true
      chrt -i 0 python3 -c 'import time
end = time.time() + 22
while time.time() < end:
    t = time.time()
    while time.time() - t < 0.025: pass
    time.sleep(0.075)' &
      local hog=$!
      storage_run "control, storage off beside a SCHED_IDLE busy loop at 25 % of a core (run $i)" "idle-hog-$i"
      wait "$hog"
      kill "$proxy_pid"; wait "$proxy_pid" 2>/dev/null || true
    fi
  done
  # Each arm against storage on: every run's p99, and how likely a split at least this
  # lopsided is when the arms do not differ (exact two-sided Mann-Whitney over all splits).
  python3 - "$work" "$repeat" $arms <<'PY'
import itertools, json, statistics, sys
work, n, arms = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
p99 = {k: [json.load(open(f"{work}/{k}-{i}.json"))["latency_us"]["p99"] / 1000 for i in range(1, n + 1)]
       for k in arms}
def u(a, b):
    return sum(1.0 if x > y else 0.5 if x == y else 0.0 for x in a for y in b)
def p_value(a, b):
    both = a + b
    observed = abs(u(a, b) - len(a) * len(b) / 2)
    splits = [abs(u([both[i] for i in s], [both[i] for i in range(len(both)) if i not in s]) - len(a) * len(b) / 2)
              for s in itertools.combinations(range(len(both)), len(a))]
    return round(sum(1 for s in splits if s >= observed - 1e-9) / len(splits), 3)
out = {"scenario": f"Stratum p99 (ms) over {n} alternating runs of each arm",
       **{f"{k}_p99_ms": v for k, v in p99.items()},
       **{f"{k}_median_ms": statistics.median(v) for k, v in p99.items()}}
for k in arms:
    if k != "on":
        out[f"mann_whitney_p_on_vs_{k}"] = p_value(p99["on"], p99[k])
print(json.dumps(out))
PY
  start_proxy 13338 0.000000001 true "$LOKA_TEST_DATABASE_URL" durable
  storage_run "storage on, acknowledge = durable: 1000 conns @${rate}/s" durable
  sleep 3
  python3 - "$LOKA_TEST_DATABASE_URL" "$work"/on-*.json "$work/durable.json" <<'PY'
import json, subprocess, sys
url, paths = sys.argv[1], sys.argv[2:]
n = subprocess.run(["psql", url, "-tAc", "SELECT count(*) FROM submissions WHERE job_id NOT LIKE 'ctl%'"],
                   capture_output=True, text=True).stdout.strip()
print(json.dumps({"scenario": "storage on: the proxy's rows in submissions after all runs", "rows": int(n or 0),
                  "accepted_by_proxy": sum(json.load(open(p))["accepted"] for p in paths)}))
PY
  kill "$proxy_pid"; wait "$proxy_pid" 2>/dev/null || true
}

farm_arm() { # $1 label $2 target port $3 miners $4 shares/s per miner $5 json name [$6 proxy pid]
  local total rss0 rss1="" t0 t1 b steady=$((FARM_DURATION - FARM_RAMP - 10))
  total=$(python3 -c "print($3 * $4)")
  [ -n "${6:-}" ] && rss0=$(rss_kib "$6")
  "$B" --target "127.0.0.1:$2" --connections "$3" --rate "$total" --processes 2 --ramp "$FARM_RAMP" \
    --duration "$FARM_DURATION" >"$work/$5.json" 2>/dev/null &
  b=$!
  # CPU and RSS over the steady part: after the ramp and 5 s, until 5 s before the end.
  sleep $((FARM_RAMP + 5))
  [ -n "${6:-}" ] && t0=$(cpu_ticks "$6")
  sleep "$steady"
  if [ -n "${6:-}" ]; then t1=$(cpu_ticks "$6"); rss1=$(rss_kib "$6"); fi
  wait "$b"
  python3 - "$1" "$work/$5.json" "$3" "$4" "${rss0:-}" "$rss1" "${t0:-0}" "${t1:-0}" "$steady" "$(getconf CLK_TCK)" <<'PY' | tee -a "$work/farm.jsonl"
import json, os, sys
label, path, miners, rate, rss0, rss1, t0, t1, secs, hz = sys.argv[1:]
d = json.load(open(path))
out = {"scenario": label, "round": int(os.environ.get("FARM_ROUND", "1")), "miners": int(miners), "shares_per_miner_per_s": float(rate),
       "established": d["connections_established"], "disconnects": d["disconnects"],
       "accepted_per_sec": round(d["accepted_per_sec"]), "rejected": d["rejected"],
       "unanswered": d["unanswered"],
       "submit_p50_ms": round(d["latency_us"]["p50"] / 1000, 2),
       "submit_p99_ms": round(d["latency_us"]["p99"] / 1000, 2),
       "fanout_p50_ms": round(d["notify_fanout_ms"]["p50"], 1) if d.get("notify_fanout_ms") else None,
       "fanout_p99_ms": round(d["notify_fanout_ms"]["p99"], 1) if d.get("notify_fanout_ms") else None,
       "fanout_jobs_ms": [round(v, 1) for v in d.get("notify_fanout_jobs_ms", [])]}
if rss1:
    out["proxy_cpu_percent_of_200"] = round((int(t1) - int(t0)) * 100 / int(hz) / int(secs), 1)
    out["proxy_rss_kib"] = int(rss1)
    out["rss_bytes_per_miner"] = round((int(rss1) - int(rss0)) * 1024 / max(d["connections_established"], 1))
print(json.dumps(out))
PY
}

farm() { # the same miners straight to the pool and through the proxy (storage on, SQLite), in one run
  FARM_RAMP="${FARM_RAMP:-10}" FARM_DURATION="${FARM_DURATION:-60}"
  local miners rate round
  start_pool 13340 0.000000001 "${FARM_JOB_INTERVAL:-5}"
  for miners in ${FARM_MINERS:-10000}; do
    for rate in ${FARM_RATES:-0.2 1}; do
    for round in $(seq "${FARM_ROUNDS:-1}"); do
      export FARM_ROUND=$round
      farm_arm "direct: $miners miners x $rate shares/s" 13340 "$miners" "$rate" "direct-$miners-$rate"
      if [ -n "${FARM_BASELINE:-}" ]; then
        PROXY_BIN="$FARM_BASELINE" start_proxy 13340 0.000000001 true embedded
        farm_arm "baseline proxy (SQLite storage): $miners miners x $rate shares/s" 13333 "$miners" "$rate" "baseline-$miners-$rate" "$proxy_pid"
        kill "$proxy_pid"; wait "$proxy_pid" 2>/dev/null || true
        rm -rf "$work"/loka.db* "$work"/loka-spool
      fi
      start_proxy 13340 0.000000001 true embedded
      farm_arm "proxy (SQLite storage): $miners miners x $rate shares/s" 13333 "$miners" "$rate" "proxy-$miners-$rate" "$proxy_pid"
      kill "$proxy_pid"; wait "$proxy_pid" 2>/dev/null || true
      rm -rf "$work"/loka.db* "$work"/loka-spool
      if [ -n "${FARM_STORAGE_OFF:-}" ]; then
        start_proxy 13340 0.000000001 true
        farm_arm "proxy (storage off): $miners miners x $rate shares/s" 13333 "$miners" "$rate" "proxy-off-$miners-$rate" "$proxy_pid"
        kill "$proxy_pid"; wait "$proxy_pid" 2>/dev/null || true
      fi
    done
    done
  done
  # Ratios, proxy over direct, per load and round; with FARM_ROUNDS > 1 also the median of
  # each arm over the rounds and their ratio (a run's fan-out p99 is nearly its slowest job's),
  # and the fan-out quantiles over every job of every round of an arm, pooled ("all jobs").
  python3 - "$work/farm.jsonl" <<'PY' | tee -a "$work/farm.jsonl"
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def ratios(p, d, label):
    ratio = lambda k: round(p[k] / d[k], 2) if p.get(k) and d.get(k) else None
    return {"scenario": label, "miners": p["miners"], "shares_per_miner_per_s": p["shares_per_miner_per_s"],
            "submit_p99": ratio("submit_p99_ms"), "fanout_p99": ratio("fanout_p99_ms"),
            **({"all_jobs_fanout_p50": ratio("all_jobs_fanout_p50_ms"), "all_jobs_fanout_p90": ratio("all_jobs_fanout_p90_ms"),
                "all_jobs_fanout_p99": ratio("all_jobs_fanout_p99_ms")} if p.get("jobs") else {}),
            "proxy_cpu_percent_of_200": p.get("proxy_cpu_percent_of_200"),
            "rss_bytes_per_miner": p.get("rss_bytes_per_miner")}
same = lambda a, b: a["miners"] == b["miners"] and a["shares_per_miner_per_s"] == b["shares_per_miner_per_s"]
for p in (r for r in rows if "proxy (" in r["scenario"]):
    d = next(r for r in rows if r["scenario"].startswith("direct") and same(r, p) and r["round"] == p["round"])
    who = p["scenario"].split(":")[0]
    print(json.dumps({**ratios(p, d, f"ratio {who}/direct: {p['miners']} miners x {p['shares_per_miner_per_s']} shares/s"), "round": p["round"]}))
if max(r["round"] for r in rows) > 1:
    arms = {}
    for r in rows:
        arms.setdefault((r["scenario"].split(":")[0], r["miners"], r["shares_per_miner_per_s"]), []).append(r)
    med = {}
    for key, rs in arms.items():
        m = {"miners": key[1], "shares_per_miner_per_s": key[2], "rounds": len(rs)}
        for k in ("submit_p99_ms", "fanout_p99_ms", "fanout_p50_ms", "proxy_cpu_percent_of_200", "rss_bytes_per_miner"):
            vals = [r[k] for r in rs if r.get(k) is not None]
            if vals:
                m[k] = round(statistics.median(vals), 2)
        jobs = sorted(v for r in rs for v in r.get("fanout_jobs_ms", []))
        if jobs:
            q = lambda f: jobs[min(len(jobs) - 1, int(f * len(jobs)))]
            m.update({"jobs": len(jobs), "all_jobs_fanout_p50_ms": q(0.5), "all_jobs_fanout_p90_ms": q(0.9),
                      "all_jobs_fanout_p99_ms": q(0.99)})
        med[key] = m
        print(json.dumps({"scenario": f"median over rounds, {key[0]}: {key[1]} miners x {key[2]} shares/s", **m}))
    for (who, n, rate), p in med.items():
        if "proxy (" in who:
            print(json.dumps(ratios(p, med[("direct", n, rate)], f"ratio of medians {who}/direct: {n} miners x {rate} shares/s")))
PY
  [ -n "${BENCH_OUT:-}" ] && cp "$work/farm.jsonl" "$BENCH_OUT"
  true
}

fanout() { # 10,000 held miners (no shares), a job every second: each job's fan-out and the proxy's CPU
  # over 18 s of each arm; per round straight to the pool, then through the proxy (SQLite on).
  # FANOUT_BASELINE=<loka-proxy binary>: that build in place of the direct arm; FANOUT_ROUNDS (3);
  # PROXY_LOG_LEVEL (logging.level, warn).
  local round label first=direct t0 t1 b port pid
  [ -n "${FANOUT_BASELINE:-}" ] && first=baseline
  start_pool 13344 0.000000001 1
  for round in $(seq "${FANOUT_ROUNDS:-3}"); do
    for label in "$first" proxy; do
      # The sender whose CPU is read: the pool simulator straight, else the proxy.
      case $label in
        direct) port=13344 pid=$pool_pid ;;
        baseline) PROXY_BIN="$FANOUT_BASELINE" start_proxy 13344 0.000000001 true embedded; port=13333 pid=$proxy_pid ;;
        proxy) start_proxy 13344 0.000000001 true embedded; port=13333 pid=$proxy_pid ;;
      esac
      "$B" --target "127.0.0.1:$port" --hold --connections 10000 --processes 2 --ramp 5 --duration 30 >"$work/fanout.json" 2>/dev/null &
      b=$!
      sleep 10; t0=$(cpu_ticks "$pid"); sleep 18; t1=$(cpu_ticks "$pid")
      wait "$b"
      python3 - "$label" "$round" "$work/fanout.json" "$t0" "$t1" "$(getconf CLK_TCK)" <<'PY' | tee -a "$work/fanout.jsonl"
import json, sys
label, rnd, path, t0, t1, hz = sys.argv[1:]
d = json.load(open(path))
jobs = d.get("notify_fanout_jobs_ms", [])
print(json.dumps({"scenario": f"fan-out, 10,000 held miners, a job a second: {label}", "round": int(rnd),
                  "established": d["connections_established"], "jobs": len(jobs),
                  "fanout_mean_ms": round(sum(jobs) / len(jobs), 1) if jobs else None,
                  "fanout_p50_ms": jobs[len(jobs) // 2] if jobs else None,
                  "fanout_p99_ms": round(d["notify_fanout_ms"]["p99"], 1) if d.get("notify_fanout_ms") else None,
                  "cpu_seconds_over_18_s": round((int(t1) - int(t0)) / int(hz), 2),
                  "cpu_of": "pool" if label == "direct" else "proxy"}))
PY
      if [ "$label" != direct ]; then kill "$proxy_pid"; wait "$proxy_pid" 2>/dev/null || true; rm -rf "$work"/loka.db* "$work"/loka-spool; fi
    done
  done
  true
}

heap() { # where the proxy's heap goes at 10,000 miners (dhat; every allocation counted, so slow)
  cargo build --release -q -p loka-proxy --features dhat-heap
  cp "$CARGO_TARGET_DIR/release/loka-proxy" "$work/loka-proxy-dhat"
  cargo build --release -q -p loka-proxy # the plain binary back in place for the other scenarios
  start_pool 13341 0.000000001 5
  LOKA_DHAT_FILE="$work/dhat.json" PROXY_BIN="$work/loka-proxy-dhat" start_proxy 13341 0.000000001 true embedded
  local rate; rate=$(python3 -c "print(round(${HEAP_MINERS:-10000} * ${HEAP_RATE:-0.2}))")
  "$B" --target 127.0.0.1:13333 --connections "${HEAP_MINERS:-10000}" --rate "$rate" \
    --processes 2 --ramp 10 --duration 40 >"$work/heap.json" 2>/dev/null
  summary "heap profile load: ${HEAP_MINERS:-10000} miners at ${HEAP_RATE:-0.2} shares/s each, storage on (SQLite)" "$work/heap.json"
  # SIGTERM while the miners are still connected would drain them first; they have gone.
  kill "$proxy_pid"; wait "$proxy_pid" 2>/dev/null || true
  python3 bench/dhat_top.py "$work/dhat.json" "${HEAP_MINERS:-10000}"
  [ -n "${BENCH_OUT:-}" ] && cp "$work/dhat.json" "$BENCH_OUT"
  true
}

soak() { # 10,000 miners at 0.2 shares/s for SOAK_SECONDS (600): RSS and error counters every 30 s
  local secs="${SOAK_SECONDS:-600}" miners="${SOAK_MINERS:-10000}" b i
  start_pool 13342 0.000000001 5
  start_proxy 13342 0.000000001 true embedded
  "$B" --target 127.0.0.1:13333 --connections "$miners" --rate "$((miners / 5))" --processes 2 --ramp 10 \
    --duration "$secs" >"$work/soak.json" 2>/dev/null &
  b=$!
  for i in $(seq $((secs / 30 - 1))); do
    sleep 30
    python3 - "$((i * 30))" "$(rss_kib "$proxy_pid")" "$(cpu_ticks "$proxy_pid")" <<'PY' | tee -a "$work/soak.jsonl"
import json, sys, urllib.request
t, rss, ticks = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
m = json.load(urllib.request.urlopen("http://127.0.0.1:19090/metrics/json"))
c = m.get("counters", {})
keep = ("shares_accepted", "shares_rejected", "protocol_errors", "events_dropped", "shares_unstored",
        "connections_closed", "upstream_failures")
pick = {k: v for k, v in c.items() if any(x in k for x in keep)}
print(json.dumps({"t_s": t, "rss_kib": rss, "cpu_ticks": ticks, **pick}))
PY
  done
  wait "$b"
  summary "soak: $miners miners x 0.2 shares/s for $secs s" "$work/soak.json"
  python3 - "$work/soak.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
# From a quarter of the run on: the first minutes are warm-up (SQLite's page cache, the
# allocator's arenas, the duplicate sets of the live jobs filling).
steady = [r for r in rows if r["t_s"] >= rows[-1]["t_s"] / 4]
xs = [r["t_s"] for r in steady]; ys = [r["rss_kib"] for r in steady]
n = len(xs); mx = sum(xs) / n; my = sum(ys) / n
slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
print(json.dumps({"scenario": f"soak: RSS from {xs[0]} s on", "first_kib": ys[0], "last_kib": ys[-1],
                  "min_kib": min(ys), "max_kib": max(ys), "slope_kib_per_min": round(slope * 60, 1)}))
PY
  kill "$proxy_pid"; wait "$proxy_pid" 2>/dev/null || true
  [ -n "${BENCH_OUT:-}" ] && cp "$work/soak.jsonl" "$BENCH_OUT"
  true
}

tls_certs() { # $1 dir: a CA and a certificate for localhost signed by it (ECDSA P-256)
  mkdir -p "$1"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
    -subj /CN=bench-ca -keyout "$1/ca.key" -out "$1/ca.crt" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost \
    -keyout "$1/tls.key" -out "$1/tls.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' >"$1/ext"
  openssl x509 -req -in "$1/tls.csr" -CA "$1/ca.crt" -CAkey "$1/ca.key" -CAcreateserial -days 1 \
    -extfile "$1/ext" -out "$1/tls.crt" 2>/dev/null
}

tls_hold_arm() { # $1 label $2 port [$3 --tls-ca args...]: open TLS_CONNECTIONS at once, hold them
  local n="${TLS_CONNECTIONS:-5000}" rss0 rss1 t0 t1 b
  rss0=$(rss_kib "$proxy_pid"); t0=$(cpu_ticks "$proxy_pid")
  "$B" --target "127.0.0.1:$2" --hold --connections "$n" --duration 12 --connect-timeout 60 "${@:3}" \
    >"$work/tls-hold.json" 2>/dev/null &
  b=$!
  sleep 10
  rss1=$(rss_kib "$proxy_pid"); t1=$(cpu_ticks "$proxy_pid")
  wait "$b"
  python3 - "$1" "$work/tls-hold.json" "$rss0" "$rss1" "$t0" "$t1" "$(getconf CLK_TCK)" <<'PY' | tee -a "$work/tls.jsonl"
import json, sys
label, path, rss0, rss1, t0, t1, hz = sys.argv[1:]
d = json.load(open(path))
n = max(d["connections_established"], 1)
c = d.get("connect_ms") or {}
print(json.dumps({"scenario": label, "established": d["connections_established"],
                  "connect_errors": d["connect_errors"],
                  "connect_p50_ms": round(c.get("p50", 0), 2), "connect_p99_ms": round(c.get("p99", 0), 2),
                  "connect_max_ms": round(c.get("max", 0), 1),
                  "proxy_cpu_us_per_connection": round((int(t1) - int(t0)) / int(hz) * 1e6 / n, 1),
                  "rss_bytes_per_connection": round((int(rss1) - int(rss0)) * 1024 / n),
                  "errors": d["errors"][:3]}))
PY
}

tls_load_arm() { # $1 label $2 port [$3 --tls-ca args...]: 1,000 miners x 10 shares/s
  local t0 t1
  t0=$(cpu_ticks "$proxy_pid")
  "$B" --target "127.0.0.1:$2" --connections 1000 --rate 10000 --duration 20 --ramp 2 "${@:3}" \
    >"$work/tls-load.json" 2>/dev/null
  t1=$(cpu_ticks "$proxy_pid")
  python3 - "$1" "$work/tls-load.json" "$t0" "$t1" "$(getconf CLK_TCK)" <<'PY' | tee -a "$work/tls.jsonl"
import json, sys
label, path, t0, t1, hz = sys.argv[1:]
d = json.load(open(path))
print(json.dumps({"scenario": label, "accepted_per_sec": round(d["accepted_per_sec"]),
                  "rejected": d["rejected"], "disconnects": d["disconnects"],
                  "submit_p50_ms": round(d["latency_us"]["p50"] / 1000, 3),
                  "submit_p99_ms": round(d["latency_us"]["p99"] / 1000, 3),
                  "proxy_cpu_us_per_share": round((int(t1) - int(t0)) / int(hz) * 1e6 / max(d["submitted"], 1), 2)}))
PY
}

tls() { # plain port against TLS port of one proxy, alternating
  local round tls_args
  tls_certs "$work/tls"
  tls_args=(--tls-ca "$work/tls/ca.crt" --tls-name localhost)
  start_pool 13344 0.000000001 30
  # A fresh proxy for each arm: the memory a held connection costs is measured from the same start.
  for round in $(seq "${TLS_ROUNDS:-2}"); do
    PROXY_TLS_DIR="$work/tls" start_proxy 13344 0.000000001 false
    tls_hold_arm "plain: ${TLS_CONNECTIONS:-5000} connections opened at once, held" 13333
    tls_load_arm "plain: 1,000 miners x 10 shares/s" 13333
    kill "$proxy_pid"; wait "$proxy_pid" 2>/dev/null || true
    PROXY_TLS_DIR="$work/tls" start_proxy 13344 0.000000001 false
    tls_hold_arm "TLS: ${TLS_CONNECTIONS:-5000} connections opened at once, held" 13343 "${tls_args[@]}"
    tls_load_arm "TLS: 1,000 miners x 10 shares/s" 13343 "${tls_args[@]}"
    kill "$proxy_pid"; wait "$proxy_pid" 2>/dev/null || true
  done
  [ -n "${BENCH_OUT:-}" ] && cp "$work/tls.jsonl" "$BENCH_OUT"
  true
}

profile() { # where the proxy's CPU goes: 10,000 miners at 0.2 shares/s each, storage on (SQLite);
  # PROFILE_LOAD=throughput: 1,000 connections at 20,000 shares/s, 0.1 % forwarded, storage off
  local label
  if [ "${PROFILE_LOAD:-farm}" = throughput ]; then
    start_pool 13336 0.000001 30
    start_proxy 13336 0.000000001 false
    "$B" --target 127.0.0.1:13333 --connections 1000 --rate 20000 --ramp 2 --duration 30 >"$work/profile.json" 2>/dev/null &
    label="profile load: 1,000 connections at 20,000 shares/s, 0.1 % forwarded, storage off"
  else
    start_pool 13336 0.000000001 5
    start_proxy 13336 0.000000001 true embedded
    "$B" --target 127.0.0.1:13333 --connections 10000 --rate "${PROFILE_RATE:-2000}" --processes 2 --ramp 10 --duration 45 >"$work/profile.json" 2>/dev/null &
    label="profile load: 10,000 miners at ${PROFILE_RATE:-2000} shares/s, storage on (SQLite)"
  fi
  local b=$!
  sleep "${PROFILE_WARMUP:-15}"
  local t0; t0=$(cpu_ticks "$proxy_pid")
  perf record -e cpu-clock -F 999 -g -p "$proxy_pid" -o "$work/perf.data" -- sleep 20 >/dev/null 2>&1
  local t1; t1=$(cpu_ticks "$proxy_pid")
  wait "$b"
  summary "$label" "$work/profile.json"
  python3 -c "import json,os; print(json.dumps({'scenario': 'proxy CPU while profiled (20 s)', 'cpu_percent_of_one_core': round(($t1-$t0)/os.sysconf('SC_CLK_TCK')/20*100, 1)}))"
  # Self time by function, and by thread (sessions on the runtime's workers, the writer).
  local by
  for by in dso comm symbol; do
    echo "--- self time by $by"
    perf report -i "$work/perf.data" --no-children --sort "$by" --stdio 2>/dev/null \
      | sed -nE 's/ +- +- *$//; s/ +$//; /^ +[0-9.]+%/p' | awk 'NR <= 30'
  done
  [ -n "${PROFILE_KEEP:-}" ] && cp "$work/perf.data" "$PROFILE_KEEP"
  kill "$proxy_pid"; wait "$proxy_pid" 2>/dev/null || true
}

case "${1:-all}" in
  hold) hold ;;
  throughput) throughput ;;
  api) api ;;
  api-cost) api_cost ;;
  storage) storage ;;
  profile) profile ;;
  farm) farm ;;
  fanout) fanout ;;
  heap) heap ;;
  soak) soak ;;
  tls) tls ;;
  all) hold; throughput; api; api_cost; storage ;;
  *) echo "usage: $0 [hold|throughput|api|api-cost|storage|profile|farm|fanout|heap|soak|all]" >&2; exit 2 ;;
esac
