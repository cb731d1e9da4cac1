#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine as root: installs what the
# tests use, checks formatting and lints, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "the suite needs root (FUSE mounts, loop devices, mkfs): run it with sudo" >&2
  exit 1
fi
# The lints need rustfmt and clippy: add them where the toolchain is rustup's.
for comp in rustfmt:fmt clippy:clippy; do
  cargo "${comp##*:}" --version >/dev/null 2>&1 || rustup component add "${comp%%:*}"
done
# The kernel-md rig first: its setup installs Debian's qemu-system-x86, which
# takes away a qemu-utils of another qemu version (qemu-nbd with it); the
# check below then puts back the one that goes with it.
./scripts/kmd-rig-setup.sh
need_pkgs=()
for tool in mdadm:mdadm fio:fio mkfs.ext4:e2fsprogs mkfs.xfs:xfsprogs zstd:zstd \
            losetup:mount sha256sum:coreutils filefrag:e2fsprogs mkfs.erofs:erofs-utils \
            qemu-nbd:qemu-utils nbdkit:nbdkit ip:iproute2; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || need_pkgs+=("${tool##*:}")
done
# tests/operator.rs parses `mdfuse metrics` with Debian's python3 and its
# Prometheus client's text-format parser.
/usr/bin/python3 -c 'import prometheus_client.parser' >/dev/null 2>&1 ||
  need_pkgs+=(python3-prometheus-client)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
  echo "== installing: ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi
# tests/operator.rs builds and installs the Debian package with cargo-deb.
cargo deb --version >/dev/null 2>&1 || cargo install --locked cargo-deb
[ -e /dev/fuse ] || { echo "/dev/fuse is missing: load the fuse module" >&2; exit 1; }

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --features mdfuse/failpoints -- -D warnings
echo "== cargo test"
# A test that cannot run here (no root, a missing tool or fixture) fails
# instead of skipping (tests/common/loopdev.rs: skipped).
export MDFUSE_REQUIRE_ALL=1
cargo test --workspace --release --features mdfuse/failpoints 2>&1 | tee /tmp/mdfuse-test.log
