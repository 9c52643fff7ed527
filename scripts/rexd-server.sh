# Sourced by the benchmark scripts: starts and stops one rexd on a free loopback port.
#
#   start_rexd DIR [TOML LINE...]   config DIR/rexd.toml (listen on port 0, data in DIR/data,
#                                   then the given lines), log DIR/rexd.log; sets
#                                   server_pid and url (grpc://127.0.0.1:PORT)
#   stop_rexd                       SIGTERM and wait
# Needs $bin, the directory holding the rexd binary.
server_pid=""
url=""

start_rexd() {
  local dir=$1
  shift
  mkdir -p "$dir"
  {
    echo 'listen = "127.0.0.1:0"'
    echo "data_dir = \"$dir/data\""
    printf '%s\n' "$@"
  } >"$dir/rexd.toml"
  NO_COLOR=1 RUST_LOG=${RUST_LOG:-info} "$bin/rexd" --config "$dir/rexd.toml" 2>"$dir/rexd.log" &
  server_pid=$!
  local addr=""
  for _ in $(seq 300); do
    # Port 0 lets the kernel pick a free port; the log says which.
    addr=$(sed -n 's/.*rexd serving.*local_addr=\([0-9.]*:[0-9]*\).*/\1/p' "$dir/rexd.log" | head -n 1)
    [ -n "$addr" ] && break
    if ! kill -0 "$server_pid" 2>/dev/null; then
      echo "rexd did not start:" >&2
      cat "$dir/rexd.log" >&2
      server_pid=""
      return 1
    fi
    sleep 0.1
  done
  [ -n "$addr" ] || { echo "rexd did not report its address" >&2; return 1; }
  url="grpc://$addr"
}

stop_rexd() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid"
    wait "$server_pid" || true
  fi
  server_pid=""
}

# The server's resident memory in MiB.
rss_mib() {
  awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$server_pid/status"
}
