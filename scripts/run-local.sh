#!/usr/bin/env bash
# The local single-node stack, end to end: a secantusd-rs database, a local
# ACME CA (Debian's Pebble with pebble-challtestsrv as its DNS, all on
# loopback), and `certautopilot all` (API, worker and scheduler in one
# process). It declares a fixture project ("local", granted
# local.example.test), issuer ("local pebble") and certificate ("www")
# through the API — or, run again on the same state, finds the ones it
# declared before and declares only what is missing — waits for the
# certificate, and prints where its PEM chain is and its fingerprint. Then it
# keeps running until Ctrl-C. Pebble keeps nothing between runs: on a later
# run the reused issuer's ACME account is unknown to it, so a new order on it
# (a renewal, POST .../issue) fails with accountDoesNotExist; remove the state
# directory to start afresh.
#
# The database syncs its log on every commit (--sync-on-commit): a write the
# API acknowledged survives the database being killed.
#
# State lives under .local/ (database, key ring, admin token, certificates)
# and is kept between runs. Knobs (defaults in parentheses):
#   CAP_LOCAL_DIR          where the state lives (./.local)
#   CAP_LOCAL_DB_PORT      the database (27117)
#   CAP_LOCAL_ACME_PORT    Pebble's ACME directory (14000; its management
#                          interface on this plus 1000)
#   CAP_LOCAL_HTTP01_PORT  where Pebble validates HTTP-01 (5002; TLS-ALPN-01
#                          on this plus 1)
#   CAP_LOCAL_DNS_PORT     pebble-challtestsrv, Pebble's DNS (8053; its
#                          management interface on this plus 2)
#   CAP_HTTP_ADDR          the API (127.0.0.1:8080)
#   CARGO_TARGET_DIR       where the binary is built (./target)
# and every CAP_* setting of the README.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
scripts/setup.sh

dir="${CAP_LOCAL_DIR:-$PWD/.local}"
port="${CAP_LOCAL_DB_PORT:-27117}"
acme_port="${CAP_LOCAL_ACME_PORT:-14000}"
http01_port="${CAP_LOCAL_HTTP01_PORT:-5002}"
dns_port="${CAP_LOCAL_DNS_PORT:-8053}"
mkdir -p "$dir/pebble" "$dir/certs"

echo "run-local: building certautopilot" >&2
cargo build --locked --quiet
bin="${CARGO_TARGET_DIR:-$PWD/target}/debug/certautopilot"

pids=()
app_pid=""
cleanup() {
  if [ -n "$app_pid" ] && kill -INT "$app_pid" 2>/dev/null; then wait "$app_pid" 2>/dev/null || true; fi
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# setsid: a Ctrl-C in the terminal reaches certautopilot first, which hands
# its work back through the database; the rest is stopped after it.
# --sync-on-commit: without it a killed database loses the writes of its last
# 20-40 ms, although they were acknowledged with w=majority.
setsid secantusd-rs --host 127.0.0.1 --port "$port" --storage-path "$dir/db" --cache-size 512M \
  --sync-on-commit --log-level WARNING >"$dir/db.log" 2>&1 &
pids+=($!)

# Pebble's own HTTPS listener needs a certificate: a private CA, made once.
if [ ! -f "$dir/pebble/cert.pem" ]; then
  ( cd "$dir/pebble"
    key=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650)
    openssl req -x509 "${key[@]}" -subj "/CN=local ACME listener CA" -keyout ca.key -out ca.pem 2>/dev/null
    openssl req -x509 "${key[@]}" -subj "/CN=localhost" -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
      -addext "basicConstraints=critical,CA:FALSE" -CA ca.pem -CAkey ca.key -keyout key.pem -out cert.pem 2>/dev/null )
fi
cat >"$dir/pebble/pebble.json" <<JSON
{"pebble": {"listenAddress": "127.0.0.1:$acme_port", "managementListenAddress": "127.0.0.1:$((acme_port + 1000))",
  "certificate": "$dir/pebble/cert.pem", "privateKey": "$dir/pebble/key.pem",
  "httpPort": $http01_port, "tlsPort": $((http01_port + 1)), "ocspResponderURL": "", "externalAccountBindingRequired": false}}
JSON
setsid pebble-challtestsrv -defaultIPv4 127.0.0.1 -defaultIPv6 "" -http01 "" -https01 "" -tlsalpn01 "" \
  -dns01 "127.0.0.1:$dns_port" -management "127.0.0.1:$((dns_port + 2))" >"$dir/pebble/challtestsrv.log" 2>&1 &
pids+=($!)
PEBBLE_VA_NOSLEEP=1 setsid pebble -config "$dir/pebble/pebble.json" -dnsserver "127.0.0.1:$dns_port" \
  >"$dir/pebble/pebble.log" 2>&1 &
pids+=($!)

export CAP_MONGO_URI="${CAP_MONGO_URI:-mongodb://127.0.0.1:$port/certautopilot?replicaSet=secantus}"
export CAP_HTTP_ADDR="${CAP_HTTP_ADDR:-127.0.0.1:8080}"
export CAP_CHALLENGE_ADDR="${CAP_CHALLENGE_ADDR:-127.0.0.1:$http01_port}"
export CAP_LOG_FORMAT="${CAP_LOG_FORMAT:-text}"
# Pebble (the CA), bind9 and whatever a developer aims targets, channels and
# drift scans at here listen on loopback, which the egress policy refuses
# unless a purpose's list allows it: opened for every purpose on this laptop.
for purpose in ACME DNS DRIFT TARGETS NOTIFY; do
  allow="CAP_EGRESS_ALLOW_$purpose"
  export "$allow=${!allow:-127.0.0.0/8,::1}"
