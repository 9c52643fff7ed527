#!/usr/bin/env bash
# Cluster figures with rexd-bench: one server host and three worker hosts, each a network
# namespace this script creates (veth /30 links, private 10.213.N.0/30 addresses), all on
# this machine. Needs root and iproute2. The client runs on the server host, as Bazel would.
#
#   scripts/cluster-bench.sh                 # every step
#   EXEC_COUNT=300 SLEEP_COUNT=60 scripts/cluster-bench.sh
#   STEPS="local remote-1" scripts/cluster-bench.sh     # some steps only
#
# Steps, each with a fresh server (and fresh workers), plain sandbox on every host:
#   1. local:    exec-noop on the server's own worker slots;
#   2. remote-1: exec-noop through one `rexd worker` over its veth link (local_workers = 0),
#      then `stage` (2,000 input files: the first run fetches them, the next find them);
#   3. serial:   60 `/bin/sleep 0.2` actions, one at a time, through one worker with 1 slot;
#   4. spread:   the same 60 actions, 6 in flight, over 3 workers x 2 slots;
#   5. spread-noop: exec-throughput of /bin/true over 3 workers x 2 slots.
# Steps 2-5 add the --workers report (actions per worker, worker cache hit rate). Reports
# (JSON) go to target/bench/cluster-*.json; BENCHMARKS.md, "Cluster", says how to read them.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "cluster-bench.sh needs root for network namespaces" >&2; exit 1; }
command -v ip >/dev/null || { echo "cluster-bench.sh needs iproute2 (ip)" >&2; exit 1; }

exec_count=${EXEC_COUNT:-300}
steps=${STEPS:-local remote-1 serial spread}
sleep_count=${SLEEP_COUNT:-60}
profile=${BENCH_PROFILE:-release}
bin=$PWD/target/$profile
echo "== building $profile binaries" >&2
if [ "$profile" = release ]; then
  cargo build --release --bin rexd --bin rexd-bench >&2
else
  cargo build --bin rexd --bin rexd-bench >&2
fi
out=target/bench
mkdir -p "$out"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
tmp=$(mktemp -d)
tag=rxb$$
server_ns=${tag}s
pids=()

cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  for i in 1 2 3; do ip netns del "${tag}w$i" 2>/dev/null || true; done
  ip netns del "$server_ns" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

ip netns add "$server_ns"
ip -n "$server_ns" link set lo up
for i in 1 2 3; do
  ip netns add "${tag}w$i"
  ip -n "${tag}w$i" link set lo up
  ip link add "${tag}a$i" type veth peer name "${tag}b$i"
  ip link set "${tag}a$i" netns "$server_ns"
  ip link set "${tag}b$i" netns "${tag}w$i"
  ip -n "$server_ns" addr add "10.213.$i.1/30" dev "${tag}a$i"
  ip -n "${tag}w$i" addr add "10.213.$i.2/30" dev "${tag}b$i"
  ip -n "$server_ns" link set "${tag}a$i" up
  ip -n "${tag}w$i" link set "${tag}b$i" up
done
url=grpc://127.0.0.1:8980

# wait_for_log FILE PATTERN COUNT: until FILE has COUNT lines matching PATTERN.
wait_for_log() {
  for _ in $(seq 300); do
    [ "$(grep -c "$2" "$1" 2>/dev/null || true)" -ge "$3" ] && return 0
    sleep 0.1
  done
  echo "timed out waiting for '$2' in $1:" >&2
  tail -n 20 "$1" >&2
  return 1
}

# start_server STEP LOCAL_WORKERS
start_server() {
  local dir=$tmp/$1
  mkdir -p "$dir"
  cat >"$dir/rexd.toml" <<EOF
listen = "0.0.0.0:8980"
data_dir = "$dir/data"
log_level = "info"
[execution]
local_workers = $2
[sandbox]
backend = "plain"
run_as_uid_base = 62000
EOF
  NO_COLOR=1 ip netns exec "$server_ns" "$bin/rexd" --config "$dir/rexd.toml" 2>"$dir/rexd.log" &
  pids+=($!)
  server_log=$dir/rexd.log
  wait_for_log "$server_log" "rexd serving" 1
}

# start_workers STEP COUNT SLOTS: COUNT workers, on hosts 1..COUNT, SLOTS leases each.
start_workers() {
  metrics=()
  for i in $(seq "$2"); do
    local dir=$tmp/$1-w$i
    mkdir -p "$dir"
    cat >"$dir/worker.toml" <<EOF
data_dir = "$dir/data"
log_level = "info"
[metrics]
listen = "0.0.0.0:9090"
[execution]
local_workers = $3
[sandbox]
backend = "plain"
run_as_uid_base = $((62000 + 100 * i))
[worker]
bot_id = "worker-$i"
EOF
    NO_COLOR=1 ip netns exec "${tag}w$i" "$bin/rexd" worker --server "grpc://10.213.$i.1:8980" \
      --config "$dir/worker.toml" 2>"$dir/worker.log" &
    pids+=($!)
    metrics+=(--worker-metrics "http://10.213.$i.2:9090/metrics")
  done
  wait_for_log "$server_log" "bot joined" "$2"
}

stop_all() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  pids=()
}

bench() {
  local step=$1
  shift
  echo "== $step" >&2
  ip netns exec "$server_ns" "$bin/rexd-bench" --target "$url" --json "$@" \
    >"$out/cluster-$stamp-$step.json"
}

want() { [[ " $steps " == *" $1 "* ]]; }

if want local; then
  start_server local 2
  bench local --exec-count "$exec_count" exec-noop
  stop_all
fi

if want remote-1; then
  start_server remote-1 0
  start_workers remote-1 1 2
  bench remote-1 --exec-count "$exec_count" --workers "${metrics[@]}" exec-noop
  bench remote-1-stage --stage-files 2000 --stage-dirs 20 --stage-runs 5 --workers \
    "${metrics[@]}" stage
  stop_all
fi

if want serial; then
  start_server serial 0
  start_workers serial 1 1
  bench serial --action-sleep 0.2 --throughput-count "$sleep_count" \
    --throughput-concurrency 1 --warmup 1 --workers "${metrics[@]}" exec-throughput
  stop_all
fi

if want spread; then
  start_server spread 0
  start_workers spread 3 2
  bench spread --action-sleep 0.2 --throughput-count "$sleep_count" \
    --throughput-concurrency 6 --warmup 6 --workers "${metrics[@]}" exec-throughput
  bench spread-noop --throughput-count 500 --throughput-concurrency 12 --workers \
    "${metrics[@]}" exec-throughput
  stop_all
fi
echo "== reports in $out/cluster-$stamp-*.json" >&2
