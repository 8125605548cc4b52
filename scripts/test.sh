#!/usr/bin/env bash
# Runs the whole test suite: installs what it needs (scripts/setup.sh), then
# the unit tests and the one integration-test binary (tests/it) against a
# throw-away secantusd-rs — or against a real replica set when
# CAP_TEST_MONGO_URI is set — and then every chaos scenario in its short
# form (chaos/README.md: 30 s each, about 10 minutes in all; they need root,
# for network namespaces). Arguments go to `cargo test` and skip the chaos
# scenarios, as does CAP_TEST_CHAOS=0. Without arguments it also runs the
# supply-chain checks (scripts/supply-chain.sh) and every fuzz target for
# CAP_TEST_FUZZ_SECS (default 20) seconds (scripts/fuzz.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
scripts/setup.sh
cargo test --locked "$@"
if [ "$#" -eq 0 ] && [ "${CAP_TEST_CHAOS:-1}" != 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    chaos/run all --duration 30 --report .chaos/short-report.json
  else
    echo "test.sh: the chaos scenarios need root (network namespaces): skipped" >&2
  fi
fi
# Benchmarks are run by hand (`cargo bench`); here they only have to compile.
cargo check --locked --benches --quiet
if [ "$#" -eq 0 ]; then
  # The supply-chain checks (docs/supply-chain.md), and every fuzz target
  # briefly on its corpus (scripts/fuzz.sh 600 is the by-hand run).
  scripts/supply-chain.sh
  scripts/fuzz.sh "${CAP_TEST_FUZZ_SECS:-20}"
fi
