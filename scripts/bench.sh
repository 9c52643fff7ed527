#!/usr/bin/env bash
# Measures rexd with rexd-bench: builds the release binaries, starts target/release/rexd on a
# free loopback port with a temporary data directory and the default configuration (fsync
# on), runs every workload, samples the server's memory, and stops it.
#
#   scripts/bench.sh                       # everything at the default sizes
#   scripts/bench.sh exec-noop stage       # only these workloads
#   BENCH_ARGS="--upload-size 64MiB --exec-count 50" scripts/bench.sh   # flags for every run
#
# Steps, each with its own server so one cannot skew the next:
#   1. idle RSS, then the peak RSS during four concurrent 256 MiB uploads (--parallel 4);
#   2. the workloads (`all` by default), plain sandbox (sandbox.backend = "plain");
#   3. exec-noop and exec-throughput again with bubblewrap namespaces, where they work here.
# Reports (JSON) go to target/bench/; BENCHMARKS.md says how to read them.
# RSS_UPLOAD_SIZE changes the size of step 1's uploads; BENCH_PROFILE=debug makes a quick
# smoke run of this script itself (debug build, figures meaningless).
#
# Against another server (Buildbarn, BuildGrid, NativeLink, ...) this script is not needed:
#   cargo build --release --bin rexd-bench
#   target/release/rexd-bench --target grpc://HOST:PORT --instance NAME all
# Add `--platform NAME=VALUE` for properties its workers require (e.g. OSFamily=Linux), and
# `--server-pid PID` when the server runs on this machine, to sample its RSS.
set -euo pipefail
cd "$(dirname "$0")/.."

read -r -a extra <<<"${BENCH_ARGS:-}"
workloads=("$@")
[ ${#workloads[@]} -gt 0 ] || workloads=(all)
out=target/bench
stamp=$(date -u +%Y%m%dT%H%M%SZ)

profile=${BENCH_PROFILE:-release}
bin=target/$profile
echo "== building $profile binaries" >&2
if [ "$profile" = release ]; then
  cargo build --release --bin rexd --bin rexd-bench >&2
else
  cargo build --bin rexd --bin rexd-bench >&2
fi
mkdir -p "$out"
tmp=$(mktemp -d)
# shellcheck source=scripts/rexd-server.sh
. scripts/rexd-server.sh
trap 'stop_rexd; rm -rf "$tmp"' EXIT

# start_server BACKEND: rexd with that sandbox backend and a fresh data directory.
servers=0
start_server() {
  servers=$((servers + 1))
  local name=$1 dir="$tmp/$servers-$1"
  start_rexd "$dir" 'log_level = "info"' '[sandbox]' "backend = \"$name\"" || return 1
  echo "== rexd pid $server_pid on $url (sandbox $name, data in $dir/data)" >&2
}
stop_server() { stop_rexd; }

bench() {
  "$bin/rexd-bench" --target "$url" --server-pid "$server_pid" "${extra[@]}" "$@"
}

echo "== 1. memory: idle, then four concurrent ${RSS_UPLOAD_SIZE:-256MiB} uploads" >&2
start_server plain
sleep 2
idle=$(rss_mib)
bench --json --parallel 4 --upload-size "${RSS_UPLOAD_SIZE:-256MiB}" upload >"$out/$stamp-rss.json"
peak=$(sed -n 's/.*"server_rss_peak_mib":\([0-9.]*\).*/\1/p' "$out/$stamp-rss.json")
after=$(rss_mib)
stop_server

echo "== 2. workloads: ${workloads[*]} (plain sandbox)" >&2
start_server plain
bench --json "${workloads[@]}" >"$out/$stamp-plain.json"
stop_server

echo "== 3. exec-noop and exec-throughput in bubblewrap namespaces" >&2
if start_server bwrap; then
  bench --json exec-noop exec-throughput >"$out/$stamp-bwrap.json"
  stop_server
else
  echo "   skipped: bubblewrap does not work on this machine" >&2
fi

echo >&2
echo "server RSS: idle ${idle} MiB; peak during 4 x ${RSS_UPLOAD_SIZE:-256MiB} uploads ${peak:-?} MiB;" \
  "after them ${after} MiB" >&2
echo "reports: $out/$stamp-*.json" >&2
