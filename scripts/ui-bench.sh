#!/usr/bin/env bash
# Measures the web UI on a server that has already served heavy traffic: how long the
# overview, the actions page and an action's page take with the history full
# (ui.max_actions = 10,000 by default), and whether a browser polling the overview every
# second changes the gRPC figures (rexd-bench exec-noop, find-missing and batch, in rounds
# that alternate without and with the poller).
#
#   scripts/ui-bench.sh              FILL=12000 (cache hits sent first), ROUNDS=2
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release
cargo build --release --bin rexd --bin rexd-bench >&2
# shellcheck source=scripts/rexd-server.sh
source scripts/rexd-server.sh
dir=$(mktemp -d)
poller=""
trap '[ -n "$poller" ] && kill "$poller" 2>/dev/null; stop_rexd; rm -rf "$dir"' EXIT
start_rexd "$dir" '[metrics]' 'listen = "127.0.0.1:0"' '[sandbox]' 'backend = "plain"'
ui=$(sed -n 's/.*ui=\(http:[^ ]*\)\/.*/\1/p' "$dir/rexd.log" | head -n 1)
bench=("$bin/rexd-bench" --target "$url")

echo "== filling the history: ${FILL:-12000} cache hits, then 200 executions" >&2
"${bench[@]}" --cached-count "${FILL:-12000}" --exec-count 200 exec-cached exec-noop >/dev/null
curl -s -o "$dir/actions.html" "$ui/actions"
action=$(grep -o '/actions/sha256/[0-9a-f]*/[0-9]*' "$dir/actions.html" | awk 'NR == 1')

# Median and p95 of 40 fetches, in milliseconds.
timing() {
  for _ in $(seq 40); do curl -s -o /dev/null -w '%{time_total}\n' "$ui$1"; done |
    sort -n | awk '{t[NR]=$1*1000} END {printf "median %.2f ms, p95 %.2f ms\n", t[20], t[38]}'
}
echo "history: $(grep -o '[0-9]* shown of [0-9]* retained' "$dir/actions.html")"
echo "overview:      $(timing /)"
echo "actions page:  $(timing /actions)"
echo "action page:   $(timing "$action")"

for round in $(seq "${ROUNDS:-2}"); do
  for poll in without with; do
    if [ "$poll" = with ]; then
      (while :; do curl -s -o /dev/null "$ui/"; sleep 1; done) &
      poller=$!
    fi
    echo "== round $round, $poll a poller on the overview" >&2
    "${bench[@]}" exec-noop find-missing batch 2>/dev/null |
      grep -E 'exec-noop|find-missing|batch' | sed "s/^/round $round $poll: /" || true
    if [ -n "$poller" ]; then
      kill "$poller"
      wait "$poller" 2>/dev/null || true
      poller=""
    fi
  done
done
