#!/usr/bin/env bash
# Sustained-load check: does rexd stay as fast and as small after a million requests as
# when it is fresh? Starts target/release/rexd on its default configuration (fsync on,
# sandbox auto) with a temporary data directory, then:
#   1. exec-noop and exec-throughput on the fresh server;
#   2. the soak workload: SOAK_REQUESTS (default 1,000,000) mixed requests, a report
#      line (p50/p99 per kind, throughput, server RSS) every SOAK_WINDOW (50,000);
#   3. exec-noop and exec-throughput again on the same, now well-used server.
# Reports (JSON) go to target/bench/; the summary at the end compares steps 1 and 3.
#
#   scripts/soak.sh
#   SOAK_REQUESTS=200000 scripts/soak.sh
#   BIN=/path/to/other/build/release scripts/soak.sh   # measure another build's binaries
set -euo pipefail
cd "$(dirname "$0")/.."

requests=${SOAK_REQUESTS:-1000000}
window=${SOAK_WINDOW:-50000}
bin=${BIN:-target/release}
if [ -z "${BIN:-}" ]; then
  echo "== building release binaries" >&2
  cargo build --release --bin rexd --bin rexd-bench >&2
fi
out=target/bench
mkdir -p "$out"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
tmp=$(mktemp -d)
# shellcheck source=scripts/rexd-server.sh
. scripts/rexd-server.sh
trap 'stop_rexd; rm -rf "$tmp"' EXIT
start_rexd "$tmp"
echo "== rexd pid $server_pid on $url" >&2

bench() {
  "$bin/rexd-bench" --target "$url" --server-pid "$server_pid" --json "$@"
}
figure() { sed -n "s/.*\"$2\":\([0-9.]*\).*/\1/p" "$1" | head -n 1; }

echo "== 1. fresh server (RSS $(rss_mib) MiB)" >&2
bench --exec-count 200 exec-noop exec-throughput >"$out/$stamp-soak-fresh.json"
echo "== 2. soak: $requests requests" >&2
bench --soak-requests "$requests" --soak-window "$window" soak >"$out/$stamp-soak.json"
echo "== 3. the same server after the soak (RSS $(rss_mib) MiB)" >&2
bench --exec-count 200 exec-noop exec-throughput >"$out/$stamp-soak-after.json"

f=$out/$stamp-soak-fresh.json a=$out/$stamp-soak-after.json
echo >&2
echo "exec-noop median:  fresh $(figure "$f" exec_noop_median_ms) ms, after $(figure "$a" exec_noop_median_ms) ms" >&2
echo "exec-throughput:   fresh $(figure "$f" exec_throughput_actions_per_s)/s, after $(figure "$a" exec_throughput_actions_per_s)/s" >&2
echo "soak RSS peak:     $(figure "$out/$stamp-soak.json" soak_rss_peak_mib) MiB; now $(rss_mib) MiB" >&2
echo "reports: $out/$stamp-soak*.json" >&2
