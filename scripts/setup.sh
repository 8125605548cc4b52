#!/usr/bin/env bash
# Installs what the local stack and the test suite need, and nothing that is
# already there: from Debian, cmake (to build the database), softhsm2 (the
# PKCS#11 token the pkcs11 KEK provider is tested against), rsyslog (the SIEM
# forwarder's receiver in tests), pebble (the ACME server), haproxy (the load
# balancer in front of api replicas), openssl (test certificates), bind9 and
# bind9-dnsutils (the DNS-01 tests' primary name server, and dig), and curl
# and jq (the local run's API calls); and
# secantusd-rs, the MongoDB-protocol server the tests run against. Safe to
# run again.
set -euo pipefail

SECANTUS_VERSION="0.5.3-beta.196"
export PATH="$HOME/.cargo/bin:$PATH"

need_apt=()
command -v cmake >/dev/null 2>&1 || need_apt+=(cmake)
command -v softhsm2-util >/dev/null 2>&1 || need_apt+=(softhsm2)
[ -x /usr/sbin/rsyslogd ] || need_apt+=(rsyslog)
command -v pebble >/dev/null 2>&1 || need_apt+=(pebble)
command -v haproxy >/dev/null 2>&1 || need_apt+=(haproxy)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
[ -x /usr/sbin/named ] || need_apt+=(bind9)
command -v dig >/dev/null 2>&1 || need_apt+=(bind9-dnsutils)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v jq >/dev/null 2>&1 || need_apt+=(jq)
if [ "${#need_apt[@]}" -gt 0 ]; then
  echo "setup: installing ${need_apt[*]} from Debian" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

installed_version() {
  command -v secantusd-rs >/dev/null 2>&1 || return 1
  cargo install --list 2>/dev/null | grep -q "^secantus-mdb v${SECANTUS_VERSION}:" 
}
if ! installed_version; then
  echo "setup: building secantusd-rs ${SECANTUS_VERSION} (takes about 5 minutes on 2 cores)" >&2
  cargo install secantus-mdb --version "$SECANTUS_VERSION" --locked --ignore-rust-version
fi
echo "setup: ready (secantusd-rs at $(command -v secantusd-rs))" >&2
