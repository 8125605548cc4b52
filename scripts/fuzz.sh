#!/usr/bin/env bash
# Runs the fuzz targets (fuzz/fuzz_targets/) with cargo fuzz and libFuzzer,
# each for SECONDS (default 600, the by-hand run; CI runs 20), on its seed
# corpus (fuzz/corpus/<target>, in git) plus what earlier runs found
# (.fuzz/<target>, not in git), with debug assertions (so an overflow
# panics). Prints each target's executions, coverage
# and corpus size; exits non-zero if any target crashed, leaked, or timed
# out (its input is saved under fuzz/artifacts/<target>/).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# The machine has only a stable toolchain: RUSTC_BOOTSTRAP=1 lets it take
# the -Z flags cargo fuzz passes, and --sanitizer none leaves out
# AddressSanitizer (the code under test is safe Rust; a panic, an
# unbounded allocation past -rss_limit_mb, or a hang past -timeout is what
# is looked for).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
seconds="${1:-600}"
shift || true
CARGO_FUZZ_VERSION="0.13.2"
if [ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
  echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION" >&2
  cargo install --locked --quiet cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi
export RUSTC_BOOTSTRAP=1
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
  mapfile -t targets < <(cd fuzz && cargo fuzz list)
fi
echo "fuzz: building ${#targets[@]} targets" >&2
(cd fuzz && cargo fuzz build --sanitizer none --debug-assertions >&2)
# Where cargo fuzz put them: fuzz/target, or CARGO_TARGET_DIR when set.
target_dir="${CARGO_TARGET_DIR:-fuzz/target}"
case "$target_dir" in /*) ;; *) target_dir="$PWD/$target_dir" ;; esac
bin="$target_dir/$(rustc -vV | sed -n 's/^host: //p')/release"
failed=()
for t in "${targets[@]}"; do
  mkdir -p ".fuzz/$t"
  log=".fuzz/$t.log"
  echo "fuzz: $t for ${seconds}s" >&2
  # The binary itself, not `cargo fuzz run`: that would rebuild whenever
  # a source file changed since the build above.
  mkdir -p "fuzz/artifacts/$t"
  if "$bin/$t" ".fuzz/$t" "fuzz/corpus/$t" -artifact_prefix="fuzz/artifacts/$t/" \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
        -print_final_stats=1 >"$log" 2>&1; then
    status=ok
  else
    status=FAILED
    failed+=("$t")
  fi
  execs=$(grep -m1 '^stat::number_of_executed_units' "$log" | awk '{print $2}' || true)
  cov=$(grep -E '#[0-9]+.*cov: ' "$log" | tail -1 | sed -E 's/.*cov: ([0-9]+).*/\1/' || true)
  corpus=$(find ".fuzz/$t" -type f | wc -l)
  printf 'fuzz: %-14s %-6s executions %s, coverage %s edges, corpus %s inputs\n' \
    "$t" "$status" "${execs:-?}" "${cov:-?}" "$corpus"
  if [ "$status" = FAILED ]; then
    grep -E 'panicked|ERROR: libFuzzer|SUMMARY|Test unit written' "$log" | head -5 >&2 || true
  fi
done
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz: failed: ${failed[*]} (logs in .fuzz/, inputs in fuzz/artifacts/)" >&2
  exit 1
fi
