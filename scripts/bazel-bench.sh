#!/usr/bin/env bash
# A real build, locally and against rexd: how long does a team's cold remote build take
# compared with building on the machine itself, and where does the CPU go?
#
# Generates a C workspace (LIBS cc_library targets, default 60, each with two sources and a
# genrule-made header, chained by deps, and a cc_binary for every ten libraries), then with
# Debian's Bazel (bazel-bootstrap) and the offline stand-ins of tests/fixtures/bazel_ws:
#   1. builds it locally (Bazel's own spawns, --spawn_strategy=local);
#   2. builds it remotely on a fresh rexd (release build, default configuration: sandbox and
#      fsync on), --jobs JOBS (default 8);
#   3. rebuilds it after `bazel clean`, every action a remote cache hit.
# Prints wall time and CPU (Bazel's server with its local children, and rexd with its
# actions) for each step, rexd's own CPU per remote action (its threads, not the actions'
# processes), how many of the cores were busy on average (anything on the machine), and the
# ratios to the local build. Repeat with RUNS (default 1).
#
#   scripts/bazel-bench.sh
#   LIBS=20 JOBS=16 RUNS=3 scripts/bazel-bench.sh
#   BIN=/path/to/other/build/release scripts/bazel-bench.sh
#   REXD_TOML='execution.local_workers = 4' scripts/bazel-bench.sh   extra rexd.toml lines (one per line)
#   DOWNLOAD=toplevel scripts/bazel-bench.sh  --remote_download_outputs for the remote steps
#                                             (default all; toplevel is Bazel 7's default)
#   KEEP=/tmp/bench scripts/bazel-bench.sh    keep the workspace, the logs, Bazel's JSON
#                                             profiles and rexd's logs in /tmp/bench
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

libs=${LIBS:-60}
jobs=${JOBS:-8}
runs=${RUNS:-1}
download=${DOWNLOAD:-all}
# Bazel 4.2.3's toplevel and minimal need in-memory .d and jdeps files, which only the
# expansion flags turn on with them.
case $download in
  all) download_flags=(--remote_download_outputs=all) ;;
  toplevel | minimal) download_flags=("--remote_download_$download") ;;
  *) echo "DOWNLOAD must be all, toplevel or minimal" >&2; exit 2 ;;
esac
bin=${BIN:-target/release}
command -v bazel >/dev/null || { echo "needs bazel (apt-get install -y bazel-bootstrap)" >&2; exit 1; }
if [ -z "${BIN:-}" ]; then
  echo "== building release binaries" >&2
  cargo build --release --bin rexd >&2
fi

if [ -n "${KEEP:-}" ]; then
  rm -rf "$KEEP" && mkdir -p "$KEEP" && tmp=$(cd "$KEEP" && pwd)
else
  tmp=$(mktemp -d)
fi
ws=$tmp/ws
# shellcheck source=scripts/rexd-server.sh
. scripts/rexd-server.sh
bazel_root=$tmp/bazel-root
trap 'stop_rexd; (cd "$ws" 2>/dev/null && bazel --output_user_root="$bazel_root" shutdown) >/dev/null 2>&1; [ -n "${KEEP:-}" ] || rm -rf "$tmp"' EXIT

# ---------------------------------------------------------------- the workspace
mkdir -p "$ws"
cp -r tests/fixtures/bazel_ws/WORKSPACE tests/fixtures/bazel_ws/third_party "$ws/"
{
  echo 'load("@rules_cc//cc:defs.bzl", "cc_binary", "cc_library")'
  echo
  for i in $(seq 0 $((libs - 1))); do
    deps=""
    [ "$i" -gt 0 ] && deps="\":lib$((i - 1))\""
    [ "$i" -gt 2 ] && deps="$deps, \":lib$((i / 2))\""
    cat <<EOF
genrule(
    name = "gen$i",
    outs = ["gen$i.h"],
    cmd = "echo '#define GEN$i $i' > \$@",
)

cc_library(
    name = "lib$i",
    srcs = ["lib$i.c", "lib${i}_extra.c", "gen$i.h"],
    hdrs = ["lib$i.h"],
    deps = [$deps],
)

EOF
    if [ $((i % 10)) -eq 9 ]; then
      cat <<EOF
cc_binary(
    name = "bin$i",
    srcs = ["bin$i.c"],
    deps = [":lib$i"],
)

EOF
    fi
  done
} >"$ws/BUILD.bazel"
for i in $(seq 0 $((libs - 1))); do
  prev=""
  [ "$i" -gt 0 ] && prev="#include \"lib$((i - 1)).h\""
  echo "int lib${i}(int x);" >"$ws/lib$i.h"
  cat >"$ws/lib$i.c" <<EOF
#include "lib$i.h"
#include "gen$i.h"
$prev
int lib${i}_extra(int x);
int lib${i}(int x) { return lib${i}_extra(x) + GEN$i; }
EOF
  cat >"$ws/lib${i}_extra.c" <<EOF
int lib${i}_extra(int x) {
  int s = 0;
  for (int k = 0; k < 64; k++) s += (x * k) ^ $i;
  return s;
}
EOF
  if [ $((i % 10)) -eq 9 ]; then
    cat >"$ws/bin$i.c" <<EOF
#include <stdio.h>
#include "lib$i.h"
int main(void) { printf("%d\\n", lib$i(3)); return 0; }
EOF
  fi
done

# ---------------------------------------------------------------- measuring
bz() {
  (cd "$ws" && bazel --nohome_rc --noworkspace_rc --output_user_root="$bazel_root" \
    --max_idle_secs=300 "$@")
}
common=(--color=no --curses=no --nosandbox_debug --incompatible_strict_action_env
  --experimental_repository_disable_download "--jobs=$jobs")
