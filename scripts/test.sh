#!/usr/bin/env bash
# Runs the whole test suite: installs what it needs (scripts/setup.sh), then
# the unit tests and the one integration-test binary (tests/it) against a
# throw-away secantusd-rs — or against a real replica set when
# CAP_TEST_MONGO_URI is set.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
scripts/setup.sh
cargo test --locked "$@"
# Benchmarks are run by hand (`cargo bench`); here they only have to compile.
cargo check --locked --benches --quiet
