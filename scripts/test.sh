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
# A test that cannot run here (no root, a missing tool or fixture) fails
# instead of skipping (tests/common/loopdev.rs: skipped).
export MDFUSE_REQUIRE_ALL=1

# The suite runs twice over what FUSE carries: everything on /dev/fuse, then
# the FUSE-facing test files again on FUSE over io_uring. The kernel's switch
# for the rings is global (root's, never mdfuse's): it is N for the first
# run (so `auto` means /dev/fuse there too), Y for the second, and put back
# as it was when the script ends, whether it passed, failed or was
# interrupted. tests/uring.rs sets it itself (for each of its tests).
URING_PARAM=/sys/module/fuse/parameters/enable_uring
if [ -e "$URING_PARAM" ]; then
  uring_was=$(cat "$URING_PARAM")
  restore_uring() {
    echo "$uring_was" > "$URING_PARAM" || echo "cannot restore $URING_PARAM to $uring_was" >&2
  }
  trap restore_uring EXIT
  trap 'exit 130' INT TERM
  echo N > "$URING_PARAM"
fi

echo "== cargo test (transport: /dev/fuse)"
MDFUSE_TEST_TRANSPORT=dev-fuse \
  cargo test --workspace --release --features mdfuse/failpoints 2>&1 | tee /tmp/mdfuse-test.log

if [ ! -e "$URING_PARAM" ]; then
  # As for any kernel feature this kernel lacks (see README), not a failure.
  echo "SKIPPED: the run on FUSE over io_uring ($URING_PARAM is missing: it needs Linux 6.14+" \
       "built with CONFIG_FUSE_IO_URING=y)"
  exit 0
fi

# The FUSE-facing files: those whose tests serve array.img, mdstat and md/
# through a mount and check what comes back (data, control files, failures,
# crashes, syncs, the mount helper). The harness (tests/common/mdfuse.rs)
# passes MDFUSE_TEST_TRANSPORT to `mdfuse mount` and to mount(8) as
# `transport=`; what mounts another way gets `auto`, which takes the rings
# with the switch on. Left out, with why:
# - no FUSE at all: engine, blockmap, bitmap_protocol, format_mdadm, the unit
#   tests, mount-helper's;
# - refusals before anything is served (argument and path checks): cli_errors,
#   hostile_args;
# - uring and uring_io: they pick their transport and set the switch per test;
# - interop (about 4 minutes, nearly all of it Linux md booting under qemu):
#   what it serves through FUSE is the same data path core, bitmap_e2e and
#   internal_bitmap run.
# Together about 5 minutes on two cores (failures and powercut are most of it).
uring_files=(core control bitmap_e2e internal_bitmap failures md_error_handling
             metadata_versions powercut hostile_paths hostile_superblocks nbd
             mount_helper operator write_mostly grow_bitmap)
echo "== cargo test (transport: FUSE over io_uring): ${uring_files[*]}"
echo Y > "$URING_PARAM"
MDFUSE_TEST_TRANSPORT=uring \
  cargo test --release --features mdfuse/failpoints "${uring_files[@]/#/--test=}" 2>&1 |
  tee /tmp/mdfuse-test-uring.log
