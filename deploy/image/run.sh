#!/usr/bin/env bash
# Run a command of a built image the way Kubernetes runs the chart's container, with no container engine:
# as uid/gid 10001 (the image's USER), on a read-only root filesystem, with a tmpfs /tmp, on the host's
# network (so loopback reaches a backend started beside it).
#
#   deploy/image/run.sh TAG mcp-auth-sidecar check-config
#   MCP_SIDECAR_UPSTREAM=http://127.0.0.1:8000 deploy/image/run.sh TAG mcp-auth-sidecar serve
#
# MCP_SIDECAR_* variables of the caller are passed in, nothing else of its environment.
set -euo pipefail
TAG="$1"; shift
export STORAGE_DRIVER="${STORAGE_DRIVER:-vfs}"
ctr=$(buildah from --pull-never "$TAG")
cleanup() { buildah umount "$ctr" >/dev/null 2>&1 || true; buildah rm "$ctr" >/dev/null 2>&1 || true; }
trap cleanup EXIT
mnt=$(buildah mount "$ctr")
envs=(PATH=/opt/venv/bin:/usr/local/bin:/usr/bin:/bin PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/nonexistent)
while IFS='=' read -r name value; do
  [[ "$name" == MCP_SIDECAR_* ]] && envs+=("$name=$value")
done < <(env)
unshare --mount --fork -- bash -c '
  set -e
  image="$1"; shift
  root=$(mktemp -d)
  mount --bind "$image" "$root"
  mount -o remount,bind,ro "$root"
  mount -t proc proc "$root/proc"
  mount --rbind /dev "$root/dev"
  mount -t tmpfs -o size=64m,mode=1777 tmpfs "$root/tmp"
  exec chroot --userspec=10001:10001 "$root" /usr/bin/env -i -C /tmp "$@"
' bash "$mnt" "${envs[@]}" "$@"
