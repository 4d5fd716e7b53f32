#!/usr/bin/env bash
# Builds driftd's container image with podman on a machine that reaches no
# container registry: the base images are made from Debian's packages
# (debootstrap) and the build stage uses this machine's Rust toolchain and
# cargo registry, offline. Running the image is not tried here.
# Usage: bash scripts/build-image.sh [TAG]   (default tag driftd:latest; run as root)
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-driftd:latest}
suite=bookworm
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

for tool in podman debootstrap; do
    command -v "$tool" >/dev/null || { apt-get update -q && apt-get install -y -q podman debootstrap; }
done
toolchain=$(rustc --print sysroot)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

base() { # NAME INCLUDES: a Debian $suite image from debootstrap, unless it exists
    local name=$1 include=$2
    if podman image exists "$name"; then return; fi
    echo "== $name (debootstrap --variant=minbase $suite${include:+, with $include})"
    debootstrap --variant=minbase ${include:+--include="$include"} "$suite" "$work/$name-root" "$mirror" >/dev/null
    tar -C "$work/$name-root" -c . | podman import - "$name" >/dev/null
    rm -rf "$work/$name-root"
}
base localhost/driftd-runtime-base:$suite ""
base localhost/driftd-build-base:$suite "gcc,libc6-dev"

echo "== build image: $toolchain and ~/.cargo/registry, offline"
mkdir -p "$work/rust/toolchain" "$work/rust/cargo"
cp -a "$toolchain/bin" "$toolchain/lib" "$work/rust/toolchain/"
cp -a "${CARGO_HOME:-$HOME/.cargo}/registry" "$work/rust/cargo/"
cat > "$work/rust/Containerfile" <<'CF'
FROM localhost/driftd-build-base:bookworm
COPY toolchain /usr/local/rust
COPY cargo /usr/local/cargo
ENV PATH=/usr/local/rust/bin:$PATH CARGO_HOME=/usr/local/cargo CARGO_NET_OFFLINE=true
CF
podman build --isolation=chroot -q -t localhost/driftd-rust:local "$work/rust" >/dev/null

echo "== $tag (Containerfile)"
podman build --isolation=chroot -t "$tag" \
    --build-arg BUILD_IMAGE=localhost/driftd-rust:local \
    --build-arg RUNTIME_IMAGE=localhost/driftd-runtime-base:$suite \
    --build-arg CARGO_FLAGS="--locked --offline" \
    -f Containerfile .
podman image inspect "$tag" --format 'image {{.Id}}: user {{.Config.User}}, entrypoint {{.Config.Entrypoint}} {{.Config.Cmd}}'
size=$(podman image inspect "$tag" --format '{{.Size}}')
echo "size: $((size / 1024 / 1024)) MiB"
