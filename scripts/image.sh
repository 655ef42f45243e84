#!/usr/bin/env bash
# `make image`: build the Dockerfile with buildah on a minimal Debian made here with debootstrap (no registry pull),
# then run the image the way Kubernetes runs it: as uid 10001 on a read-only root filesystem with a tmpfs /tmp.
# Checks: check-config, keygen, serve in front of a backend and one request through it, a clean SIGTERM stop.
# Needs root, debootstrap and buildah (apt-get install debootstrap buildah). Prints the image size last.
set -euo pipefail
cd "$(dirname "$0")/.."

WORK=${IMAGE_WORK:-/var/tmp/mcp-auth-sidecar-image}
SUITE=${DEBIAN_SUITE:-bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
BASE=localhost/mcp-auth-sidecar-base:$SUITE
TAG=${IMAGE_TAG:-localhost/mcp-auth-sidecar:dev}
BUILDAH=(buildah --storage-driver vfs)
STEP_TIMEOUT=${IMAGE_STEP_TIMEOUT:-30}  # seconds a started sidecar gets to answer

say() { printf '\n== %s\n' "$*"; }
mkdir -p "$WORK"

# 1. The base: debootstrap'ed once, imported once.
if ! "${BUILDAH[@]}" inspect --type image "$BASE" >/dev/null 2>&1; then
  if [ ! -x "$WORK/rootfs/usr/bin/python3" ]; then
    say "debootstrap $SUITE (minbase + python3, python3-venv)"
    rm -rf "$WORK/rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
      "$SUITE" "$WORK/rootfs" "$MIRROR"
  fi
  rm -rf "$WORK/rootfs/var/cache/apt/archives/"*.deb "$WORK/rootfs/var/lib/apt/lists/"*
  say "import the root filesystem as $BASE"
  ctr=$("${BUILDAH[@]}" from scratch)
  "${BUILDAH[@]}" copy "$ctr" "$WORK/rootfs" / >/dev/null
  "${BUILDAH[@]}" config --cmd /bin/bash --env LANG=C.UTF-8 "$ctr"
  "${BUILDAH[@]}" commit --quiet --rm "$ctr" "$BASE" >/dev/null
fi

# 2. The Dockerfile on that base. The host's CA bundle is mounted read-only into the RUN steps that reach PyPI.
say "build $TAG from the Dockerfile (BASE_IMAGE=$BASE)"
"${BUILDAH[@]}" build --isolation chroot --layers=false --format docker \
  --build-arg BASE_IMAGE="$BASE" --build-arg BUILD_PACKAGES= \
  -v /etc/ssl/certs:/etc/ssl/certs:ro \
  -t "$TAG" .
"${BUILDAH[@]}" rmi --prune >/dev/null 2>&1 || true  # the previous build, now untagged (vfs keeps full copies)

# 3. Run it: the image's root filesystem, mounted read-only, entered as uid 10001 (chroot + unshare).
ctr=$("${BUILDAH[@]}" from "$TAG")
root=$("${BUILDAH[@]}" mount "$ctr")
backend_pid=""
cleanup() {
  [ -n "$backend_pid" ] && kill "$backend_pid" 2>/dev/null || true
  "${BUILDAH[@]}" umount "$ctr" >/dev/null 2>&1 || true
  "${BUILDAH[@]}" rm "$ctr" >/dev/null 2>&1 || true
}
trap cleanup EXIT

# Runs "$@" inside the image: read-only /, tmpfs /tmp, the host's /dev and /proc, uid/gid 10001, the image's env.
in_image() {
  unshare --mount --fork -- /bin/sh -euc '
    root=$1; shift
    mount --bind "$root" "$root"
    mount -o remount,bind,ro "$root"
    mount -t tmpfs -o size=64m tmpfs "$root/tmp"
    mount --rbind /dev "$root/dev"
    mount -t proc proc "$root/proc"
    exec chroot --userspec=10001:10001 "$root" /usr/bin/env -i \
      PATH=/opt/venv/bin:/usr/bin:/bin PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/nonexistent "$@"
  ' sh "$root" "$@"
}

say "run: as uid 10001 on a read-only root filesystem"
[ "$(in_image /usr/bin/id -u)" = 10001 ]
if in_image /bin/sh -c 'echo x > /written' 2>/dev/null; then echo "the root filesystem is writable" >&2; exit 1; fi
in_image /bin/sh -c 'echo x > /tmp/written'  # /tmp is the one writable place

say "run: keygen"
key=$(in_image mcp-auth-sidecar keygen)
echo "$key" | grep -Eq '^k[0-9a-f]{6}:[A-Za-z0-9_-]{43}$'

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
bport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
settings=(MCP_SIDECAR_UPSTREAM=http://127.0.0.1:$bport MCP_SIDECAR_PUBLIC_URL=http://127.0.0.1:$port
          MCP_SIDECAR_LISTEN=127.0.0.1:$port MCP_SIDECAR_METRICS_LISTEN=127.0.0.1:$mport
          MCP_SIDECAR_SHUTDOWN_DELAY_SECONDS=0)

say "run: check-config"
in_image "${settings[@]}" mcp-auth-sidecar check-config

say "run: serve in front of a backend, one request through it"
python3 -m http.server "$bport" --bind 127.0.0.1 >/dev/null 2>&1 &
backend_pid=$!
in_image "${settings[@]}" mcp-auth-sidecar serve &
sidecar_pid=$!
for _ in $(seq "$((STEP_TIMEOUT * 10))"); do
  curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Authorization: Bearer opaque-test-token' "http://127.0.0.1:$port/")
[ "$code" = 200 ] || { echo "request through the sidecar answered $code" >&2; exit 1; }
code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/")
[ "$code" = 401 ] || { echo "request without a token answered $code" >&2; exit 1; }
# The job is a subshell -> unshare -> the sidecar (sh, chroot and env exec'd into it): the leaf of that chain.
child=$sidecar_pid
while next=$(pgrep -P "$child" | head -1) && [ -n "$next" ]; do child=$next; done
owner=$(ps -o uid= -p "$child" | tr -d ' ')
[ "$owner" = 10001 ] || { echo "the sidecar runs as uid $owner" >&2; exit 1; }
kill -TERM "$child"
wait "$sidecar_pid"  # exits with the sidecar's status: 0 after a graceful stop (set -e fails otherwise)
echo "served 200 through the sidecar, 401 without a token, as uid $owner; SIGTERM: clean exit"

say "image size"
"${BUILDAH[@]}" images --format '{{.Name}}:{{.Tag}} {{.Size}}' "$TAG"
