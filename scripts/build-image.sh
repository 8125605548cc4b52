#!/usr/bin/env bash
# Builds the container image (deploy/Dockerfile) with docker, podman or
# buildah, whichever works here. Not part of CI (README, "Container image").
#
#   scripts/build-image.sh              # multi-stage build: pulls rust and distroless
#   scripts/build-image.sh --prebuilt   # no base image: `cargo build --release` here,
#                                       # then deploy/Dockerfile.prebuilt FROM scratch
#   scripts/build-image.sh --smoke      # after either: run the image against a
#                                       # throw-away secantusd-rs (--version, migrate,
#                                       # a scheduler, health)
#
# Knobs: CAP_IMAGE (default certautopilot:<Cargo.toml version>),
# CAP_IMAGE_BUILDER (docker | podman | buildah; default the first that works),
# CAP_IMAGE_RUN_ARGS (extra `run` flags for --smoke, e.g. the ones a sandbox
# needs: --runtime runc --ulimit nofile=20000:20000 --ulimit nproc=1000:1000),
# CARGO_TARGET_DIR (for --prebuilt). Arguments after `--` go to the builder.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=build
case "${1:-}" in
  --prebuilt) mode=prebuilt; shift ;;
  --smoke) mode=smoke; shift ;;
  --) ;;
  "") ;;
  *) echo "usage: $0 [--prebuilt | --smoke] [-- builder args]" >&2; exit 2 ;;
esac
[ "${1:-}" = "--" ] && shift

version="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)"
image="${CAP_IMAGE:-certautopilot:$version}"
revision="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
created="$(date -u +%Y-%m-%dT%H:%M:%SZ)"

pick_tool() {
  if [ -n "${CAP_IMAGE_BUILDER:-}" ]; then echo "$CAP_IMAGE_BUILDER"; return; fi
  # A docker client without a daemon is common: it counts only when the daemon answers.
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then echo docker; return; fi
  for t in podman buildah; do
    if command -v "$t" >/dev/null; then echo "$t"; return; fi
  done
  echo "build-image: none of docker (with a daemon), podman, buildah is here" >&2
  exit 1
}
tool="$(pick_tool)"

build() { # build FILE CONTEXT [builder args]
  local file="$1" context="$2"; shift 2
  local sub=build
  echo "build-image: $tool $("$tool" --version | head -1) building $image from $file" >&2
  "$tool" "$sub" -f "$file" -t "$image" \
    --build-arg VERSION="$version" --build-arg REVISION="$revision" --build-arg CREATED="$created" \
    "$@" "$context"
}

# The root filesystem of the prebuilt image: the binary and OpenSSH's ssh
# and sftp, what the dynamic linker loads for them, the CA bundle, a
# passwd/group naming 65532, /tmp.
stage_rootfs() {
  local target="${CARGO_TARGET_DIR:-target}"
  cargo build --release --locked --bin certautopilot
  local bin="$target/release/certautopilot" root=.image/rootfs
  rm -rf .image && mkdir -p "$root/usr/local/bin" "$root/etc/ssl/certs" "$root/tmp"
  install -m 0755 "$bin" "$root/usr/local/bin/certautopilot"
  # The ssh target's uploads run OpenSSH's own client (docs/distribution.md).
  local sftp ssh
  sftp="$(command -v sftp)" ssh="$(command -v ssh)" ||
    { echo "build-image: the image carries OpenSSH's client: install openssh-client" >&2; exit 1; }
  mkdir -p "$root/usr/bin"
  install -m 0755 "$ssh" "$root/usr/bin/ssh"
  install -m 0755 "$sftp" "$root/usr/bin/sftp"
  # Every absolute path ldd prints (the libraries and the loader), dereferenced.
  for lib in $(ldd "$bin" "$ssh" "$sftp" | grep -o '/[^ :]*' | grep -v -e "^$ssh\$" -e "^$sftp\$" | sort -u); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' \
    >"$root/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
  chmod 1777 "$root/tmp"
  echo "build-image: staged $(du -sh "$root" | cut -f1) in $root:" >&2
  (cd "$root" && find . -type f | sort) >&2
}

