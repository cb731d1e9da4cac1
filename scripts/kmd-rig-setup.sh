#!/bin/bash
# kmd-rig-setup.sh - make the kernel-md rig (../shared/kernel-md-rig) ready to run, once.
# Idempotent and cheap when done: it runs the rig's setup.sh only when the kernel, mdadm or a
# host tool is missing from the cache (KMD_CACHE, default /var/cache/kmd-rig), and
# build-initramfs.sh only when the initramfs is missing or older than the rig's init.
# Concurrent callers (several test binaries) are serialised with a lock file.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
RIG=${KMD_RIG:-$HERE/../../shared/kernel-md-rig}
RIG=$(cd "$RIG" && pwd)
CACHE=${KMD_CACHE:-/var/cache/kmd-rig}
mkdir -p "$CACHE"
exec 9>"$CACHE.setup.lock"
flock 9

tools_present() {
  local t
  for t in qemu-system-x86_64 cpio zstd xz mkfs.ext4 debugfs depmod python3 gzip xxd dpkg-deb; do
    command -v "$t" >/dev/null 2>&1 || return 1
  done
  [ -x /bin/busybox ] && { file -L /bin/busybox 2>/dev/null | grep -q 'statically linked' ||
                            ldd /bin/busybox 2>&1 | grep -q 'not a dynamic'; }
}

cache_complete() {
  [ -s "$CACHE/VERSIONS" ] || return 1
  # shellcheck disable=SC1091
  . "$CACHE/VERSIONS"
  [ -f "$CACHE/kernel/boot/vmlinuz-$KVER" ] &&
    [ -s "$CACHE/kernel/lib/modules/$KVER/modules.dep" ] &&
    [ -x "$CACHE/mdadm/sbin/mdadm" ]
}

if tools_present && cache_complete; then
  echo "kmd-rig-setup: cache complete in $CACHE ($(tr '\n' ' ' < "$CACHE/VERSIONS"))"
else
  echo "kmd-rig-setup: running $RIG/setup.sh"
  if tools_present; then KMD_SKIP_APT_INSTALL=1 "$RIG/setup.sh"; else "$RIG/setup.sh"; fi
fi

INITRD=$CACHE/initramfs.cpio.gz
if [ ! -s "$INITRD" ] || [ "$RIG/lib/init" -nt "$INITRD" ] || [ "$RIG/build-initramfs.sh" -nt "$INITRD" ] ||
   [ "$CACHE/VERSIONS" -nt "$INITRD" ]; then
  echo "kmd-rig-setup: building the initramfs"
  "$RIG/build-initramfs.sh"
else
  echo "kmd-rig-setup: initramfs up to date ($INITRD)"
fi
