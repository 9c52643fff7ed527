#!/usr/bin/env bash
# Object-store tier figures: a single-node Garage on loopback, measured first alone with a
# plain S3 client (curl's SigV4 signing: one PUT and one GET of a 256 MiB object), then
# through two rexd frontends on one bucket with `rexd-bench tier`:
#   - a 256 MiB ByteStream upload to frontend A (write-through: acknowledged once in the
#     bucket), read back at frontend B, whose disk lacks it;
#   - FindMissingBlobs of 10,000 digests, all in the bucket and none on B's disk: the first
#     call (cold: HEADs) and the median of the next ones (warm: B's record of known objects).
# Needs Garage (`cargo install --locked --root /opt/garage garage`, or $REXD_GARAGE).
#
#   scripts/remote-bench.sh
#   SIZE=64MiB COUNT=2000 scripts/remote-bench.sh
#   ROUNDS=3 scripts/remote-bench.sh    # the same frontends, measured again after traffic
#
# The JSON report goes to target/bench/remote-*.json; BENCHMARKS.md, "Object-store tier",
# has the figures.
set -euo pipefail
cd "$(dirname "$0")/.."
garage=${REXD_GARAGE:-$(command -v garage || echo /opt/garage/bin/garage)}
[ -x "$garage" ] || { echo "remote-bench.sh needs garage; see the header" >&2; exit 1; }
size=${SIZE:-256MiB}
count=${COUNT:-10000}
calls=${CALLS:-20}
rounds=${ROUNDS:-1}
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
pids=()
cleanup() {
  # Frontends are started in command substitutions, so their pids come from files.
  for f in "$tmp"/*.pid; do [ -e "$f" ] && pids+=("$(cat "$f")"); done
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

# CPU seconds (user + system) a process has used so far.
cpu_of() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$1/stat"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
s3_port=$(free_port)
rpc_port=$(free_port)
key_id=GK$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
cat >"$tmp/garage.toml" <<EOF
metadata_dir = "$tmp/garage/meta"
data_dir = "$tmp/garage/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc_port"
rpc_public_addr = "127.0.0.1:$rpc_port"
rpc_secret = "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3_port"
root_domain = ".s3.garage.localhost"
EOF
g() { "$garage" -c "$tmp/garage.toml" "$@"; }
RUST_LOG=warn "$garage" -c "$tmp/garage.toml" server >"$tmp/garage.log" 2>&1 &
pids+=($!)
garage_pid=$!
for _ in $(seq 300); do g status >/dev/null 2>&1 && break; sleep 0.1; done
node=$(g node id -q | cut -d@ -f1)
g layout assign -z dc1 -c 10G "$node" >/dev/null
g layout apply --version 1 >/dev/null
g bucket create rexd >/dev/null
g key import --yes -n bench "$key_id" "$secret" >/dev/null
g bucket allow --read --write --owner rexd --key "$key_id" >/dev/null
printf 'access_key_id = "%s"\nsecret_access_key = "%s"\n' "$key_id" "$secret" >"$tmp/creds.toml"
endpoint=http://127.0.0.1:$s3_port

echo "== Garage alone, curl --aws-sigv4 (one PUT, one GET)" >&2
bytes=$(python3 -c "import re,sys; n,u=re.fullmatch(r'(\d+)(MiB|GiB)','$size').groups(); print(int(n)*(1<<20 if u=='MiB' else 1<<30))")
head -c "$bytes" /dev/urandom >"$tmp/object"
s3() { curl -sS --fail --aws-sigv4 "aws:amz:garage:s3" --user "$key_id:$secret" \
  -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" "$@"; }
g0=$(cpu_of "$garage_pid")
put_s=$(s3 -o /dev/null -w '%{time_total}' -T "$tmp/object" "$endpoint/rexd/plain/object")
g1=$(cpu_of "$garage_pid")
get_s=$(s3 -o "$tmp/object.back" -w '%{time_total}' "$endpoint/rexd/plain/object")
g2=$(cpu_of "$garage_pid")
echo "garage CPU: PUT $(python3 -c "print(round($g1-$g0,2))") s, GET $(python3 -c "print(round($g2-$g1,2))") s" >&2
cmp -s "$tmp/object" "$tmp/object.back" || { echo "GET returned other bytes" >&2; exit 1; }
rm -f "$tmp/object" "$tmp/object.back"
plain_put=$(python3 -c "print(round($bytes/1e6/$put_s, 1))")
plain_get=$(python3 -c "print(round($bytes/1e6/$get_s, 1))")
echo "garage alone: PUT $plain_put MB/s, GET $plain_get MB/s ($size)" >&2

echo "== two rexd frontends on the bucket" >&2
start_rexd() {
  local name=$1 port
  port=$(free_port)
  cat >"$tmp/$name.toml" <<EOF
log_level = "warn"
[storage.remote]
endpoint = "$endpoint"
bucket = "rexd"
prefix = "bench"
region = "garage"
credentials_file = "$tmp/creds.toml"
[execution]
enabled = false
[metrics]
listen = "127.0.0.1:$(free_port)"
EOF
  "$bin/rexd" serve --config "$tmp/$name.toml" --listen "127.0.0.1:$port" \
    --data-dir "$tmp/$name-data" >"$tmp/$name.log" 2>&1 &
  echo $! >"$tmp/$name.pid"
  for _ in $(seq 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
  done
  echo "grpc://127.0.0.1:$port"
}
a=$(start_rexd a)
b=$(start_rexd b)
for round in $(seq "$rounds"); do
report="$out/remote-$stamp-$round.json"
echo "== round $round of $rounds" >&2
before="$(cpu_of "$garage_pid") $(cpu_of "$(cat "$tmp/a.pid")") $(cpu_of "$(cat "$tmp/b.pid")")"
"$bin/rexd-bench" --target "$a" --second-target "$b" --upload-size "$size" \
  --find-missing-count "$count" --find-missing-calls "$calls" --json tier >"$report"
after="$(cpu_of "$garage_pid") $(cpu_of "$(cat "$tmp/a.pid")") $(cpu_of "$(cat "$tmp/b.pid")")"
python3 - "$report" "$plain_put" "$plain_get" "$before" "$after" <<'EOF'
import json, sys
b, a = [list(map(float, x.split())) for x in sys.argv[4:6]]
print("CPU during tier:   garage %.2f s, rexd A %.2f s, rexd B %.2f s" % tuple(y - x for x, y in zip(b, a)))
figures = json.load(open(sys.argv[1]))["figures"]
print(f"garage alone:       PUT {sys.argv[2]} MB/s, GET {sys.argv[3]} MB/s")
print(f"through rexd:       upload {figures['tier_upload_mb_per_s']:.1f} MB/s (A, write-through), "
      f"download {figures['tier_download_mb_per_s']:.1f} MB/s (B, from the bucket)")
print(f"FindMissingBlobs:   {figures['tier_find_missing_cold_ms']:.1f} ms cold, "
      f"{figures['tier_find_missing_warm_ms']:.2f} ms warm")
EOF
echo "report: $report" >&2
done
