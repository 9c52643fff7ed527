#!/usr/bin/env bash
# Fuzzes each target (all, or those named) for REXD_FUZZ_SECONDS (default 60) seconds, after
# seeding its corpus with a few small generated inputs. Exits non-zero on the first crash;
# the crashing input is left in fuzz/artifacts/TARGET/.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${REXD_FUZZ_SECONDS:-60}
# cargo-fuzz passes nightly-only flags (-Zsanitizer); this lets the stable toolchain accept them.
export RUSTC_BOOTSTRAP=1

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(digest_parse resource_name directory_tree config_load bot_messages)

h=e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855
seed() { mkdir -p "corpus/$1" && printf "$3" >"corpus/$1/seed-$2"; }

# digest_parse: 8 bytes of little-endian size, then the hash.
seed digest_parse zero '\0\0\0\0\0\0\0\0'$h
seed digest_parse max '\377\377\377\377\377\377\377\177'$h
seed digest_parse negative '\377\377\377\377\377\377\377\377'$h
seed digest_parse upper '\5\0\0\0\0\0\0\0'${h^^}
seed digest_parse gitsha1 '\0\0\0\0\0\0\0\0'${h:0:40}
# resource_name: read and write names.
seed resource_name read "blobs/$h/0"
seed resource_name read-zstd "a/b/compressed-blobs/zstd/blake3/$h/5"
seed resource_name write "inst/uploads/u1/blobs/sha256/$h/0/meta"
seed resource_name write-zstd "uploads/u2/compressed-blobs/identity/$h/7"
# directory_tree: mode byte, 8 bytes of depth, then (mode 0) an encoded Directory with file
# `a`, directory `b` and symlink `c -> ../x`.
seed directory_tree proto '\0\1\0\0\0\0\0\0\0\n\3\n\1a\022\3\n\1b\032\t\n\1c\022\4../x'
seed directory_tree built '\1\0\0\0\0\0\0\0\0'
# config_load: the documented default and a few small documents.
mkdir -p corpus/config_load && cp ../config/rexd.toml corpus/config_load/seed-default
seed config_load instances '[[instances]]\nname = "a/b"\nallow_ac_updates = false\n'
seed config_load storage '[storage]\nmax_batch_total_size = "8MiB"\nlow_water_percent = 80\n'

# bot_messages: an UpdateBotSessionRequest (name "botSessions/s") holding one COMPLETED lease
# whose result is an empty ActionResult.
seed bot_messages lease '\n\015botSessions/s\022\113*\111:\001l\020\004J\102\n\100type.googleapis.com/build.bazel.remote.execution.v2.ActionResult'

cargo fuzz build
for t in "${targets[@]}"; do
  echo "== fuzzing $t for ${seconds}s"
  # A hang counts as a crash after 20 s; the per-input NEW/REDUCE/pulse lines are dropped
  # from the log (awk never fails, so pipefail still reports libFuzzer's exit status).
  cargo fuzz run "$t" -- -max_total_time="$seconds" -timeout=20 -print_final_stats=1 2>&1 |
    awk '!/^#[0-9]+\t+(NEW|REDUCE|pulse|RELOAD) /'
done