# CPU seconds of a process and its reaped children; with "own", of the process alone.
cpu_of() {
  local pid=$1 own=${2:-}
  [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || { echo 0; return; }
  awk -v hz="$(getconf CLK_TCK)" -v own="$own" \
    '{ sub(/^.*\) /, ""); print ($12 + $13 + (own ? 0 : $14 + $15)) / hz }' "/proc/$pid/stat"
}
# CPU seconds the whole machine has spent busy (all cores, anything but idle and iowait).
machine_busy() {
  awk -v hz="$(getconf CLK_TCK)" '$1 == "cpu" { print ($2 + $3 + $4 + $7 + $8 + $9) / hz }' /proc/stat
}
now() { date +%s.%N; }
# step NAME ARGS...: one timed build; prints "NAME wall bazel-cpu rexd-cpu machine-busy
# rexd-own-cpu processes-line".
step() {
  local name=$1
  shift
  bz clean >/dev/null 2>&1
  local bazel_pid
  bazel_pid=$(bz info server_pid 2>/dev/null)
  local b0 r0 o0 m0 t0 t1 log
  b0=$(cpu_of "$bazel_pid")
  m0=$(machine_busy)
  r0=$(cpu_of "$server_pid")
  o0=$(cpu_of "$server_pid" own)
  log=$tmp/$name-$run.log
  t0=$(now)
  bz build "${common[@]}" --profile="$tmp/$name-$run.profile.json" "$@" //... >"$log" 2>&1 || { cat "$log" >&2; exit 1; }
  t1=$(now)
  local b1 r1 o1 m1
  m1=$(machine_busy)
  b1=$(cpu_of "$bazel_pid")
  r1=$(cpu_of "$server_pid")
  o1=$(cpu_of "$server_pid" own)
  awk -v n="$name" -v t0="$t0" -v t1="$t1" -v b0="$b0" -v b1="$b1" -v r0="$r0" \
    -v r1="$r1" -v o0="$o0" -v o1="$o1" -v m0="$m0" -v m1="$m1" \
    -v p="$(grep -o '[0-9]* processes.*' "$log" | tail -n 1)" \
    'BEGIN { printf "%s %.2f %.2f %.2f %.2f %.2f %s\n", n, t1 - t0, b1 - b0, r1 - r0, m1 - m0, o1 - o0, p }'
}

results=$tmp/results
: >"$results"
# One unrecorded local build first, so the first recorded one does not pay for a cold JVM
# (which made run 1's local build 30-50% slower than later ones and flattered remote).
echo "== warm-up (local, not recorded)" >&2
run=0 step warmup --spawn_strategy=local >/dev/null
# And one unrecorded remote build against a throwaway rexd: Bazel's JVM compiles its remote
# code paths (gRPC, protobuf, the Merkle tree) during its first remote build, which took a
# fifth of the machine's CPU in that build. A team's long-lived Bazel server has done that
# long before; every recorded remote build still starts on a fresh, empty rexd.
remote_flags() {
  remote=(--remote_executor="$url" --spawn_strategy=remote --remote_local_fallback=false
    "${download_flags[@]}" --remote_timeout=120s)
}
echo "== warm-up (remote, on a throwaway rexd, not recorded)" >&2
start_rexd "$tmp/warmup-rexd"
remote_flags
run=0 step warmup-remote "${remote[@]}" >/dev/null
stop_rexd
for run in $(seq "$runs"); do
  echo "== run $run of $runs ($libs libraries, --jobs $jobs)" >&2
  step local --spawn_strategy=local | tee -a "$results" >&2
  extra=()
  [ -z "${REXD_TOML:-}" ] || mapfile -t extra <<<"$REXD_TOML"
  start_rexd "$tmp/rexd-$run" "${extra[@]}"
  remote_flags
  step remote "${remote[@]}" | tee -a "$results" >&2
  step cached "${remote[@]}" | tee -a "$results" >&2
  stop_rexd
done

echo
echo "| step | wall (median) | vs local | CPU: Bazel + rexd (median) | rexd's own CPU per remote action | cores busy | processes (last run) |"
echo "|---|---|---|---|---|---|---|"
median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
local_wall=$(awk '$1 == "local" { print $2 }' "$results" | median)
for s in local remote cached; do
  wall=$(awk -v s=$s '$1 == s { print $2 }' "$results" | median)
  bcpu=$(awk -v s=$s '$1 == s { print $3 }' "$results" | median)
  rcpu=$(awk -v s=$s '$1 == s { print $4 }' "$results" | median)
  busy=$(awk -v s=$s '$1 == s { print $5 / $2 }' "$results" | median)
  # rexd's own CPU (not its children's) per action it executed or answered from cache.
  own=$(awk -v s=$s '$1 == s {
      n = 0
      if (match($0, /[0-9]+ remote( cache hit)?[,.]/)) n = substr($0, RSTART, RLENGTH) + 0
      print (n ? $6 * 1000 / n : 0) }' "$results" | median)
  procs=$(awk -v s=$s '$1 == s { $1 = $2 = $3 = $4 = $5 = $6 = ""; line = $0 } END { print line }' "$results" | sed 's/^ *//')
  awk -v s="$s" -v w="$wall" -v l="$local_wall" -v b="$bcpu" -v r="$rcpu" -v c="$busy" \
    -v o="$own" -v p="$procs" \
    'BEGIN { printf "| %s | %.2f s | %.2fx | %.1f + %.1f s | %s | %.2f | %s |\n", s, w, w / l, b, r, (o > 0 ? sprintf("%.1f ms", o) : "-"), c, p }'
done
