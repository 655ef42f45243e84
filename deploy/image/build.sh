#!/usr/bin/env bash
# `make image`: build the Dockerfile here, with no container registry: a minimal Debian base made by
# debootstrap from Debian's own packages, imported with buildah, then the Dockerfile built on it through
# its BASE_IMAGE argument. Needs root (or a user namespace buildah can use), debootstrap and buildah.
#
#   deploy/image/build.sh [TAG]        default TAG: localhost/mcp-auth-sidecar:dev
#
# The base's root filesystem is cached in build/image/ (delete it to rebuild the base).
set -euo pipefail
cd "$(dirname "$0")/../.."

TAG="${1:-localhost/mcp-auth-sidecar:dev}"
BASE_TAG="localhost/mcp-auth-sidecar-base:${DEBIAN_SUITE:-bookworm}-venv"
SUITE="${DEBIAN_SUITE:-bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
CACHE="build/image"
export STORAGE_DRIVER="${STORAGE_DRIVER:-vfs}"   # works as root without overlay support
export BUILDAH_ISOLATION="${BUILDAH_ISOLATION:-chroot}"

for tool in debootstrap buildah; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "$tool not found: installing it with apt"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap buildah >/dev/null
    break
  }
done

mkdir -p "$CACHE"
if [ ! -s "$CACHE/rootfs.tar" ]; then
  echo "debootstrap: a minimal Debian $SUITE with python3 and venv"
  rm -rf "$CACHE/rootfs"
  debootstrap --variant=minbase \
    --include=python3,python3-venv,python-is-python3,ca-certificates \
    "$SUITE" "$CACHE/rootfs" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
    || { tail -20 "$CACHE/debootstrap.log"; exit 1; }
  rm -rf "$CACHE"/rootfs/var/cache/apt/archives/*.deb "$CACHE"/rootfs/var/lib/apt/lists/*
  tar -C "$CACHE/rootfs" -cf "$CACHE/rootfs.tar.partial" .
  mv "$CACHE/rootfs.tar.partial" "$CACHE/rootfs.tar"
  rm -rf "$CACHE/rootfs"
fi

if ! buildah inspect --type image "$BASE_TAG" >/dev/null 2>&1; then
  echo "buildah: importing the base as $BASE_TAG"
  ctr=$(buildah from scratch)
  buildah add "$ctr" "$CACHE/rootfs.tar" / >/dev/null
  buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 --cmd python3 "$ctr"
  buildah commit -q "$ctr" "$BASE_TAG" >/dev/null
  buildah rm "$ctr" >/dev/null
fi

echo "buildah: building the Dockerfile on $BASE_TAG as $TAG"
# The machine's CA bundle is mounted into the build steps that reach the package registries. Every package has
# a wheel for this machine, so no compilers (BUILD_PACKAGES empty).
buildah bud --layers=false --format docker \
  --build-arg BASE_IMAGE="$BASE_TAG" --build-arg BUILD_PACKAGES= \
  -v /etc/ssl/certs:/etc/ssl/certs:ro \
  -t "$TAG" . >"$CACHE/build.log" 2>&1 || { tail -30 "$CACHE/build.log"; exit 1; }
buildah images --format '{{.Name}}:{{.Tag}} {{.Size}}' "$TAG"
