#!/usr/bin/env bash
# `make fuzz`: builds the cargo-fuzz targets, seeds their corpora, runs each for FUZZ_SECONDS and
# prints one line per target. Fails when artifacts/ holds a finding (crash, leak, timeout, oom),
# from this run or an earlier one: delete the file once the bug it shows is fixed.
# Usage: fuzz.sh build | run   (settings from the environment: see fuzz.mk)
set -euo pipefail
cd "$(dirname "$0")"
fuzz_dir=$PWD
seconds=${FUZZ_SECONDS:-60}
timeout=${FUZZ_TIMEOUT:-10}
toolchain=${FUZZ_TOOLCHAIN:-nightly}
targets=${FUZZ_TARGETS:-parse_value parse_sha256sum unpack_targz unpack_tar}
cargo_fuzz_version=${CARGO_FUZZ_VERSION:?}
# Its own build directory: the nightly, instrumented build must not fight `make build` for the
# main target directory's lock or evict its artefacts.
export CARGO_TARGET_DIR=$fuzz_dir/target

if ! rustup run "$toolchain" rustc --version >/dev/null 2>&1; then
  echo "fuzz: needs the $toolchain toolchain (rustup toolchain install $toolchain)" >&2
  exit 1
fi
if [[ $(cargo fuzz --version 2>/dev/null) != "cargo-fuzz $cargo_fuzz_version" ]]; then
  # A temporary build directory, not ours.
  env -u CARGO_TARGET_DIR cargo install --locked cargo-fuzz --version "$cargo_fuzz_version"
fi

# Run from agent/, where cargo fuzz finds its project in fuzz/.
cd ..
# Fuzz the dependency versions that ship: the workspace's Cargo.lock, to which cargo adds only
# what the fuzz crate needs besides (libfuzzer-sys and its two dependencies).
cp ../Cargo.lock fuzz/Cargo.lock
# cargo fuzz's defaults: optimised, with debug assertions and overflow checks (which --release
# would turn off), and AddressSanitizer.
build() {
  # shellcheck disable=SC2086 # one word per target
  for t in $targets; do
    cargo "+$toolchain" fuzz build "$t"
  done
}
build
[[ ${1:-run} == build ]] && exit 0

# The archive targets' checks of the unpacked tree must themselves catch an escape.
rustc --edition 2021 --test -o "$fuzz_dir/target/tree-selftest" "$fuzz_dir/src/tree.rs"
"$fuzz_dir/target/tree-selftest" -q

bash "$fuzz_dir/seeds.sh" "$fuzz_dir/corpus"
# The archive targets unpack into this directory (tmpfs when there is one): see src/lib.rs.
base=/dev/shm
[[ -d $base && -w $base ]] || base=${TMPDIR:-/tmp}
scratch=$(mktemp -d "$base/drover-fuzz.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
export DROVER_FUZZ_TMPDIR=$scratch

summary=()
total_findings=0
for t in $targets; do
  log=$fuzz_dir/target/$t.log
  mkdir -p "$fuzz_dir/artifacts/$t"
  echo "fuzz: $t for $seconds s (log: ${log#"$fuzz_dir"/})"
  start=$(date +%s)
  status=0
  cargo "+$toolchain" fuzz run "$t" -- \
    -max_total_time="$seconds" -timeout="$timeout" -print_final_stats=1 >"$log" 2>&1 || status=$?
  took=$(($(date +%s) - start))
  stat() { sed -n "s/^stat::$1: *//p" "$log" | tail -1; }
  execs=$(stat number_of_executed_units)
  rate=$(stat average_exec_per_sec)
  # Files kept in corpus/ (they add up over runs), and the corpus libFuzzer itself ended with.
  corpus=$(find "$fuzz_dir/corpus/$t" -type f | wc -l)
  active=$(sed -n 's/.*DONE .* corp: \([^ ]*\).*/\1/p' "$log" | tail -1)
  findings=$(find "$fuzz_dir/artifacts/$t" -type f \
    \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' -o -name 'oom-*' \) | wc -l)
  if [[ -z $execs ]]; then
    # No final stats: libFuzzer did not get to run (a build or start-up failure).
    echo "fuzz: $t exited $status without statistics; the end of its log:" >&2
    tail -n 30 "$log" >&2
    findings=$((findings + 1))
    execs=0 rate=0
  elif ((status != 0)); then
    echo "fuzz: $t exited $status; the end of its log:" >&2
    grep -E -A 40 '^(thread .* panicked|==[0-9]+==ERROR)' "$log" | head -n 60 >&2 || tail -n 40 "$log" >&2
    # cargo fuzz's own account: the input file, its bytes, how to replay and minimise it.
    sed -n '/^Failing input:/,/^─/p' "$log" >&2
    ((findings > 0)) || findings=1
  fi
  total_findings=$((total_findings + findings))
  summary+=("$(printf '%-16s %10s execs %7s execs/s %4s s   corpus %5s files (%s)   findings %s' \
    "$t" "$execs" "$rate" "$took" "$corpus" "${active:-?}" "$findings")")
done

echo
for line in "${summary[@]}"; do echo "fuzz: $line"; done
if ((total_findings > 0)); then
  echo "fuzz: $total_findings finding(s): agent/fuzz/artifacts/<target>/; replay one with" \
    "cargo +$toolchain fuzz run <target> fuzz/artifacts/<target>/<file> (in agent/)" >&2
  exit 1
fi