done
# A key ring of its own, created once and kept with the database.
export CAP_KEK_FILE="${CAP_KEK_FILE:-$dir/kek.json}"
[ -f "$CAP_KEK_FILE" ] || "$bin" kek init --file "$CAP_KEK_FILE"

echo "run-local: waiting for the database on 127.0.0.1:$port" >&2
for _ in $(seq 1 100); do
  if "$bin" migrate >/dev/null 2>&1; then break; fi
  sleep 0.2
done
"$bin" migrate

"$bin" all >"$dir/certautopilot.log" 2>&1 &
app_pid=$!
for _ in $(seq 1 100); do
  curl -fsS "http://$CAP_HTTP_ADDR/readyz" >/dev/null 2>&1 && break
  kill -0 "$app_pid" 2>/dev/null || { tail -20 "$dir/certautopilot.log" >&2; exit 1; }
  sleep 0.2
done

# The bootstrap token, made once (shown once by `token create`, kept here).
if [ ! -s "$dir/admin-token" ]; then
  (umask 077; "$bin" token create --role admin --description "run-local" >"$dir/admin-token")
fi
token="$(cat "$dir/admin-token")"
api() { # METHOD PATH [JSON]: prints the answer's body; an answer >= 400 is named and fails
  local out code
  out=$(curl -sS -X "$1" "http://$CAP_HTTP_ADDR/v1$2" -H "Authorization: Bearer $token" \
    -H 'Content-Type: application/json' ${3:+--data "$3"} -w '\n%{http_code}')
  code=${out##*$'\n'}
  out=${out%$'\n'*}
  if [ "$code" -ge 400 ]; then
    echo "run-local: $1 $2 answered $code: $out" >&2
    return 1
  fi
  printf '%s\n' "$out"
}
find_id() { # LIST_PATH JQ_CONDITION: the id of the first item that meets it, every page read; empty if none
  local after="" body id
  while :; do
    # (errexit does not reach into command substitutions: a failed call must
    # not read as "none found", which would declare a second fixture.)
    body=$(api GET "$1?limit=200${after:+&after=$after}") || return 1
    id=$(jq -r "first(.items[] | select($2) | .id) // empty" <<<"$body")
    [ -n "$id" ] && { echo "$id"; return 0; }
    after=$(jq -r '.next // empty' <<<"$body")
    [ -n "$after" ] || return 0
  done
}

# The fixture: what an earlier run against this state declared is found by
# name (the oldest first) and reused; only what is missing is declared.
declared=()
acme_url="https://127.0.0.1:$acme_port/dir"
project=$(find_id /projects '.name == "local"')
if [ -z "$project" ]; then
  project=$(api POST /projects '{"name":"local"}' | jq -r .id)
  declared+=(project)
fi
# A project certifies only the names a global admin granted it.
if ! api GET "/projects/$project/domains" | jq -e '.domains[] | select(.name == "local.example.test")' >/dev/null; then
  api PUT "/projects/$project/domains" '{"domains":["local.example.test"]}' >/dev/null
  declared+=(grant)
fi
issuer=$(find_id "/projects/$project/issuers" ".name == \"local pebble\" and .directory_url == \"$acme_url\"")
if [ -z "$issuer" ]; then
  issuer=$(api POST "/projects/$project/issuers" "$(jq -n --arg url "$acme_url" \
    --rawfile ca "$dir/pebble/ca.pem" \
    '{name: "local pebble", directory_url: $url, contact: "ops@example.test", challenge: "http-01", ca_bundle_pem: $ca}')" | jq -r .id)
  declared+=(issuer)
fi
cert=$(find_id "/projects/$project/certificates" ".name == \"www\" and .issuer_id == \"$issuer\"")
if [ -z "$cert" ]; then
  cert=$(api POST "/projects/$project/certificates" "$(jq -n --arg issuer "$issuer" \
    '{name: "www", dns_names: ["www.local.example.test", "local.example.test"], issuer_id: $issuer, key_algorithm: "ecdsa-p256"}')" | jq -r .id)
  declared+=(certificate)
fi
echo "run-local: project $project, issuer $issuer, certificate $cert (declared now: ${declared[*]:-nothing, all found}); waiting for it to be issued" >&2

status=""
for i in $(seq 1 300); do
  body=$(api GET "/projects/$project/certificates/$cert") || { sleep 0.2; continue; }
  status=$(jq -r .status <<<"$body")
  [ "$status" = issued ] && break
  [ $((i % 10)) = 0 ] && echo "run-local: $status $(jq -r '.last_error // ""' <<<"$body")" >&2
  sleep 0.2
done
if [ "$status" != issued ]; then
  echo "run-local: not issued: $(jq -c . <<<"$body")" >&2
  exit 1
fi
jq -r .chain_pem <<<"$body" >"$dir/certs/$cert.pem"
echo "run-local: issued. chain: $dir/certs/$cert.pem" >&2
echo "run-local: sha256 fingerprint: $(jq -r .fingerprint_sha256 <<<"$body")  serial: $(jq -r .serial <<<"$body")  not after: $(jq -r .not_after <<<"$body")" >&2
echo "run-local: API on http://$CAP_HTTP_ADDR (token in $dir/admin-token); logs in $dir/certautopilot.log; Ctrl-C stops it" >&2
wait "$app_pid"
