#!/usr/bin/env bash
# The supply-chain checks of docs/supply-chain.md over Cargo.lock:
# `cargo deny check` (advisories, licences, duplicate versions, sources;
# deny.toml) and `cargo audit` (advisories; .cargo/audit.toml), both
# installed here at pinned versions (debug builds: they build in a third of
# the time and run in seconds either way).
#
# The RustSec advisory database is read from CAP_ADVISORY_DB (a clone or
# checkout of rustsec/advisory-db) when set, else fetched from GitHub. When
# neither is possible, the advisory checks are reported NOT checked and the
# rest still runs; CAP_REQUIRE_ADVISORIES=1 makes that a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
CARGO_DENY_VERSION="0.20.2"
CARGO_AUDIT_VERSION="0.22.2"
if [ "$(cargo deny --version 2>/dev/null)" != "cargo-deny $CARGO_DENY_VERSION" ]; then
  echo "supply-chain: installing cargo-deny $CARGO_DENY_VERSION" >&2
  cargo install --locked --debug --quiet cargo-deny --version "$CARGO_DENY_VERSION"
fi
# It names itself "cargo-audit-audit 0.22.2".
if ! cargo audit --version 2>/dev/null | grep -q " $CARGO_AUDIT_VERSION\$"; then
  echo "supply-chain: installing cargo-audit $CARGO_AUDIT_VERSION" >&2
  cargo install --locked --debug --quiet cargo-audit --version "$CARGO_AUDIT_VERSION"
fi

# cargo-deny reads every crate of the lock file, those of other platforms
# too, which a build on this one never downloads: fetch them first (a fresh
# machine has none of them in its cache).
cargo fetch --locked --quiet
echo "supply-chain: cargo deny: licences, duplicate versions, sources" >&2
cargo deny --locked --offline check bans licenses sources

# Where cargo-deny 0.20 keeps the default database (named after its URL).
deny_db="${CARGO_HOME:-$HOME/.cargo}/advisory-dbs/advisory-db-3157b0e258782691"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
db=""
if [ -n "${CAP_ADVISORY_DB:-}" ]; then
  git clone --quiet "$CAP_ADVISORY_DB" "$work/advisory-db"
  db="$work/advisory-db"
elif timeout 60 git clone --quiet --depth 1 https://github.com/rustsec/advisory-db "$work/advisory-db" 2>/dev/null; then
  db="$work/advisory-db"
fi
if [ -z "$db" ]; then
  echo "supply-chain: advisories NOT checked: no advisory database (set CAP_ADVISORY_DB; GitHub is out of reach)" >&2
  [ "${CAP_REQUIRE_ADVISORIES:-0}" = 1 ] && exit 1
  exit 0
fi
rm -rf "$deny_db"
mkdir -p "$(dirname "$deny_db")"
cp -r "$db" "$deny_db"
echo "supply-chain: advisory database of $(git -C "$db" log -1 --format=%cs)" >&2
echo "supply-chain: cargo deny: advisories" >&2
cargo deny --locked --offline check advisories
echo "supply-chain: cargo audit" >&2
cargo audit --no-fetch --db "$db" --stale
echo "supply-chain: all checks passed" >&2