# Runs the image the way the chart does (uid 65532, read-only root, a tmpfs
# on /tmp) against a secantusd-rs of its own on loopback.
smoke() {
  # CAP_IMAGE_RUN_ARGS is a list of flags: split on whitespace, on purpose.
  local extra=()
  read -ra extra <<<"${CAP_IMAGE_RUN_ARGS:-}"
  local run=("$tool" run --rm --read-only --tmpfs "/tmp:rw,size=64m" --network host "${extra[@]}")
  # Globals: the EXIT trap runs after this function has returned.
  dir="$(mktemp -d)" db_pid="" sched=""
  cleanup() {
    if [ -n "$sched" ]; then "$tool" rm -f "$sched" >/dev/null 2>&1 || true; fi
    if [ -n "$db_pid" ]; then kill "$db_pid" 2>/dev/null || true; fi
    rm -rf "$dir"
  }
  trap cleanup EXIT

  echo "smoke: $image --version" >&2
  "${run[@]}" "$image" --version

  secantusd-rs --port 0 --host 127.0.0.1 --storage-path "$dir/data" --cache-size 256M \
    --log-level WARNING >"$dir/db.out" 2>"$dir/db.log" &
  db_pid=$!
  local addr=""
  for _ in $(seq 1 200); do
    addr="$(sed -n 's/^secantusd-rs listening on //p' "$dir/db.out" | head -1)"
    [ -n "$addr" ] && break
    sleep 0.1
  done
  [ -n "$addr" ] || { echo "smoke: secantusd-rs did not start" >&2; exit 1; }
  local uri="mongodb://$addr/certautopilot?replicaSet=secantus"

  # The key ring, made by the image itself into a directory 65532 owns, then
  # mounted read-only as the chart mounts its Secret.
  mkdir -p "$dir/kek" && chown 65532:65532 "$dir/kek"
  "$tool" run --rm --read-only --tmpfs /tmp "${extra[@]}" \
    -v "$dir/kek:/kek" "$image" kek init --file /kek/kek.json
  local owner; owner="$(stat -c %u:%g "$dir/kek/kek.json")"
  [ "$owner" = 65532:65532 ] || { echo "smoke: the key ring is owned by $owner, not 65532:65532" >&2; exit 1; }
  echo "smoke: the process runs as $owner; the root filesystem refuses a write, /tmp takes it" >&2
  if "${run[@]}" "$image" kek init --file /etc/kek.json 2>/dev/null; then
    echo "smoke: wrote /etc/kek.json: the root filesystem is writable" >&2; exit 1
  fi
  "${run[@]}" "$image" kek init --file /tmp/kek.json >/dev/null
  local env=(-e CAP_MONGO_URI="$uri" -e CAP_KEK_FILE=/etc/certautopilot/kek/kek.json
    -v "$dir/kek/kek.json:/etc/certautopilot/kek/kek.json:ro")

  echo "smoke: migrate" >&2
  "${run[@]}" "${env[@]}" "$image" migrate
  echo "smoke: health before any scheduler (expect unhealthy, exit 1)" >&2
  local rc=0
  "${run[@]}" "${env[@]}" "$image" health || rc=$?
  [ "$rc" = 1 ] || { echo "smoke: health exited $rc, expected 1" >&2; exit 1; }

  echo "smoke: a scheduler in the image, then health (expect healthy, exit 0)" >&2
  # A free loopback port for its /healthz (the host's network: --network host).
  local port; port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  sched="$("${run[@]/--rm/-d}" "${env[@]}" -e CAP_HTTP_ADDR="127.0.0.1:$port" "$image" scheduler)"
  rc=1
  for _ in $(seq 1 30); do
    if "${run[@]}" "${env[@]}" "$image" health --json >"$dir/health.json" 2>/dev/null; then rc=0; break; fi
    sleep 1
  done
  cat "$dir/health.json"
  [ "$rc" = 0 ] || { echo "smoke: health never became healthy" >&2; "$tool" logs "$sched" >&2; exit 1; }
  echo "smoke: stopping the scheduler (SIGTERM)" >&2
  "$tool" stop -t 30 "$sched" >/dev/null
  echo "smoke: scheduler exit code $("$tool" inspect -f '{{.State.ExitCode}}' "$sched")" >&2
  echo "smoke: ok" >&2
}

case "$mode" in
  build) build deploy/Dockerfile . "$@" ;;
  prebuilt) stage_rootfs && build deploy/Dockerfile.prebuilt .image "$@" ;;
  smoke) smoke ;;
esac
