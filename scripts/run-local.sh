#!/usr/bin/env bash
# The local single-node stack: a secantusd-rs database under .local/ (kept
# between runs), schema migrations, and `certautopilot all` (API, worker and
# scheduler in one process) on http://127.0.0.1:8080. Ctrl-C stops both.
#
# Knobs: CAP_LOCAL_DIR (default ./.local), CAP_LOCAL_DB_PORT (default 27117),
# and every CAP_* setting of the README. The key ring is .local/kek.json
# unless CAP_KEK_FILE says otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
scripts/setup.sh

dir="${CAP_LOCAL_DIR:-$PWD/.local}"
port="${CAP_LOCAL_DB_PORT:-27117}"
mkdir -p "$dir"

echo "run-local: building certautopilot" >&2
cargo build --locked --quiet
bin="$PWD/target/debug/certautopilot"

# setsid: a Ctrl-C in the terminal reaches certautopilot, which hands its work
# back through the database; the database is stopped after it.
setsid secantusd-rs --host 127.0.0.1 --port "$port" --storage-path "$dir/db" --cache-size 512M \
  --log-level WARNING >"$dir/db.log" 2>&1 &
db_pid=$!
app_pid=""
cleanup() {
  [ -n "$app_pid" ] && kill -INT "$app_pid" 2>/dev/null && wait "$app_pid" 2>/dev/null || true
  kill "$db_pid" 2>/dev/null || true
  wait "$db_pid" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

export CAP_MONGO_URI="${CAP_MONGO_URI:-mongodb://127.0.0.1:$port/certautopilot?replicaSet=secantus}"
export CAP_HTTP_ADDR="${CAP_HTTP_ADDR:-127.0.0.1:8080}"
export CAP_LOG_FORMAT="${CAP_LOG_FORMAT:-text}"
# A key ring of its own, created once and kept with the database.
export CAP_KEK_FILE="${CAP_KEK_FILE:-$dir/kek.json}"
[ -f "$CAP_KEK_FILE" ] || "$bin" kek init --file "$CAP_KEK_FILE"

echo "run-local: waiting for the database on 127.0.0.1:$port" >&2
for _ in $(seq 1 100); do
  if "$bin" migrate >/dev/null 2>&1; then break; fi
  kill -0 "$db_pid" 2>/dev/null || { cat "$dir/db.log" >&2; exit 1; }
  sleep 0.2
done
"$bin" migrate

"$bin" all &
app_pid=$!
# Healthy once the scheduler has elected itself leader.
for _ in $(seq 1 50); do
  "$bin" health >/dev/null 2>&1 && break
  sleep 0.2
done
"$bin" health || true
echo "run-local: certautopilot is up on http://$CAP_HTTP_ADDR (/healthz, /readyz, /metrics); Ctrl-C stops it" >&2
wait "$app_pid"
